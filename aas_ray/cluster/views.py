"""The two clustering views (docs/method.md §1-2): A = DBSCAN (or HDBSCAN) on d_J, B = FINCH on
cosine distance."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse import csgraph
from sklearn.cluster import DBSCAN, HDBSCAN

from aas_ray.checks import InputError
from aas_ray.cluster._radius_kernels import sweep_counts
from aas_ray.cluster.finch import finch_levels
from aas_ray.cluster.jaccard import K1, K2, MIN_SIM, JaccardGraph, jaccard_graph
from aas_ray.cluster.knn import EXACT_UP_TO, METHOD, TARGET_RECALL, gpu_device, knn_search

log = logging.getLogger(__name__)

# SpCL's DBSCAN density and self-paced gap (docs/method.md §2, §10); HDBSCAN's smallest groups
MIN_SAMPLES = 4
EPS_GAP = 0.02
HDBSCAN_MIN_CLUSTER_SIZE = 2
HDBSCAN_MIN_SAMPLES = 2


def _eps_graph(graph: JaccardGraph, eps: float) -> sp.csr_matrix:
    """d_J restricted to pairs within ``eps``, each row ordered by distance.

    Pairs absent from the sparse graph have d_J = 1 and so are never eps-neighbours for
    eps < 1, which is exactly the dense result; dropping the pairs beyond eps first is
    exact too and keeps sklearn's neighbourhood lists short. sklearn wants each row
    ordered by distance and otherwise sorts row by row in Python; one vectorised sort
    here does it for all rows.
    """
    d = graph.distance()
    keep = d.data <= eps
    rows = np.repeat(np.arange(d.shape[0]), np.diff(d.indptr))[keep]
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=d.shape[0]))]
    data, indices = d.data[keep], d.indices[keep]
    order = np.lexsort((data, rows))
    return sp.csr_matrix((data[order], indices[order], indptr), shape=d.shape)


def _dbscan(d: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(d)


def dbscan_view(graph: JaccardGraph, eps: float, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """View A (docs/method.md §2): DBSCAN on the sparse precomputed Jaccard distance; -1 = noise."""
    if not 0.0 < eps < 1.0:
        raise InputError(f"DBSCAN eps must be in (0, 1) for a Jaccard distance; got {eps}")
    return _dbscan(_eps_graph(graph, eps), eps, min_samples)


def complete_distance(graph: JaccardGraph, min_neighbours: int) -> sp.csr_matrix:
    """``d_J`` as a sparse matrix HDBSCAN can take, with nothing changed but its storage.

    Every pair absent from the Jaccard graph has ``d_J = 1`` exactly (its supports do not
    overlap). HDBSCAN's sparse path needs each row to hold at least ``min_neighbours``
    distances and the graph to be connected; both are met by storing some of those exact
    ones: each image's nearest neighbours (from the kNN the graph was built from) and a chain
    through one image of each connected component. Stored zeros (identical supports) become
    the smallest positive float, so that no distance reads as a missing edge.
    """
    d = graph.distance()
    n = d.shape[0]
    k = min(max(min_neighbours, 1), graph.knn_idx.shape[1] - 1)
    rows = [np.repeat(np.arange(n), k)]
    cols = [graph.knn_idx[:, 1:k + 1].ravel()]
    n_comp, comp = csgraph.connected_components(d, directed=False)
    if n_comp > 1:
        first = np.unique(comp, return_index=True)[1]
        rows.append(first[:-1])
        cols.append(first[1:])
    r, c = np.concatenate(rows), np.concatenate(cols)
    ones = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=d.shape)
    ones = ones.maximum(ones.T)
    stored = d.copy()
    stored.data = np.ones_like(stored.data)
    missing = ones - ones.multiply(stored)  # exact ones only where d_J holds no entry
    missing.eliminate_zeros()
    d.data = np.maximum(d.data, np.finfo(np.float32).tiny)
    out = (d + missing).tocsr()
    out.sort_indices()
    return out


def hdbscan_view(graph: JaccardGraph, min_cluster_size: int = HDBSCAN_MIN_CLUSTER_SIZE,
                 min_samples: int = HDBSCAN_MIN_SAMPLES) -> np.ndarray:
    """View A by HDBSCAN on the same sparse ``d_J`` (docs/method.md §2, [ours]); -1 = noise.

    DBSCAN needs one radius for the whole dataset; animals photographed 2 to 10 times each
    form groups of many densities, and one radius that keeps the loose ones together merges
    the tight ones (over-merged starting labels). HDBSCAN keeps, at every density, the groups
    that persist, and needs no radius: ``min_cluster_size = 2`` lets two photos of an animal
    be a cluster.
    """
    if min_cluster_size < 2 or min_samples < 1:
        raise InputError(f"HDBSCAN needs min_cluster_size >= 2 and min_samples >= 1; got {min_cluster_size}, "
                         f"{min_samples}")
    if graph.n < 3:
        return np.full(graph.n, -1, dtype=np.int64)
    d = complete_distance(graph, min_samples)
    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, metric="precomputed",
                    metric_params={"max_distance": 1.0}, copy=False)
    return model.fit_predict(d).astype(np.int64)


# Coarse radii ``auto_eps`` compares, then refined in steps of 0.01 around the best.
AUTO_EPS_GRID = tuple(np.round(np.arange(0.20, 0.90, 0.05), 2))


def cluster_counts(graph: JaccardGraph, eps_values, min_samples: int = 4) -> np.ndarray:
    """The number of clusters DBSCAN finds at each radius, all in one pass (no DBSCAN run).

    DBSCAN's clusters are the connected components of its core points (points with at
    least ``min_samples`` neighbours within the radius, themselves included), two core
    points being linked when they are within the radius; border points join a cluster but
    never make one. A point is core from its ``min_samples``-th smallest distance on, and an
    edge links two core points from max(d_ij, core_i, core_j) on: one sweep over the edges
    sorted by that weight, with a union-find, counts the components at every radius.
    """
    eps_values = np.asarray(eps_values, dtype=np.float64)
    d = _eps_graph(graph, float(eps_values.max()))  # rows sorted by distance
    n = d.shape[0]
    starts, ends = d.indptr[:-1], d.indptr[1:]
    has = (ends - starts) >= min_samples
    core = np.full(n, np.inf)
    core[has] = d.data[starts[has] + min_samples - 1]
    rows = np.repeat(np.arange(n), np.diff(d.indptr))
    cols = d.indices.astype(np.int64)
    upper = cols > rows
    u, v = rows[upper], cols[upper]
    w = np.maximum(d.data[upper].astype(np.float64), np.maximum(core[u], core[v]))
    order = np.argsort(w, kind="stable")
    core_order = np.argsort(core, kind="stable")
    return sweep_counts(n, core_order, core, u[order], v[order], w[order], eps_values)


def auto_eps(graph: JaccardGraph, min_samples: int = 4) -> float:
    """The DBSCAN radius that yields the most clusters (docs/method.md §2, [ours]).

    SpCL's eps = 0.6 was set for person re-ID sets of ~13k images; on a few hundred
    animal images the k-reciprocal sets cover a large share of the data, every distance
    shrinks and eps = 0.6 puts nearly everything into one cluster (a degenerate view A
    with a single region). As eps grows, the count of clusters first rises (dense groups
    form) and then falls (groups merge); its peak is the finest radius at which the
    data's groups exist, whatever the dataset's size or feature quality. Ties go to the
    largest radius (the same groups, fewer images left as noise). The radii are compared on
    a coarse grid, then in steps of 0.01 around its best; the counts at all of them come from
    one sweep (:func:`cluster_counts`).
    """
    fine = np.round(np.arange(min(AUTO_EPS_GRID) - 0.04, max(AUTO_EPS_GRID) + 0.045, 0.01), 2)
    fine = fine[(fine > 0) & (fine < 1)]
    count = dict(zip(fine.tolist(), cluster_counts(graph, fine, min_samples).tolist()))
    coarse = {e: count[e] for e in AUTO_EPS_GRID}
    best = max(coarse, key=lambda e: (coarse[e], e))
    near = {e: c for e, c in count.items() if abs(e - best) <= 0.04 + 1e-9}
    near.update(coarse)
    return float(max(near, key=lambda e: (near[e], e)))


def resolve_eps(graph: JaccardGraph, eps: float | str, min_samples: int) -> float:
    """The configured radius, or the one :func:`auto_eps` finds for this graph."""
    return auto_eps(graph, min_samples) if eps == "auto" else float(eps)


def first_non_self_neighbour(knn_idx: np.ndarray) -> np.ndarray:
    """FINCH's first integer neighbour from a self-inclusive kNN table."""
    n = knn_idx.shape[0]
    not_self = knn_idx != np.arange(n)[:, None]
    col = np.argmax(not_self, axis=1)
    return knn_idx[np.arange(n), col]


