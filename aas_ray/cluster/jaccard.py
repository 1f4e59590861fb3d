"""Sparse k-reciprocal Jaccard similarity (docs/method.md §1; SpCL / Zhong et al. re-ranking).

SpCL's reference builds dense n x n matrices (V, its query expansion, the distance).
Here every object is a scipy CSR matrix whose rows hold only the k-reciprocal support,
so memory is O(n * k1 * k2) and no Python loop runs over images.

Similarity is stored instead of distance because absent entries then mean the
right thing: ``sim = 1 - d_J = 0`` for pairs whose supports do not overlap.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from aas_ray.checks import InputError, unit_features
from aas_ray.cluster._jaccard_kernels import (
    expansion_rows,
    interleave_rows,
    min_sum_rows,
    reciprocal_rows,
    support_dots_rows,
)
from aas_ray.cluster.knn import knn_search

log = logging.getLogger(__name__)

# SpCL's neighbourhood sizes and the similarity floor of the sparse graph: the defaults of
# jaccard_graph and of build_views (docs/method.md §1).
K1 = 30
K2 = 6
MIN_SIM = 0.01

# Rows are processed in chunks of at most this many (row, support, column-support) triples,
# which bounds the output buffers of one chunk (8 bytes per triple) to ~400 MB.
_MAX_TRIPLES = 50_000_000
# A row keeping more than n / _SCAN_FACTOR pairs is emitted by scanning all n marks in
# order (O(n)) instead of sorting what it keeps (O(t log t)); ~log2 t is the break-even.
_SCAN_FACTOR = 16


@dataclass
class JaccardGraph:
    """Sparse k-reciprocal Jaccard similarity of n images.

    ``sim`` (n x n CSR, float32) stores ``1 - d_J`` for every pair whose supports
    overlap, the diagonal included; ``knn_idx`` / ``knn_sim`` are the FAISS neighbours
    (self first) the graph was built from, reused by FINCH and the pools.
    """

    sim: sp.csr_matrix
    knn_idx: np.ndarray
    knn_sim: np.ndarray

    @property
    def n(self) -> int:
        return self.sim.shape[0]

    def distance(self) -> sp.csr_matrix:
        """``d_J`` on the same sparsity pattern (explicit zeros kept: DBSCAN needs them)."""
        d = self.sim.copy()
        d.data = (1.0 - d.data).astype(np.float32)
        np.clip(d.data, 0.0, 1.0, out=d.data)
        return d

    def pair_sim(self, pairs: np.ndarray) -> np.ndarray:
        """``sim(u, v)`` for an (m, 2) array of pairs; 0 where supports do not overlap."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        return lookup_csr(self.sim, pairs[:, 0], pairs[:, 1])


def lookup_csr(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Vectorised ``m[rows, cols]`` for a CSR matrix with sorted indices (0 when absent)."""
    if not m.has_sorted_indices:
        m.sort_indices()
    n_cols = np.int64(m.shape[1])
    row_of = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    keys = row_of * n_cols + m.indices.astype(np.int64)
    want = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
    pos = np.searchsorted(keys, want)
    pos_c = np.minimum(pos, max(keys.size - 1, 0))
    found = (pos < keys.size) & (keys[pos_c] == want) if keys.size else np.zeros(want.size, bool)
    out = np.zeros(want.size, dtype=np.float32)
    out[found] = m.data[pos_c[found]]
    return out


def expanded_support(rank: np.ndarray, k1: int) -> sp.csr_matrix:
    """SpCL's k-reciprocal support of every image: R(i, k1) expanded by each candidate's
    R(c, round(k1/2)) overlapping it by > 2/3 (a boolean CSR matrix, rows unsorted)."""
    rank = np.ascontiguousarray(rank, dtype=np.int64)
    n, width = rank.shape
    k_half = int(np.around(k1 / 2))
    full = np.empty((n, min(k1 + 1, width)), dtype=np.int64)
    half = np.empty((n, min(k_half + 1, width)), dtype=np.int64)
    full_n, half_n = np.empty(n, np.int64), np.empty(n, np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    bounds = np.linspace(0, n, 4 * _threads() + 1).astype(np.int64)
    spans = list(zip(bounds[:-1], bounds[1:]))

    def run(fn):
        list(pool.map(lambda ab: fn(ab[0], ab[1]), spans))

    with ThreadPoolExecutor(_threads()) as pool:
        run(lambda a, b: reciprocal_rows(rank, k1, a, b, full, full_n))
        run(lambda a, b: reciprocal_rows(rank, k_half, a, b, half, half_n))
        # Two passes (sizes, then members) so the output is allocated exactly once.
        run(lambda a, b: expansion_rows(full, full_n, half, half_n, a, b, indptr, indptr, False))
        np.cumsum(indptr, out=indptr)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        run(lambda a, b: expansion_rows(full, full_n, half, half_n, a, b, indptr, indices, True))
    return sp.csr_matrix((np.ones(indices.size, dtype=np.float32), indices, indptr), shape=(n, n))


def _support_dots(x: np.ndarray, support: sp.csr_matrix, knn_idx: np.ndarray, knn_sim: np.ndarray) -> np.ndarray:
    """x_i . x_j for every stored (i, j) of ``support``; neighbours reuse FAISS's scores."""
    n = x.shape[0]
    dots = np.empty(support.nnz, dtype=np.float32)
    bounds = np.linspace(0, n, 4 * _threads() + 1).astype(np.int64)
    args = (x, support.indptr.astype(np.int64), support.indices, np.ascontiguousarray(knn_idx, dtype=np.int64),
            np.ascontiguousarray(knn_sim, dtype=np.float32), dots)
    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(lambda k: support_dots_rows(*args, bounds[k], bounds[k + 1]), range(bounds.size - 1)))
    return dots


