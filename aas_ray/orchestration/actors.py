"""One clustering / pair-mining Ray actor per dataset.

It holds the dataset's frozen features and ground truth and caches the two views per
clustering configuration, so every trial of a study that changes only AL parameters
(ϵ, k_max, s_min, budget) reuses one clustering, and the datasets of a multi-dataset
study are clustered side by side in their own actors. FAISS uses the GPU when the
actor was given one.
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
    def __init__(self, name: str, features: np.ndarray | None = None, truth: np.ndarray | None = None):
        from aas_ray.checks import unit_features

        # A study's actor holds its dataset's frozen features; a trainer's holds none.
        self.x = unit_features(features) if features is not None else np.empty((0, 0), np.float32)
        self.truth = np.asarray(truth) if truth is not None else np.empty(0)
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

    def epoch_views(self, x: np.ndarray, cfg: "Config", need_b: bool):
        """The trainer's per-epoch clustering of its memory features (nothing cached: they move)."""
        from aas_ray.experiment.trainer import build_views_local

        return build_views_local(x, cfg, need_b)

    def simulate(self, cfg: "Config", strategies: list[str], cycles: int | None):
        """An embedding-only simulation on this dataset with its cached views (returns the table)."""
        from aas_ray.experiment.simulate import simulate

        return simulate(self.x, self.truth, cfg, strategies, cycles, views=self.views(cfg.cluster))


class ActorClusterer:
    """Drop-in for the trainer's ``clusterer``: the same call, run by a ClusteringActor."""

    def __init__(self, actor):
        self.actor = actor

    def __call__(self, x: np.ndarray, cfg: "Config", need_b: bool):
        return ray.get(self.actor.epoch_views.remote(x, cfg, need_b))


def actor_name(study: str, dataset: str) -> str:
    return f"aas-cluster-{study}-{dataset}"


def create_actor(study: str, dataset: str, features: np.ndarray, truth: np.ndarray, num_gpus: float = 0.0):
    """The study's named actor for ``dataset``; it lives as long as the driver that made it.

    It reserves no CPU: trials call it synchronously, so its work uses the calling trial's CPU.
    """
    return ClusteringActor.options(name=actor_name(study, dataset), get_if_exists=True, num_cpus=0,
                                   num_gpus=num_gpus).remote(dataset, features, truth)