def finch_partitions(
    x: np.ndarray, first_neighbour: np.ndarray, knn: str = METHOD, exact_up_to: int = EXACT_UP_TO,
    target_recall: float = TARGET_RECALL,
) -> tuple[np.ndarray, list[int]]:
    """All FINCH partitions (finest first) of unit features with cosine distance, from each
    image's first neighbour (see :mod:`aas_ray.cluster.finch`)."""
    return finch_levels(x, first_neighbour, knn, exact_up_to, target_recall)


def choose_partition(num_clusters: list[int], partition: str | int, target: int) -> int:
    """``auto``: the level whose cluster count is closest to ``target`` (docs/method.md §2, [ours]);
    an integer picks a level directly (0 = finest), clipped to the levels FINCH found."""
    if partition == "auto":
        return int(np.argmin([abs(k - target) for k in num_clusters]))
    level = int(partition)
    if level < 0:
        raise InputError(f"finch_partition must be 'auto' or a level >= 0; got {partition}")
    return min(level, len(num_clusters) - 1)


def _use_device(device: int | None) -> None:
    if device is not None and torch.cuda.is_available():
        torch.cuda.set_device(device)


@dataclass
class ClusterViews:
    """One clustering of the embedding space (docs/method.md §1-2): the Jaccard graph, the
    DBSCAN radius used, view A, and when asked for, view B (FINCH) and SpCL's self-paced
    views A at eps - gap (``tight``) and eps + gap (``loose``)."""

    graph: JaccardGraph
    eps: float
    labels_a: np.ndarray
    labels_b: np.ndarray | None = None
    tight: np.ndarray | None = None
    loose: np.ndarray | None = None
    finch_level: int | None = None
    knn_method: str = "exact"
    knn_recall: float = 1.0  # measured on sampled queries when the search was approximate


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


