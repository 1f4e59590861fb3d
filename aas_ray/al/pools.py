"""Sampling pools: over-segmentation U_os (docs/method.md §4) and under-segmentation U_us (docs/method.md §5)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aas_ray.al._pool_kernels import closest_small_blocks
from aas_ray.grouping import Groups, dense_ids, group_sum, singletons_to_clusters
from aas_ray.cluster.knn import knn_search

# Pair types under view A (docs/method.md §6): β1, β2, β3.
PAIR_TYPES = ("inlier-inlier", "inlier-outlier", "outlier-outlier")

# Entries of one similarity block (|p| x Σ|q|) computed at once in the closest-pair search.
_BLOCK = 4_000_000
# Cluster pairs with |p| x |q| up to this go through the compiled loop rather than BLAS.
_SMALL_PAIR = 4096

SimFn = Callable[[np.ndarray], np.ndarray]


def unordered(pairs: np.ndarray) -> np.ndarray:
    """Pairs as (min, max), deduplicated and sorted."""
    if pairs.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    p = np.sort(np.asarray(pairs, dtype=np.int64), axis=1)
    return np.unique(p, axis=0)


def region_medoids(x: np.ndarray, region_id: np.ndarray, n_regions: int) -> np.ndarray:
    """docs/method.md §4: per region, the member with the largest summed cosine similarity to the others.

    Σ_j x_i.x_j = x_i . (Σ_j x_j) - 1, so one sum per region and one dot per image suffice.
    """
    idx = np.flatnonzero(region_id >= 0)
    r = region_id[idx]
    sums = group_sum(x[idx], r, n_regions)
    score = np.einsum("ij,ij->i", x[idx], sums[r])
    order = np.lexsort((-score, r))
    first = np.ones(order.size, dtype=bool)
    first[1:] = r[order][1:] != r[order][:-1]
    med = np.empty(n_regions, dtype=np.int64)
    med[r[order][first]] = idx[order][first]
    return med


def over_segmentation_pool(
    x: np.ndarray, medoids: np.ndarray, k_max: int, s_min: float, sim: SimFn
) -> tuple[np.ndarray, np.ndarray]:
    """docs/method.md §4: each medoid with its ``k_max`` nearest other medoids (cosine), kept when sim >= s_min."""
    m = medoids.size
    if m < 2 or k_max < 1:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    _, nn = knn_search(x[medoids], min(k_max + 1, m), method="exact")
    src = np.repeat(np.arange(m), nn.shape[1])
    dst = nn.ravel()
    keep = (dst >= 0) & (dst != src)
    pairs = np.stack([medoids[src[keep]], medoids[dst[keep]]], axis=1)
    # Keep the k_max closest *other* medoids even if a duplicate displaced self from rank 0.
    per_src = np.cumsum(np.ones(keep.sum(), dtype=np.int64)) - 1
    starts = np.searchsorted(src[keep], np.arange(m))
    within = per_src - starts[src[keep]]
    pairs = unordered(pairs[within < k_max])
    s = sim(pairs)
    keep = s >= s_min
    return pairs[keep], s[keep]


def closest_cross_pairs(x: np.ndarray, labels: np.ndarray, n_clusters: int, cluster_pairs: np.ndarray,
                        compiled_up_to: int = _SMALL_PAIR) -> np.ndarray:
    """Eq. 2: for each (p, q) of ``cluster_pairs``, the closest (u in p, v in q) in feature space.

    Pairs with |p| x |q| <= ``compiled_up_to`` (most of them) go through a compiled loop;
    larger ones through BLAS, |p| x Σ|q| similarities at a time. Both give the same pair
    (ties: first v of q, then first u of p); the threshold only moves work between them.
    """
    groups = Groups.of(labels, n_clusters)
    out = np.empty((cluster_pairs.shape[0], 2), dtype=np.int64)
    small = groups.size(cluster_pairs[:, 0]) * groups.size(cluster_pairs[:, 1]) <= compiled_up_to
    if small.any():
        part = np.empty((int(small.sum()), 2), dtype=np.int64)
        closest_small_blocks(x, groups.order, groups.start, np.ascontiguousarray(cluster_pairs[small]), part)
        out[small] = part
    if not small.all():
        out[~small] = _closest_blas(x, groups, cluster_pairs[~small])
    return out


def _closest_blas(x: np.ndarray, groups: Groups, cluster_pairs: np.ndarray) -> np.ndarray:
    """Eq. 2 for large cluster pairs: all pairs sharing p in |p| x Σ|q| BLAS blocks."""
    out = np.empty((cluster_pairs.shape[0], 2), dtype=np.int64)
    order = np.lexsort((cluster_pairs[:, 1], cluster_pairs[:, 0]))
    cp = cluster_pairs[order]
    bounds = np.flatnonzero(np.r_[True, cp[1:, 0] != cp[:-1, 0], True])
    for s, e in zip(bounds[:-1], bounds[1:]):
        p = cp[s, 0]
        mp = groups.members(p)
        xp = x[mp]
        qs = cp[s:e, 1]
        sizes = groups.size(qs)
        # Batch partners so that one block holds at most _BLOCK similarities.
        per_block = max(1, _BLOCK // max(mp.size, 1))
        b0 = 0
        while b0 < qs.size:
            csum = np.cumsum(sizes[b0:])
            b1 = b0 + max(1, int(np.searchsorted(csum, per_block, side="right")))
            cols = np.concatenate([groups.members(q) for q in qs[b0:b1]])
            g = xp @ x[cols].T
            best_row = g.argmax(axis=0)
            best_val = g[best_row, np.arange(cols.size)]
            seg = np.repeat(np.arange(b1 - b0), sizes[b0:b1])
            seg_start = np.r_[0, np.cumsum(sizes[b0:b1])[:-1]]
            seg_max = np.maximum.reduceat(best_val, seg_start)
            hit = np.flatnonzero(best_val == seg_max[seg])
            _, first = np.unique(seg[hit], return_index=True)
            col = hit[first]
            out[order[s + b0 : s + b1], 0] = mp[best_row[col]]
            out[order[s + b0 : s + b1], 1] = cols[col]
            b0 = b1
    return out


def cooccurring_cluster_pairs(own: np.ndarray, other: np.ndarray, other_is_noise: np.ndarray) -> np.ndarray:
    """Pairs (p < q) of ``own`` clusters that share at least one non-noise ``other`` cluster.

    Only these can yield a pair in Ĩ: a closest pair of p x q is a disagreement
    exactly when the other view puts both ends in one cluster.
    """
    keep = ~other_is_noise
    combo = np.unique(np.stack([other[keep], own[keep]], axis=1), axis=0)
    if combo.shape[0] == 0:
        return np.empty((0, 2), dtype=np.int64)
    # All pairs within each run of equal ``other`` ids, without a loop over clusters: the
    # element at local position a of a run of size s pairs with the s - 1 - a after it.
    start = np.flatnonzero(np.r_[True, combo[1:, 0] != combo[:-1, 0]])
    size = np.diff(np.r_[start, combo.shape[0]])
    local = np.arange(combo.shape[0]) - np.repeat(start, size)
    later = np.repeat(size, size) - 1 - local
    first = np.repeat(np.arange(combo.shape[0]), later)
    step = np.arange(first.size) - np.repeat(np.cumsum(later) - later, later)
    if first.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    c = combo[:, 1]
    return np.unique(np.stack([c[first], c[first + 1 + step]], axis=1), axis=0)


def disagreement_counts(labels_a: np.ndarray, labels_b: np.ndarray, region_id: np.ndarray, n_regions: int) -> np.ndarray:
    """|Ĩ_k| per region from the A x B contingency table (docs/method.md §6), never listing A+ or B+.

    |A+ △ B+| = Σ_a C(n_a,2) + Σ_b C(n_b,2) - 2 Σ_ab C(n_ab,2); noise is singleton.
    """
    idx = np.flatnonzero(region_id >= 0)
    r = region_id[idx]
    a, _ = dense_ids(singletons_to_clusters(labels_a)[idx])
    b, _ = dense_ids(singletons_to_clusters(labels_b)[idx])

    def pair_count_per_region(keys: np.ndarray) -> np.ndarray:
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        c2 = counts.astype(np.float64) * (counts - 1) / 2
        return np.bincount(r[first], weights=c2, minlength=n_regions)

    nb = b.max() + 1 if b.size else 1
    return (
        pair_count_per_region(a)
        + pair_count_per_region(b)
        - 2 * pair_count_per_region(a.astype(np.int64) * nb + b)
    ) if idx.size else np.zeros(n_regions)


@dataclass
class UnderSegmentationPool:
    pairs: np.ndarray  # (m, 2), u < v
    region: np.ndarray  # region k of each pair
    pair_type: np.ndarray  # 0, 1, 2 = β1, β2, β3 under view A


def under_segmentation_pool(
    x: np.ndarray, labels_a: np.ndarray, labels_b: np.ndarray, region_id: np.ndarray
) -> UnderSegmentationPool:
    """docs/method.md §5, Eqs. 1-3: U_us = ∪_k Ĩ_k ∩ P_cand_k, by enumerating P_cand_k only."""
    idx = np.flatnonzero(region_id >= 0)
    empty = UnderSegmentationPool(np.empty((0, 2), np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if idx.size == 0:
        return empty
    xa = x[idx]
    # Cluster ids are made region-local by pairing them with the region id, so a
    # cluster pair never spans two regions (regions are unions of whole clusters anyway).
    a_ids, na = dense_ids(singletons_to_clusters(labels_a)[idx])
    b_ids, nb = dense_ids(singletons_to_clusters(labels_b)[idx])
    a_noise = labels_a[idx] < 0
    b_noise = labels_b[idx] < 0
    found = []
    for own, n_own, other, other_noise in ((a_ids, na, b_ids, b_noise), (b_ids, nb, a_ids, a_noise)):
        cps = cooccurring_cluster_pairs(own, other, other_noise)
        if cps.shape[0] == 0:
            continue
        local = closest_cross_pairs(xa, own, n_own, cps)
        agree = (other[local[:, 0]] == other[local[:, 1]]) & ~other_noise[local[:, 0]]
        found.append(local[agree])
    if not found:
        return empty
    local = unordered(np.concatenate(found))
    pairs = idx[local]
    pairs.sort(axis=1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]
    outlier = labels_a < 0
    ptype = outlier[pairs[:, 0]].astype(np.int64) + outlier[pairs[:, 1]]
    return UnderSegmentationPool(pairs, region_id[pairs[:, 0]], ptype)


def disagreeing_pairs(labels_a: np.ndarray, labels_b: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Eq. 1 listed explicitly, Ĩ = A+ △ B+ over ``members``: quadratic, for auditing small regions.

    The samplers never call this; they use :func:`disagreement_counts` and Eq. 2 candidates.
    """
    m = np.sort(np.asarray(members))
    a = singletons_to_clusters(labels_a)[m]
    b = singletons_to_clusters(labels_b)[m]
    iu, ju = np.triu_indices(m.size, k=1)
    diff = (a[iu] == a[ju]) != (b[iu] == b[ju])
    return np.stack([m[iu[diff]], m[ju[diff]]], axis=1)
