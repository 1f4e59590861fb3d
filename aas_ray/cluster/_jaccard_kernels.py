"""Compiled kernels of the sparse k-reciprocal Jaccard similarity (used by
:mod:`aas_ray.cluster.jaccard`; each releases the GIL so row chunks run on all cores)."""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def reciprocal_rows(rank, k, a, b, sets, counts):
    """R(i, k) of SpCL for rows a..b-1: j in the first k+1 ranks of i with i in the first
    k+1 ranks of j (``k + 1`` capped at the table's width, as SpCL's k1-column rank)."""
    w = min(k + 1, rank.shape[1])
    for i in range(a, b):
        m = 0
        for s in range(w):
            j = rank[i, s]
            for t in range(w):
                if rank[j, t] == i:
                    sets[i, m] = j
                    m += 1
                    break
        counts[i] = m


@numba.njit(cache=True, nogil=True)
def union_into(members, m, taken, i, indices, k, fill):
    """Add the first m ``members`` not yet taken for row i; returns the next write slot."""
    for t in range(m):
        j = members[t]
        if taken[j] != i:
            taken[j] = i
            if fill:
                indices[k] = j
            k += 1
    return k


@numba.njit(cache=True, nogil=True)
def expansion_rows(full, full_n, half, half_n, a, b, indptr, indices, fill):
    """Rows a..b-1 of the support: R(i, k1) plus every candidate c's R(c, k1/2) that
    overlaps R(i, k1) by more than 2/3 of its size (SpCL's expansion, one set per row).

    With ``fill`` False only the row sizes are written (to ``indptr[i + 1]``); with True the
    members go to ``indices[indptr[i]:]``.
    """
    n = full.shape[0]
    in_full = np.full(n, -1, dtype=np.int64)
    taken = np.full(n, -1, dtype=np.int64)
    for i in range(a, b):
        for s in range(full_n[i]):
            in_full[full[i, s]] = i
        k = union_into(full[i], full_n[i], taken, i, indices, indptr[i] if fill else 0, fill)
        for s in range(full_n[i]):
            c = full[i, s]
            overlap = 0
            for t in range(half_n[c]):
                if in_full[half[c, t]] == i:
                    overlap += 1
            if overlap > (2.0 / 3.0) * half_n[c]:
                k = union_into(half[c], half_n[c], taken, i, indices, k, fill)
        if not fill:
            indptr[i + 1] = k


@numba.njit(cache=True, nogil=True, fastmath=True)
def support_dots_rows(x, indptr, indices, knn_idx, knn_sim, out, a, b):
    """x_i . x_j for the support entries of rows a..b-1: FAISS's score when j is among i's
    neighbours, otherwise computed in place (x_i stays in cache across its row)."""
    d = x.shape[1]
    for i in range(a, b):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            found = False
            for t in range(knn_idx.shape[1]):
                if knn_idx[i, t] == j:
                    out[p] = knn_sim[i, t]
                    found = True
                    break
            if not found:
                acc = np.float32(0.0)
                for f in range(d):
                    acc += x[i, f] * x[j, f]
                out[p] = acc


@numba.njit(cache=True, nogil=True)
def min_sum_rows(indptr, indices, data, cindptr, cindices, cdata, a, b, n, s_floor, cap, upper_only, scan_factor):
    """Rows a..b-1 of s = Σ_c min(V_ic, V_jc), kept where s >= s_floor, as sim = s / (2 - s).

    With ``upper_only`` only j > i is computed: s is symmetric, so each column list of V is
    entered at the first row above i (a binary search), halving the work, and the lower
    triangle is its transpose. One dense accumulator with a visit mark per row (the SMMP
    pattern sparse matrix products use): no sorting of triples, nothing quadratic in n.
    """
    acc = np.zeros(n, dtype=np.float32)
    mark = np.full(n, -1, dtype=np.int64)
    touched = np.empty(n, dtype=np.int32)  # 32-bit: the per-row sort below is the kernel's largest cost
    out_ptr = np.zeros(b - a + 1, dtype=np.int64)
    out_idx = np.empty(cap, dtype=np.int32)
    out_val = np.empty(cap, dtype=np.float32)
    k = 0
    for i in range(a, b):
        nt = 0
        for p in range(indptr[i], indptr[i + 1]):
            c = indices[p]
            vi = data[p]
            lo = cindptr[c] + np.searchsorted(cindices[cindptr[c] : cindptr[c + 1]], i + 1) if upper_only else cindptr[c]
            for q in range(lo, cindptr[c + 1]):
                j = cindices[q]
                # Branch-free (about half the triples touch a new column); the accumulator
                # is all zeros at the start of a row, so a first touch needs no reset.
                touched[nt] = j
                nt += mark[j] != i
                mark[j] = i
                acc[j] += min(vi, cdata[q])
        # Keep first, order after: with a floor most touched pairs are dropped (and their
        # accumulators cleared) before any ordering.
        kept = 0
        for t in range(nt):
            j = touched[t]
            if acc[j] >= s_floor:
                touched[kept] = j
                kept += 1
            else:
                acc[j] = 0.0
        if kept * scan_factor > n:
            # A dense row (no floor, small n): one ordered scan of the marks beats a sort.
            for j in range(i + 1 if upper_only else 0, n):
                if mark[j] == i and acc[j] >= s_floor:  # dropped pairs were cleared to 0 < floor
                    sj = acc[j]
                    out_idx[k] = j
                    out_val[k] = min(sj / (2.0 - sj), 1.0)
                    k += 1
        else:
            for j in np.sort(touched[:kept]):
                sj = acc[j]
                out_idx[k] = j
                out_val[k] = min(sj / (2.0 - sj), 1.0)
                k += 1
        for t in range(kept):
            acc[touched[t]] = 0.0
        out_ptr[i - a + 1] = k
    return out_ptr, out_idx[:k], out_val[:k]


@numba.njit(cache=True, nogil=True)
def interleave_rows(indptr, l_ptr, l_idx, l_val, u_ptr, u_idx, u_val, diag, has_diag, indices, data):
    for i in range(indptr.size - 1):
        k = indptr[i]
        for p in range(l_ptr[i], l_ptr[i + 1]):
            indices[k] = l_idx[p]
            data[k] = l_val[p]
            k += 1
        if has_diag[i]:
            indices[k] = i
            data[k] = diag[i]
            k += 1
        for p in range(u_ptr[i], u_ptr[i + 1]):
            indices[k] = u_idx[p]
            data[k] = u_val[p]
            k += 1
