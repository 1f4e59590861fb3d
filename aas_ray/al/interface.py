"""What every pair sampler takes and gives (docs/method.md §6): the dataset as the sampler sees
it, the proposal it makes, and the interface a sampler implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aas_ray.al.constraints import ConstraintStore
from aas_ray.al.sampling import PairDraw
from aas_ray.checks import labels_array, unit_features


@dataclass
class SamplerInput:
    """What a sampler sees of one dataset: features, both clusterings and a similarity.

    ``pair_sim`` maps an (m, 2) array of pairs to sim(u, v) in [0, 1] (docs/method.md §1: the
    Jaccard similarity by default, cosine when configured). Built from the clustering of the
    features with :meth:`of_clustering`.
    """

    features: np.ndarray
    labels_a: np.ndarray
    labels_b: np.ndarray
    pair_sim: object
    # what some baselines need besides: the kNN lists, the Jaccard graph, DBSCAN's radius
    knn_idx: np.ndarray | None = None
    knn_sim: np.ndarray | None = None
    jaccard: object = None
    eps: float | None = None

    def __post_init__(self):
        self.features = unit_features(self.features)
        n = self.features.shape[0]
        self.labels_a = labels_array(self.labels_a, n, "labels_a (view A)")
        self.labels_b = labels_array(self.labels_b, n, "labels_b (view B)")

    @classmethod
    def of_clustering(cls, features: np.ndarray, views, pair_sim) -> SamplerInput:
        """The sampler's input from :class:`aas_ray.cluster.ClusterViews` of ``features``:
        both views, the view graph's kNN lists, the graph itself and the radius of view A."""
        g = views.graph
        return cls(features, views.labels_a, views.labels_b, pair_sim, knn_idx=g.knn_idx, knn_sim=g.knn_sim,
                   jaccard=g, eps=views.eps)

    @property
    def n(self) -> int:
        return self.features.shape[0]


@dataclass
class Proposal:
    """A sampler's answer for one cycle: the pairs to ask and what it saw (region and pool
    sizes, the open pool left after dropping settled pairs). ``drawn`` is what the sampler
    itself needs later to read the answers (:meth:`PairSampler.summarise`)."""

    draw: PairDraw
    stats: dict = field(default_factory=dict)
    drawn: object = None


class PairSampler:
    """The interface of a pair sampler; each registers under its strategy name
    (:func:`aas_ray.al.registry.register_strategy`), which becomes its ``name``."""

    name: str

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int,
                rng: np.random.Generator) -> Proposal:
        """At most ``budget`` pairs, none settled by ``store``, deterministic for ``rng``."""
        raise NotImplementedError

    def summarise(self, proposal: Proposal, store: ConstraintStore) -> dict:
        """What the answers to ``proposal`` tell besides the constraints, as columns of the
        cycle's row; none for most samplers (NIS: the number of individuals)."""
        return {}


def cosine_pair_sim(features: np.ndarray):
    """sim(u, v) = max(0, cos) for ``similarity: cosine`` (docs/method.md §1, [ours])."""

    def sim(pairs: np.ndarray) -> np.ndarray:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return np.clip(np.einsum("ij,ij->i", features[pairs[:, 0]], features[pairs[:, 1]]), 0.0, 1.0)

    return sim
