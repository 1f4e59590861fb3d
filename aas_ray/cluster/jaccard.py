"""Sparse k-reciprocal Jaccard similarity (SPEC §1; SpCL / Zhong et al. re-ranking).

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

import numba
import numpy as np
import scipy.sparse as sp

from aas_ray.checks import unit_features
from aas_ray.cluster.knn import knn_search

log = logging.getLogger(__name__)

# Rows are processed in chunks of at most this many (row, support, column-support) triples,
# which bounds the output buffers of one chunk (8 bytes per triple) to ~400 MB.
_MAX_TRIPLES = 50_000_000


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


def _rank_matrix(rank: np.ndarray, width: int, n: int) -> sp.csr_matrix:
    """Boolean CSR with row i = the first ``width`` neighbours of i."""
    cols = rank[:, :width]
    rows = np.repeat(np.arange(n, dtype=np.int64), cols.shape[1])
    data = np.ones(rows.size, dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols.ravel())), shape=(n, n))


def k_reciprocal_sets(rank: np.ndarray, k: int) -> sp.csr_matrix:
    """R(i, k) of SpCL: j in the first k+1 ranks of i and i in the first k+1 ranks of j.

    ``rank`` holds the k1 FAISS neighbours, so as in SpCL ``k + 1`` is capped at its width.
    """
    n = rank.shape[0]
    forward = _rank_matrix(rank, min(k + 1, rank.shape[1]), n)
    recip = forward.multiply(forward.T).tocsr()
    recip.data[:] = 1.0
    recip.eliminate_zeros()
    return recip


def expanded_support(rank: np.ndarray, k1: int) -> sp.csr_matrix:
    """Expansion of R(i, k1) by each candidate's R(c, round(k1/2)) overlapping it by > 2/3."""
    r_full = k_reciprocal_sets(rank, k1)
    r_half = k_reciprocal_sets(rank, int(np.around(k1 / 2)))
    # overlap[i, c] = |R(i,k1) ∩ R(c,k1/2)|, kept only for candidates c in R(i, k1).
    overlap = (r_full @ r_half.T).tocsr()
    overlap = r_full.multiply(overlap).tocsr()
    half_size = np.asarray(r_half.sum(axis=1)).ravel()
    keep = overlap.data > (2.0 / 3.0) * half_size[overlap.indices]
    overlap.data = keep.astype(np.float32)
    overlap.eliminate_zeros()
    support = r_full + overlap @ r_half
    support = support.tocsr()
    support.data[:] = 1.0
    support.sort_indices()
    return support


