"""Regions of uncertainty (docs/method.md §3; paper §3.1 A, Fig. 1A)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from aas_ray.checks import labels_array
from aas_ray.grouping import Groups, dense_ids, singletons_to_clusters


def region_index(labels_a, labels_b) -> np.ndarray:
    """Region id of every image (docs/method.md §3), -1 for images in no region.

    Clusters a (view A) and b (view B) are linked when 0 < IoU(a, b) < 1; a region is a
    connected component of that bipartite graph holding at least one link. Noise (-1)
    in either view is a singleton cluster. Regions are numbered by their smallest image.
    """
    a = labels_array(labels_a, name="labels_a")
    b = labels_array(labels_b, n=a.size, name="labels_b")
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    a, na = dense_ids(singletons_to_clusters(a))
    b, nb = dense_ids(singletons_to_clusters(b))
    size_a = np.bincount(a, minlength=na)
    size_b = np.bincount(b, minlength=nb)
    # Contingency table of co-occurring (a, b) cluster pairs.
    key, n_ab = np.unique(a * nb + b, return_counts=True)
    ca, cb = key // nb, key % nb
    # IoU < 1 unless both clusters are exactly the overlap.
    linked = ~((size_a[ca] == n_ab) & (size_b[cb] == n_ab))
    la, lb = ca[linked], cb[linked] + na
    graph = sp.coo_matrix((np.ones(la.size), (la, lb)), shape=(na + nb, na + nb))
    _, comp = connected_components(graph, directed=False)
    has_link = np.zeros(na + nb, dtype=bool)
    has_link[la] = True
    comp_has_link = np.zeros(comp.max() + 1, dtype=bool)
    np.logical_or.at(comp_has_link, comp[has_link], True)
    img_comp = comp[a]
    in_region = comp_has_link[img_comp]
    out = np.full(a.size, -1, dtype=np.int64)
    if in_region.any():
        # Renumber components by their smallest image index for a stable order.
        idx = np.flatnonzero(in_region)
        comps = img_comp[idx]
        first = np.full(comp.max() + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, comps, idx)
        order = np.argsort(first[np.unique(comps)], kind="stable")
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        _, local = np.unique(comps, return_inverse=True)
        out[idx] = rank[local]
    return out


def find_regions(labels_a, labels_b) -> list[np.ndarray]:
    """Public API (docs/method.md §3): the regions of uncertainty as sorted arrays of image indices."""
    rid = region_index(labels_a, labels_b)
    if rid.size == 0 or rid.max() < 0:
        return []
    inside = np.flatnonzero(rid >= 0)
    return [inside[g] for g in Groups.of(rid[inside])]

