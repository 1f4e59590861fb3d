"""Zero-shot evaluation of a backbone under the open-set protocol (docs/method.md §11)."""

from __future__ import annotations

import numpy as np
import torch

from aas_ray.eval import retrieval_metrics
from aas_ray.eval.protocol import OpenSetSplit
from aas_ray.experiment.prepare import Experiment, prepare_experiment


def evaluate_split(features: np.ndarray, identities: np.ndarray, split: OpenSetSplit) -> dict[str, float]:
    q, g = split.query, split.gallery
    sim = features[q] @ features[g].T
    return retrieval_metrics(sim, identities[q], identities[g])


def zero_shot(cfg, progress: bool = True) -> tuple[Experiment, dict]:
    """The configured backbone's features, the §11 split, and its retrieval metrics."""
    torch.manual_seed(cfg.seed)
    exp = prepare_experiment(cfg, progress)
    return exp, evaluate_split(exp.features, exp.data.identities, exp.split)
