"""Paired comparisons of two strategies (docs/method.md §12): what a verdict may claim.

Two strategies run on the same dataset, split, seed and schedule differ by more than
their own effect: seeds move mAP by points, and so do a machine's floating-point
differences through clustering. A verdict is therefore read from the *paired*
differences (strategy A minus strategy B on each seed), with a 95 % t-interval over the
seeds, and called only when the interval excludes 0. Across datasets the paper's own test
applies: a Wilcoxon signed-rank test on the per-dataset means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from aas_ray.checks import InputError

NOT_SEPARABLE = "not separable"


@dataclass(frozen=True)
class PairedDifference:
    """A − B over matched repeats: the per-repeat differences, their mean and 95 % interval."""

    differences: np.ndarray
    mean: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return int(self.differences.size)

    def verdict(self, a: str = "A", b: str = "B") -> str:
        """``"A > B"`` or ``"A < B"`` when the interval excludes 0, else ``"not separable"``."""
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{NOT_SEPARABLE} (1 repeat)" if self.n == 1 else NOT_SEPARABLE
        if self.low > 0:
            return f"{a} > {b}"
        if self.high < 0:
            return f"{a} < {b}"
        return NOT_SEPARABLE


def paired_difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """Differences ``a[i] - b[i]`` of matched repeats with a t-interval of their mean.

    Pairs where either value is missing (NaN) are left out. With one pair the interval is
    undefined (NaN): a single seed supports no verdict.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired values must match one to one: {a.size} against {b.size}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return PairedDifference(d, float("nan"), float("nan"), float("nan"))
    mean = float(d.mean())
    if d.size < 2:
        return PairedDifference(d, mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return PairedDifference(d, mean, mean - half, mean + half)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of one quantity over repeats (e.g. gap closed), a t-interval."""
    v = np.asarray(values, dtype=np.float64).ravel()
    d = paired_difference(v, np.zeros_like(v), confidence)
    return d.mean, d.low, d.high


def wilcoxon_across(a, b) -> tuple[float, int]:
    """The paper's test across datasets: Wilcoxon signed-rank of per-dataset ``a - b``.

    Returns (two-sided p-value, number of datasets with a non-zero difference). With fewer
    than 6 datasets no outcome reaches p < 0.05, whatever the differences.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"per-dataset values must match one to one: {a.size} against {b.size}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    d = d[d != 0]
    if d.size == 0:
        return float("nan"), 0
    return float(stats.wilcoxon(d).pvalue), int(d.size)