# What build_views accepts, checked before any search (as scikit-learn checks an estimator's
# parameters at fit): parameter -> (test, what it must be)
_VIEW_PARAMS = {
    "k1": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "k2": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "eps": (lambda v: v == "auto" or (_is_real(v) and 0 < v < 1), "'auto' or a radius in (0, 1)"),
    "min_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "jaccard_min_sim": (lambda v: _is_real(v) and 0 <= v < 1, "a similarity in [0, 1)"),
    "finch_partition": (lambda v: v == "auto" or (_is_int(v) and v >= 0), "'auto' or a level >= 0"),
    "knn": (lambda v: v in ("auto", "exact", "ivf", "hnsw"), "one of auto, exact, ivf, hnsw"),
    "knn_exact_up_to": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "knn_recall": (lambda v: _is_real(v) and 0 < v <= 1, "a recall in (0, 1]"),
    "eps_gap": (lambda v: _is_real(v) and 0 <= v < 0.5, "a gap in [0, 0.5)"),
    "view_a": (lambda v: v in ("dbscan", "hdbscan"), "'dbscan' or 'hdbscan'"),
    "hdbscan_min_cluster_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "hdbscan_min_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}


def check_view_params(where: str = "build_views: ", **params) -> None:
    """Raise :class:`InputError` naming the first of ``params`` (keywords of :func:`build_views`)
    that it cannot use; ``where`` starts the message."""
    for name, value in params.items():
        test, what = _VIEW_PARAMS[name]
        if not test(value):
            raise InputError(f"{where}{name} must be {what}; got {value!r}")
    if params.get("k2", 1) > params.get("k1", K1):
        raise InputError(f"{where}k2 ({params['k2']}) must not exceed k1 ({params.get('k1', K1)})")


