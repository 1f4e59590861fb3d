"""One clustering / pair-mining Ray actor per dataset.

It holds the dataset's frozen features and ground truth and caches the two views per
clustering configuration, so every trial of a study that changes only AL parameters
(ϵ, k_max, s_min, budget) reuses one clustering, and the datasets of a multi-dataset
study are clustered side by side in their own actors. The trials' work runs here: the
actor holds the trials' GPU share (kNN on it), and sees no GPU when they have none.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import ray

if TYPE_CHECKING:
    from aas_ray.config import ClusterConfig, Config

log = logging.getLogger(__name__)


@ray.remote
class ClusteringActor:
    def __init__(self, name: str, features: np.ndarray, truth: np.ndarray, threads: int = 1):
        from aas_ray.checks import unit_features
        from aas_ray.orchestration.resources import use_ray_gpus, use_threads

        use_ray_gpus()
        use_threads(threads)
        self.x = unit_features(features)
        self.truth = np.asarray(truth)
        self.name = name
        self._views: dict[str, tuple] = {}

    def info(self) -> dict:
        return {"name": self.name, "n": int(self.x.shape[0]), "d": int(self.x.shape[1]),
                "cached_views": len(self._views)}

    def views(self, cluster: "ClusterConfig"):
        """The dataset's views for this clustering config, built once."""
        from aas_ray.cluster import build_views

        key = cluster.model_dump_json()
        if key not in self._views:
            self._views[key] = build_views(self.x, **cluster.view_params())
        return self._views[key]

    def simulate(self, cfg: "Config", strategies: list[str], cycles: int | None):
        """An embedding-only simulation on this dataset with its cached views (returns the table)."""
        from aas_ray.experiment.simulate import simulate

        return simulate(self.x, self.truth, cfg, strategies, cycles, views=self.views(cfg.cluster))


def actor_name(study: str, dataset: str) -> str:
    return f"aas-cluster-{study}-{dataset}"


def create_actor(study: str, dataset: str, features: np.ndarray, truth: np.ndarray, num_gpus: float = 0.0,
                 threads: int = 1):
    """The study's named actor for ``dataset``; it lives as long as the driver that made it.

    It reserves no CPU: trials call it synchronously and wait, so its work uses the calling
    trial's CPUs (``threads``, a trial's share). It does reserve the trials' ``num_gpus``:
    the kNN of its clustering runs on that GPU.
    """
    return ClusteringActor.options(name=actor_name(study, dataset), get_if_exists=True, num_cpus=0,
                                   num_gpus=num_gpus).remote(dataset, features, truth, threads)
