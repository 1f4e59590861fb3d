"""Compiled kernel of the Eq. 2 closest-pair search (used by :mod:`aas_ray.al.pools`)."""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def closest_small_blocks(x, order, start, cluster_pairs, out):
    """Eq. 2 for small cluster pairs, one pair at a time without forming the |p| x |q| block.

    Ties go to the first v of q, then the first u of p (member order), as in the BLAS path.
    """
    for k in range(cluster_pairs.shape[0]):
        p, q = cluster_pairs[k, 0], cluster_pairs[k, 1]
        best = -np.inf
        for vi in range(start[q], start[q + 1]):
            v = order[vi]
            for ui in range(start[p], start[p + 1]):
                u = order[ui]
                dot = np.float32(0.0)
                for f in range(x.shape[1]):
                    dot += x[u, f] * x[v, f]
                if dot > best:
                    best = dot
                    out[k, 0] = u
                    out[k, 1] = v
