"""Compiled sweep behind :func:`aas_ray.cluster.views.cluster_counts` (DBSCAN's cluster count
at many radii in one pass)."""

import numba
import numpy as np


@numba.njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


@numba.njit(cache=True)
def sweep_counts(n, core_order, core_dist, edge_u, edge_v, edge_w, eps_values):
    """Components among core points as the radius grows: a point joins when its core distance
    is within the radius, two core points merge when their edge weight is."""
    parent = np.arange(n)
    out = np.zeros(eps_values.size, dtype=np.int64)
    comps = 0
    ci = 0
    ei = 0
    for k in range(eps_values.size):
        eps = eps_values[k]
        while ci < core_order.size and core_dist[core_order[ci]] <= eps:
            comps += 1
            ci += 1
        while ei < edge_w.size and edge_w[ei] <= eps:
            a = _find(parent, edge_u[ei])
            b = _find(parent, edge_v[ei])
            if a != b:
                parent[b] = a
                comps -= 1
            ei += 1
        out[k] = comps
    return out
