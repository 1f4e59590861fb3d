"""Evaluation (docs/method.md §11): the open-set protocol and its metrics."""

from aas_ray.eval.metrics import clustering_metrics, retrieval_metrics
from aas_ray.eval.protocol import OpenSetSplit, identity_aware_split, open_set_split

__all__ = ["OpenSetSplit", "clustering_metrics", "identity_aware_split", "open_set_split", "retrieval_metrics"]