def _support_dots(x: np.ndarray, support: sp.csr_matrix, knn_idx: np.ndarray, knn_sim: np.ndarray) -> np.ndarray:
    """x_i . x_j for every stored (i, j) of ``support``; neighbours reuse FAISS's scores."""
    n = x.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(support.indptr))
    cols = support.indices.astype(np.int64)
    known = sp.csr_matrix(
        (knn_sim.ravel().astype(np.float32), (np.repeat(np.arange(n), knn_idx.shape[1]), knn_idx.ravel())),
        shape=(n, n),
    )
    known.sum_duplicates()
    known.sort_indices()
    nn = np.int64(n)
    kr = np.repeat(np.arange(n, dtype=np.int64), np.diff(known.indptr))
    keys = kr * nn + known.indices
    want = rows * nn + cols
    pos = np.minimum(np.searchsorted(keys, want), keys.size - 1)
    found = keys[pos] == want
    dots = np.empty(want.size, dtype=np.float32)
    dots[found] = known.data[pos[found]]
    miss = np.flatnonzero(~found)
    step = max(1, 8_000_000 // x.shape[1])
    for s in range(0, miss.size, step):
        m = miss[s : s + step]
        dots[m] = np.einsum("ij,ij->i", x[rows[m]], x[cols[m]])
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


@numba.njit(cache=True, nogil=True)
def _min_sum_rows(indptr, indices, data, cindptr, cindices, cdata, a, b, n, s_floor, cap):
    """Rows a..b-1 of s = Σ_c min(V_ic, V_jc), kept where s >= s_floor, as sim = s / (2 - s).

    One dense accumulator with a visit mark per row (the SMMP pattern sparse matrix
    products use): O(triples) work, no sorting of triples, nothing quadratic in n.
    """
    acc = np.zeros(n, dtype=np.float32)
    mark = np.full(n, -1, dtype=np.int64)
    touched = np.empty(n, dtype=np.int64)
    out_ptr = np.zeros(b - a + 1, dtype=np.int64)
    out_idx = np.empty(cap, dtype=np.int32)
    out_val = np.empty(cap, dtype=np.float32)
    k = 0
    for i in range(a, b):
        nt = 0
        for p in range(indptr[i], indptr[i + 1]):
            c = indices[p]
            vi = data[p]
            for q in range(cindptr[c], cindptr[c + 1]):
                j = cindices[q]
                m = min(vi, cdata[q])
                if mark[j] != i:
                    mark[j] = i
                    acc[j] = 0.0
                    touched[nt] = j
                    nt += 1
                acc[j] += m
        # Keep first, sort after: with a floor most touched pairs are dropped unsorted.
        kept = 0
        for t in range(nt):
            if acc[touched[t]] >= s_floor:
                touched[kept] = touched[t]
                kept += 1
        for j in np.sort(touched[:kept]):
            sj = acc[j]
            out_idx[k] = j
            out_val[k] = min(sj / (2.0 - sj), 1.0)
            k += 1
        out_ptr[i - a + 1] = k
    return out_ptr, out_idx[:k], out_val[:k]


def jaccard_similarity(v: sp.csr_matrix, min_sim: float = 0.0) -> sp.csr_matrix:
    """``sim = 1 - d_J`` from the query-expanded V: rows of V sum to 1, so Σ max = 2 - Σ min
    and d_J = 1 - s / (2 - s) with s = Σ min. Entries with sim < ``min_sim`` are dropped."""
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
    # Chunks of rows bounded by triples; the kernel releases the GIL, so chunks run on
    # all cores through a thread pool.
    chunks, a = [], 0
    per_chunk = max(1, min(_MAX_TRIPLES, int(cum[-1]) // (4 * _threads()) + 1)) if n else 1
    while a < n:
        base = cum[a - 1] if a > 0 else 0
        b = int(np.searchsorted(cum, base + per_chunk, side="right"))
        b = min(max(b, a + 1), n)
        chunks.append((a, b, max(int(min(cum[b - 1] - base, (b - a) * n)), 1)))
        a = b
    csr = (v.indptr.astype(np.int64), v.indices.astype(np.int64), v.data,
           vc.indptr.astype(np.int64), vc.indices.astype(np.int64), vc.data)
    with ThreadPoolExecutor(_threads()) as pool:
        parts = list(pool.map(lambda c: _min_sum_rows(*csr, c[0], c[1], n, s_floor, c[2]), chunks))
    ptrs, idxs, vals, offset = [np.zeros(1, dtype=np.int64)], [], [], 0
    for ptr, idx, val in parts:
        ptrs.append(ptr[1:] + offset)
        offset += int(ptr[-1])
        idxs.append(idx)
        vals.append(val)
    indptr = np.concatenate(ptrs)
    indices = np.concatenate(idxs) if idxs else np.empty(0, np.int32)
    data = np.concatenate(vals) if vals else np.empty(0, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def jaccard_graph(
    features: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    use_gpu: bool | None = None,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
    min_sim: float = 0.0,
) -> JaccardGraph:
    """SPEC §1: the k-reciprocal Jaccard similarity, sparse, equal to SpCL's dense result.

    ``knn`` may pass a precomputed ``(sims, idx)`` with at least ``k1`` columns (self first).
    ``min_sim`` drops pairs below that similarity (treated as sim 0, d_J = 1). With 0
    every overlapping pair is kept, exactly as SpCL; most of those are < 0.01, and a
    small floor cuts memory ~10x without changing DBSCAN (exact while min_sim <= 1 - eps)
    or U_os (exact while min_sim <= s_min).
    """
    x = unit_features(features)
    n = x.shape[0]
    if knn is None:
        knn_sim, knn_idx = knn_search(x, k1, use_gpu=use_gpu)
    else:
        knn_sim, knn_idx = knn
    rank = knn_idx[:, : min(k1, n)]
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
    v.sort_indices()
    s = jaccard_similarity(v, min_sim)
    log.debug("jaccard: n=%d support nnz=%d V nnz=%d sim nnz=%d", n, support.nnz, v.nnz, s.nnz)
    return JaccardGraph(sim=s, knn_idx=knn_idx, knn_sim=knn_sim)