def _row_softmax(logits: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    counts = np.diff(indptr)
    starts = indptr[:-1][counts > 0]
    row_max = np.zeros(counts.size, dtype=np.float32)
    row_max[counts > 0] = np.maximum.reduceat(logits, starts)
    e = np.exp(logits - np.repeat(row_max, counts))
    total = np.zeros(counts.size, dtype=np.float32)
    total[counts > 0] = np.add.reduceat(e, starts)
    return (e / np.repeat(np.where(total > 0, total, 1.0), counts)).astype(np.float32)


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def jaccard_similarity(v: sp.csr_matrix, min_sim: float = 0.0, scan_factor: int = _SCAN_FACTOR) -> sp.csr_matrix:
    """``sim = 1 - d_J`` from the query-expanded V: rows of V sum to 1, so Σ max = 2 - Σ min
    and d_J = 1 - s / (2 - s) with s = Σ min. Entries with sim < ``min_sim`` are dropped.

    ``scan_factor`` only chooses how the kernel orders a row (a row keeping more than
    n / scan_factor pairs is emitted by one scan, the others by a sort); the result is
    the same either way."""
    n = v.shape[0]
    vc = v.tocsc()
    vc.sort_indices()
    col_nnz = np.diff(vc.indptr).astype(np.int64)
    row_cost = np.zeros(n, dtype=np.int64)
    has = np.diff(v.indptr) > 0
    if v.nnz:
        row_cost[has] = np.add.reduceat(col_nnz[v.indices], v.indptr[:-1][has])
    cum = np.cumsum(row_cost)
    # sim >= min_sim  <=>  s >= 2 min_sim / (1 + min_sim); a tiny slack keeps float ties in.
    s_floor = np.float32(2 * min_sim / (1 + min_sim) - 1e-7) if min_sim > 0 else np.float32(-1.0)
    # Chunks of rows bounded by (full-row) triples; the kernel releases the GIL, so chunks
    # run on all cores through a thread pool.
    chunks, a = [], 0
    per_chunk = max(1, min(_MAX_TRIPLES, int(cum[-1]) // (4 * _threads()) + 1)) if n else 1
    while a < n:
        base = cum[a - 1] if a > 0 else 0
        b = int(np.searchsorted(cum, base + per_chunk, side="right"))
        b = min(max(b, a + 1), n)
        chunks.append((a, b, max(int(min(cum[b - 1] - base, (b - a) * n)), 1)))
        a = b
    # 32-bit indices: the kernel streams column lists, so narrower indices mean less memory traffic.
    csr = (v.indptr.astype(np.int64), v.indices.astype(np.int32), v.data,
           vc.indptr.astype(np.int64), vc.indices.astype(np.int32), vc.data)
    # Upper triangle + transpose halves the kernel but costs a pass over the output: a win
    # when a similarity floor drops most touched pairs (the default keeps ~7 %), a loss when
    # every overlapping pair is kept (min_sim = 0: ~3600 per row at n = 20k).
    upper_only = min_sim > 0
    with ThreadPoolExecutor(_threads()) as pool:
        parts = list(pool.map(
            lambda c: min_sum_rows(*csr, c[0], c[1], n, s_floor, c[2], upper_only, scan_factor), chunks))
    ptrs, idxs, vals, offset = [np.zeros(1, dtype=np.int64)], [], [], 0
    for ptr, idx, val in parts:
        ptrs.append(ptr[1:] + offset)
        offset += int(ptr[-1])
        idxs.append(idx)
        vals.append(val)
    indptr = np.concatenate(ptrs)
    indices = np.concatenate(idxs) if idxs else np.empty(0, np.int32)
    data = np.concatenate(vals) if vals else np.empty(0, np.float32)
    if not upper_only:
        sim = sp.csr_matrix((data, indices, indptr), shape=(n, n))
        sim.has_sorted_indices = True
        return sim
    upper = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    # The diagonal: s_ii = Σ_c V_ic (1 up to rounding); rows of V that are empty stay empty.
    s_diag = np.asarray(v.sum(axis=1), dtype=np.float32).ravel()
    diag = np.minimum(s_diag / (2.0 - s_diag), 1.0).astype(np.float32)
    return _symmetric(upper, diag, has & (s_diag >= s_floor))


def _symmetric(upper: sp.csr_matrix, diag: np.ndarray, has_diag: np.ndarray) -> sp.csr_matrix:
    """Full CSR from a strict upper triangle and a diagonal, indices sorted.

    Row i of the result is (column i of ``upper``, ascending) + (i, i) + (row i of
    ``upper``, ascending): already in order, so rows are laid out directly instead of
    adding matrices and re-sorting.
    """
    n = upper.shape[0]
    lower = upper.tocsc()  # column lists, rows ascending: the lower triangle's rows
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.diff(lower.indptr) + np.diff(upper.indptr) + has_diag, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    data = np.empty(indices.size, dtype=np.float32)
    interleave_rows(indptr, lower.indptr.astype(np.int64), lower.indices, lower.data,
                upper.indptr.astype(np.int64), upper.indices, upper.data, diag, has_diag, indices, data)
    sim = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    sim.has_sorted_indices = True
    return sim


def jaccard_graph(
    features: np.ndarray,
    k1: int = K1,
    k2: int = K2,
    use_gpu: bool | None = None,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
    min_sim: float = MIN_SIM,
) -> JaccardGraph:
    """docs/method.md §1: the k-reciprocal Jaccard similarity, sparse, equal to SpCL's dense result.

    ``knn`` may pass a precomputed ``(sims, idx)`` with at least ``k1`` columns (self first).
    ``min_sim`` drops pairs below that similarity (treated as sim 0, d_J = 1). With 0
    every overlapping pair is kept, exactly as SpCL; most of those are < 0.01, and the
    default floor (``MIN_SIM``, also :func:`~aas_ray.cluster.build_views`'s) cuts memory ~10x
    without changing DBSCAN (exact while min_sim <= 1 - eps) or U_os (exact while
    min_sim <= s_min).
    """
    x = unit_features(features)
    n = x.shape[0]
    if knn is None:
        knn_sim, knn_idx = knn_search(x, k1, use_gpu=use_gpu)
    else:
        knn_sim, knn_idx = knn
    rank = knn_idx[:, : min(k1, n)]
    if rank.shape[0] != n or (rank < 0).any() or (rank >= n).any():
        raise InputError(f"kNN table must hold {n} rows of neighbour indices in [0, {n}); FAISS pads with -1 "
                         "when it finds fewer than k neighbours")
    support = expanded_support(rank, k1)
    dots = _support_dots(x, support, knn_idx, knn_sim)
    # softmax(-||x_i - x_j||^2) = softmax(2 x_i.x_j - 2): the constant cancels.
    v = sp.csr_matrix((_row_softmax(2.0 * dots, support.indptr), support.indices, support.indptr), shape=(n, n))
    if k2 != 1:
        kk = min(k2, rank.shape[1])
        q = sp.csr_matrix(
            (np.full(n * kk, 1.0 / kk, dtype=np.float32), (np.repeat(np.arange(n), kk), rank[:, :kk].ravel())),
            shape=(n, n),
        )
        v = (q @ v).tocsr()
    # Row order inside V does not matter to the min-sum kernel; its CSC copy is ordered.
    s = jaccard_similarity(v, min_sim)
    log.debug("jaccard: n=%d support nnz=%d V nnz=%d sim nnz=%d", n, support.nnz, v.nnz, s.nnz)
    return JaccardGraph(sim=s, knn_idx=knn_idx, knn_sim=knn_sim)
