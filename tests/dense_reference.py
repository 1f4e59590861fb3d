"""A straightforward dense port of SpCL's k-reciprocal Jaccard distance, for comparison only.

It follows the published algorithm step by step (dense V, query expansion, inverted
index); tests and the benchmark check the sparse implementation against it.
"""

from __future__ import annotations

import numpy as np


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def dense_jaccard(x: np.ndarray, initial_rank: np.ndarray, k1: int, k2: int) -> np.ndarray:
    n = x.shape[0]
    nn_k1 = [_k_reciprocal(initial_rank, i, k1) for i in range(n)]
    nn_half = [_k_reciprocal(initial_rank, i, int(np.around(k1 / 2))) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        rec = nn_k1[i]
        exp = rec
        for c in rec:
            cand = nn_half[c]
            if len(np.intersect1d(cand, rec)) > 2 / 3 * len(cand):
                exp = np.append(exp, cand)
        exp = np.unique(exp)
        dist = 2 - 2 * (x[i : i + 1] @ x[exp].T)
        w = np.exp(-dist - (-dist).max())
        v[i, exp] = (w / w.sum()).ravel()
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float32)
    inv = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jd = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        tmin = np.zeros(n, dtype=np.float32)
        nz = np.where(v[i] != 0)[0]
        for j in nz:
            tmin[inv[j]] += np.minimum(v[i, j], v[inv[j], j])
        jd[i] = 1 - tmin / (2 - tmin)
    jd[jd < 0] = 0
    return jd
