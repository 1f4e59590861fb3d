"""FINCH (Sarfraz et al., CVPR 2019), view B of docs/method.md §2, from the neighbour graph the
pipeline already has.

Level 0 links every image to its first neighbour and takes the connected components; each
coarser level does the same with the mean feature of each cluster of the previous level,
until a level merges fewer than two clusters more. This is finch-clust's algorithm
(checked partition for partition against it in the tests) with three differences that
matter at scale: level 0 reuses the first neighbours of the kNN search (no search of its
own), the means stay float32, and the first neighbours of the means come from
:func:`aas_ray.cluster.knn.knn_search` (exact, or IVF with a measured recall above a size)
instead of a dense pairwise matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from aas_ray.cluster.knn import EXACT_UP_TO, TARGET_RECALL, knn_search
from aas_ray.grouping import group_sum


def first_neighbour_components(first: np.ndarray) -> tuple[int, np.ndarray]:
    """Clusters linked by first-neighbour edges (i -> first[i], weakly connected)."""
    n = first.size
    graph = sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), first)), shape=(n, n))
    return connected_components(graph, directed=True, connection="weak", return_labels=True)


def finch_levels(x: np.ndarray, first_neighbour: np.ndarray, knn_method: str = "auto",
                 exact_up_to: int = EXACT_UP_TO, target_recall: float = TARGET_RECALL) -> tuple[np.ndarray, list[int]]:
    """All FINCH partitions of unit features ``x`` (finest first) with cosine similarity, given
    each image's first non-self neighbour. Returns (labels (n, levels), clusters per level)."""
    n = x.shape[0]
    if n < 2:
        return np.zeros((n, 1), dtype=np.int64), [n]
    k, labels = first_neighbour_components(np.asarray(first_neighbour, dtype=np.int64))
    parts, counts = [labels.astype(np.int64)], [int(k)]
    while True:
        cur = parts[-1]
        # the cosine of means is scale-free: the plain sums rank the same
        means = group_sum(x, cur, counts[-1]).astype(np.float32)
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        if counts[-1] < 2:
            break
        # a forced approximate method too is for big inputs: a few thousand means are searched exactly
        method = "exact" if counts[-1] <= exact_up_to else knn_method
        nb = knn_search(means, 2, method=method, exact_up_to=exact_up_to, target_recall=target_recall)
        first = np.where(nb.idx[:, 0] == np.arange(counts[-1]), nb.idx[:, 1], nb.idx[:, 0])
        k, merged = first_neighbour_components(first)
        if k == 1 or counts[-1] - k <= 1:  # finch-clust stops here and drops this level
            break
        parts.append(merged[cur].astype(np.int64))
        counts.append(int(k))
    return np.stack(parts, axis=1), counts
