"""Compiled kernel of NP3's batched split (used by :mod:`aas_ray.al.refine`)."""

import numba
import numpy as np


@numba.njit(cache=True)
def nearest_colour(unit_cent, sub_cent, sub_sq, base, chi):
    """For each unit, the colour c < chi[u] whose centroid sub_cent[base[u] + c] is nearest
    (first on ties); ||u||^2 is the same for all candidates and is left out."""
    out = np.zeros(unit_cent.shape[0], dtype=np.int64)
    for u in range(unit_cent.shape[0]):
        best = np.inf
        for c in range(chi[u]):
            s = base[u] + c
            d = sub_sq[s] - 2.0 * np.dot(unit_cent[u], sub_cent[s])
            if d < best:
                best = d
                out[u] = c
    return out
