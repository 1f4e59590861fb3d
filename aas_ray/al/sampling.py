"""The sampling distribution over U = U_os ∪ U_us (docs/method.md §6, Eqs. 4-6) and the budget (docs/method.md §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def cycle_budget(n: int, budget_fraction: float) -> int:
    """docs/method.md §7: B = ceil(budget_fraction * n(n-1)/2) pairs per AL cycle."""
    if not 0.0 <= budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in [0, 1]; got {budget_fraction}")
    return int(math.ceil(budget_fraction * n * (n - 1) / 2))


def total_pairs(n: int) -> int:
    return n * (n - 1) // 2


def _normalise(w: np.ndarray) -> np.ndarray:
    """w / Σw, or uniform when every weight is 0 (docs/method.md §6: ω uniform when all sims are 0)."""
    w = np.asarray(w, dtype=np.float64)
    s = w.sum()
    return w / s if s > 0 else np.full(w.size, 1.0 / max(w.size, 1))


def over_segmentation_probs(sims: np.ndarray) -> np.ndarray:
    """Eq. 4: P(Y | U_os) = sim(Y) / Σ_{U_os} sim."""
    return _normalise(sims)


def under_segmentation_probs(
    region: np.ndarray,
    pair_type: np.ndarray,
    sims: np.ndarray,
    region_rate: np.ndarray,
    pi: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Eq. 5: P(Y | U_us) = π_i · ρ_{k|i} · ω_{y|ik}.

    π: ``pi`` (β1, β2, β3) renormalised over the types present, uniform by default.
    ρ_{k|i} ∝ the disagreement rate of region k among regions holding type-i pairs.
    ω_{y|ik} ∝ sim(y) among the type-i pairs of region k.
    """
    m = region.size
    p = np.zeros(m, dtype=np.float64)
    if m == 0:
        return p
    types = np.unique(pair_type)
    prior = np.ones(3) if pi is None else np.asarray(pi, dtype=np.float64)
    if prior.shape != (3,) or (prior < 0).any():
        raise ValueError(f"pi must be three non-negative weights (β1, β2, β3); got {pi}")
    present = np.zeros(3)
    present[types] = prior[types]
    if present.sum() == 0:
        present[types] = 1.0
    present /= present.sum()
    for t in types:
        sel = np.flatnonzero(pair_type == t)
        regions_t, local = np.unique(region[sel], return_inverse=True)
        rho = _normalise(region_rate[regions_t])
        for j, _ in enumerate(regions_t):
            members = sel[local == j]
            p[members] = present[t] * rho[j] * _normalise(sims[members])
    return p


def mixture(p_os: np.ndarray, p_us: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6: P(Y) = ϵ P(Y|U_os) + (1-ϵ) P(Y|U_us); an empty pool passes its mass on."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1]; got {epsilon}")
    w_os, w_us = epsilon, 1.0 - epsilon
    if p_os.size == 0 or p_os.sum() == 0:
        w_os, w_us = 0.0, 1.0
    if p_us.size == 0 or p_us.sum() == 0:
        w_os, w_us = (1.0, 0.0) if p_os.size else (0.0, 0.0)
    return w_os * p_os, w_us * p_us


def draw_without_replacement(prob: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``min(count, len(prob))`` distinct draws, sequentially ∝ ``prob``.

    Efraimidis-Spirakis keys log(u)/p give the same law as drawing one at a time and
    renormalising. Zero-probability items come only after all positive ones, in random order.
    """
    count = int(min(count, prob.size))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    u = rng.random(prob.size)
    with np.errstate(divide="ignore"):
        key = np.where(prob > 0, np.log(u) / np.where(prob > 0, prob, 1.0), -np.inf)
    tie = rng.random(prob.size)
    order = np.lexsort((-tie, -key))
    return order[:count].astype(np.int64)


@dataclass
class PairDraw:
    """Pairs chosen for the oracle, with where each came from (for audit and plots)."""

    pairs: np.ndarray  # (m, 2), u < v
    pool: np.ndarray  # 'os' | 'us' | 'random'
    pair_type: np.ndarray  # 'inlier-inlier' ... or '' for medoid / random pairs
    probability: np.ndarray  # P(Y) under the distribution they were drawn from

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    @classmethod
    def empty(cls) -> "PairDraw":
        return cls(np.empty((0, 2), np.int64), np.empty(0, "<U6"), np.empty(0, "<U16"), np.empty(0))
