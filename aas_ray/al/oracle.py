"""The simulated oracle (docs/method.md §8): answers from ground-truth identity, optionally noisy."""

from __future__ import annotations

import numpy as np

from aas_ray.al.constraints import Answer
from aas_ray.checks import InputError


class SimulatedOracle:
    """Answers same / different from ``identities``; flips each answer with ``noise_rate``."""

    def __init__(self, identities, noise_rate: float = 0.0, seed: int = 0):
        ids = np.asarray(identities)
        if ids.ndim != 1 or ids.size == 0:
            raise InputError("the simulated oracle needs a non-empty 1-D array of identities")
        if not 0.0 <= noise_rate <= 1.0:
            raise InputError(f"oracle noise_rate must be in [0, 1]; got {noise_rate}")
        _, self.identities = np.unique(ids, return_inverse=True)
        self.noise_rate = float(noise_rate)
        self.rng = np.random.default_rng(seed)

    def answer(self, pairs: np.ndarray) -> np.ndarray:
        """An array of :class:`Answer` values (ML / CL) for an (m, 2) array of pairs."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        same = self.identities[pairs[:, 0]] == self.identities[pairs[:, 1]]
        if self.noise_rate > 0:
            same ^= self.rng.random(same.size) < self.noise_rate
        return np.where(same, int(Answer.MUST_LINK), int(Answer.CANNOT_LINK))