def build_views(
    x: np.ndarray,
    *,
    k1: int = K1,
    k2: int = K2,
    eps: float | str = "auto",
    min_samples: int = MIN_SAMPLES,
    jaccard_min_sim: float = MIN_SIM,
    finch_partition: str | int = 0,
    knn: str = METHOD,
    knn_exact_up_to: int = EXACT_UP_TO,
    knn_recall: float = TARGET_RECALL,
    eps_gap: float = EPS_GAP,
    view_a: str = "dbscan",
    hdbscan_min_cluster_size: int = HDBSCAN_MIN_CLUSTER_SIZE,
    hdbscan_min_samples: int = HDBSCAN_MIN_SAMPLES,
    self_paced: bool = False,
    need_b: bool = True,
    use_gpu: bool | None = None,
) -> ClusterViews:
    """The one view builder (docs/method.md §1-2) of unit features ``x``; its defaults are
    ``aas-ray run``'s (the ``cluster`` section of the configuration refers to them).

    One kNN search feeds both views: the k-reciprocal Jaccard graph and DBSCAN
    (view A) are built concurrently with FINCH's hierarchy (both release the GIL in their
    heavy parts), whose level is then chosen against A's cluster count. ``self_paced`` also
    builds SpCL's views at eps ∓ ``eps_gap`` (docs/method.md §10); ``need_b=False`` skips
    FINCH (epochs without an AL cycle need only view A). ``view_a="hdbscan"`` clusters view A
    with :func:`hdbscan_view` instead of DBSCAN; the radius is still resolved (pair samplers
    and diagnostics read it), and SpCL's radius-based reliability views are not built.
    """
    check_view_params(k1=k1, k2=k2, eps=eps, min_samples=min_samples, jaccard_min_sim=jaccard_min_sim,
                      finch_partition=finch_partition, knn=knn, knn_exact_up_to=knn_exact_up_to,
                      knn_recall=knn_recall, eps_gap=eps_gap, view_a=view_a,
                      hdbscan_min_cluster_size=hdbscan_min_cluster_size, hdbscan_min_samples=hdbscan_min_samples)
    nb = knn_search(x, k1, use_gpu=use_gpu, method=knn, exact_up_to=knn_exact_up_to, target_recall=knn_recall)

    def build_a():
        graph = jaccard_graph(x, k1, k2, use_gpu=use_gpu, knn=nb, min_sim=jaccard_min_sim)
        radius = resolve_eps(graph, eps, min_samples)
        if view_a == "hdbscan":
            return graph, radius, hdbscan_view(graph, hdbscan_min_cluster_size, hdbscan_min_samples)
        return graph, radius, dbscan_view(graph, radius, min_samples)

    # A new thread starts on CUDA device 0: the pool's threads search on this thread's device.
    device = gpu_device() if use_gpu is not False else None
    with ThreadPoolExecutor(2, initializer=_use_device, initargs=(device,)) as pool:
        fa = pool.submit(build_a)
        fb = pool.submit(finch_partitions, x, first_non_self_neighbour(nb.idx), knn, knn_exact_up_to,
                         knn_recall) if need_b else None
        graph, radius, a = fa.result()
        views = ClusterViews(graph, radius, a, knn_method=nb.method, knn_recall=nb.recall)
        if self_paced and view_a == "dbscan":
            views.tight = dbscan_view(graph, max(radius - eps_gap, 1e-3), min_samples)
            views.loose = dbscan_view(graph, min(radius + eps_gap, 0.999), min_samples)
        if fb is not None:
            parts, counts = fb.result()
            n_a = int(np.unique(a[a >= 0]).size)
            views.finch_level = choose_partition(counts, finch_partition, max(n_a, 1))
            log.debug("FINCH levels %s, chose level %d", counts, views.finch_level)
            views.labels_b = parts[:, views.finch_level]
    return views
