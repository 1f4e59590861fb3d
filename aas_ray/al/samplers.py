"""Pair samplers behind one interface (docs/method.md §6): ``aas`` (Algorithm 1 step 1) and
``random``; the baselines are in :mod:`aas_ray.al.baselines`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aas_ray.al.constraints import ConstraintStore
from aas_ray.al.interface import PairSampler, Proposal, SamplerInput
from aas_ray.al.refine import np3
from aas_ray.al.pools import (
    PAIR_TYPES,
    disagreement_counts,
    over_segmentation_pool,
    region_medoids,
    under_segmentation_pool,
)
from aas_ray.al.regions import region_index
from aas_ray.al.registry import register_strategy
from aas_ray.al.sampling import (
    PairDraw,
    draw_without_replacement,
    mixture,
    over_segmentation_probs,
    under_segmentation_probs,
)
from aas_ray.checks import InputError, check_param


@register_strategy("aas", rank=8, config_prefix="",
                   description="Ambiguity-Aware Sampling: pairs where the two views disagree")
@dataclass
class AASSampler(PairSampler):
    """Ambiguity-Aware Sampling (paper §3.1, Eqs. 1-6; docs/method.md §2-6): ``epsilon`` the
    Eq. 6 weight of U_os, ``k_max`` and ``s_min`` U_os's neighbours and similarity floor, ``pi``
    the type prior (β1, β2, β3) of U_us, None for uniform."""

    epsilon: float = 0.6
    k_max: int = 5
    s_min: float = 0.3
    pi: tuple[float, float, float] | None = None

    def __post_init__(self):
        check_param("AASSampler", "epsilon", self.epsilon, 0.0, 1.0)
        check_param("AASSampler", "k_max", self.k_max, 1, integer=True)
        check_param("AASSampler", "s_min", self.s_min, 0.0, 1.0)
        if self.pi is not None:
            if not isinstance(self.pi, (tuple, list)) or len(self.pi) != 3:
                raise InputError(f"AASSampler: pi must be three weights (β1, β2, β3) or None; got {self.pi!r}")
            for i, w in enumerate(self.pi):
                check_param("AASSampler", f"pi[{i}]", w, 0.0)

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator) -> Proposal:
        x = views.features
        ml, cl = store.must_links(), store.cannot_links()
        # Step 1a: both views obey every answer so far, so settled questions are not re-asked.
        a = np3(views.labels_a, ml, cl, x)
        b = np3(views.labels_b, ml, cl, x)
        region_id = region_index(a, b)
        n_regions = int(region_id.max()) + 1 if region_id.size and region_id.max() >= 0 else 0
        stats = {"regions": n_regions, "largest_region": 0, "U_os": 0, "U_us": 0, "pool_open": 0}
        if n_regions == 0:
            return Proposal(PairDraw.empty(), stats)
        stats["largest_region"] = int(np.bincount(region_id[region_id >= 0]).max())
        medoids = region_medoids(x, region_id, n_regions)
        os_pairs, os_sim = over_segmentation_pool(x, medoids, self.k_max, self.s_min, views.pair_sim)
        us = under_segmentation_pool(x, a, b, region_id)
        stats["U_os"], stats["U_us"] = int(os_pairs.shape[0]), int(us.pairs.shape[0])
        keep_os = store.open_pairs(os_pairs)
        keep_us = store.open_pairs(us.pairs)
        os_pairs, os_sim = os_pairs[keep_os], os_sim[keep_os]
        us_pairs, us_region, us_type = us.pairs[keep_us], us.region[keep_us], us.pair_type[keep_us]
        us_sim = np.asarray(views.pair_sim(us_pairs), dtype=np.float64)
        rate = disagreement_counts(a, b, region_id, n_regions)
        sizes = np.bincount(region_id[region_id >= 0], minlength=n_regions).astype(np.float64)
        rate = rate / np.maximum(sizes * (sizes - 1) / 2, 1)
        p_os, p_us = mixture(
            over_segmentation_probs(os_sim),
            under_segmentation_probs(us_region, us_type, us_sim, rate, self.pi),
            self.epsilon,
        )
        pairs = np.concatenate([os_pairs, us_pairs]).reshape(-1, 2)
        prob = np.concatenate([p_os, p_us])
        pool = np.array(["os"] * len(os_pairs) + ["us"] * len(us_pairs), dtype="<U6")
        ptype = np.array([""] * len(os_pairs) + [PAIR_TYPES[t] for t in us_type], dtype="<U16")
        stats["pool_open"] = int(pairs.shape[0])
        pick = draw_without_replacement(prob, budget, rng)
        return Proposal(PairDraw(pairs[pick], pool[pick], ptype[pick], prob[pick]), stats)


@register_strategy("random", rank=1, description="uniform over the pairs never asked (the paper's baseline)")
@dataclass
class RandomSampler(PairSampler):
    """Uniform over pairs never asked (the paper's Random baseline), with no pool at all."""

    def propose(self, views: SamplerInput, store: ConstraintStore, budget: int, rng: np.random.Generator) -> Proposal:
        n = views.n
        total = n * (n - 1) // 2
        want = int(min(budget, total - len(store.annotations)))
        chosen = np.empty((0, 2), dtype=np.int64)
        # Rejection sampling: the budget is a tiny fraction of all pairs, so few rounds.
        for _ in range(100):
            if chosen.shape[0] >= want:
                break
            u = rng.integers(0, n, size=2 * (want - chosen.shape[0]) + 16)
            v = rng.integers(0, n, size=u.size)
            cand = np.stack([np.minimum(u, v), np.maximum(u, v)], axis=1)[u != v]
            cand = cand[~store.asked(cand)]
            merged = np.concatenate([chosen, cand])
            _, first = np.unique(merged, axis=0, return_index=True)
            chosen = merged[np.sort(first)][:want]
        p = np.full(chosen.shape[0], 1.0 / max(total - len(store.annotations), 1))
        draw = PairDraw(chosen, np.full(chosen.shape[0], "random", "<U6"), np.full(chosen.shape[0], "", "<U16"), p)
        return Proposal(draw, {"pool_open": total - len(store.annotations)})

