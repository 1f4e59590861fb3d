"""k nearest neighbours with FAISS (docs/method.md §1): exact, or approximate above a size with
a measured recall.

Exact search costs n² · d: 100k × 2048 features take minutes on two cores. Above
``exact_up_to`` images an inverted file (IVF: k-means cells, each query scans the cells of
its nearest centroids) is searched instead; the number of cells scanned is raised until the
recall@k measured on a sample of queries (against exact search for those queries) reaches
``target_recall``, and the recall reached is returned with the result, so a run can report
it. Where the cells do not follow the data (many equally distant groups, more than cells)
the IVF would have to scan a large share of the images; ``auto`` then searches an HNSW
graph, whose search depth is raised the same way. A GPU index is used for exact search
whenever FAISS sees a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

EXACT_UP_TO = 20_000
HNSW_M = 32
RECALL_QUERIES = 500
# 0.99 still moved a DBSCAN view by ARI 0.986 against exact kNN at 100k images; 0.999 keeps it
# above 0.99 (benchmarks/results/README.md)
TARGET_RECALL = 0.999
# k-means on 32 points a cell is plenty: a coarse cell layout only costs a few more probes
IVF_TRAIN_PER_CELL = 32
# auto: past about 1/32 of the images scanned per query an IVF costs more than an HNSW graph
# (its scan is not a matrix product): the break-even was 1/25 at 100k x 2048 and 1/64 at
# 1M x 512 (benchmarks/results/knn-*)
IVF_MAX_SCAN = 1 / 32


def faiss_gpu_count() -> int:
    # faiss-cpu builds have no get_num_gpus in some versions; absence means no GPU path.
    fn = getattr(faiss, "get_num_gpus", None)
    return int(fn()) if fn is not None else 0


@dataclass
class Neighbours:
    """``sims`` and ``idx``, each (n_queries, k), best first; how they were found."""

    sims: np.ndarray
    idx: np.ndarray
    method: str = "exact"
    recall: float = 1.0

    def __iter__(self):  # (sims, idx) = knn_search(...) keeps working
        return iter((self.sims, self.idx))

    def __getitem__(self, i):
        return (self.sims, self.idx)[i]


def _exact(x: np.ndarray, q: np.ndarray, k: int, use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(x.shape[1])
    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        log.debug("kNN on GPU: n=%d d=%d k=%d", x.shape[0], x.shape[1], k)
    index.add(x)
    sims, idx = index.search(q, k)
    return sims, idx.astype(np.int64, copy=False)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true k nearest neighbours that were found (rows are queries)."""
    hits = sum(np.intersect1d(a[a >= 0], b).size for a, b in zip(found, truth))
    return hits / truth.size


def recall_yardstick(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled queries and their exact neighbours, the yardstick of an approximate search."""
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(x.shape[0], size=min(RECALL_QUERIES, x.shape[0]), replace=False))
    return probe, _exact(x, x[probe], k, False)[1]


def ivf_cells(n: int) -> int:
    """Cells of the inverted file: about 4·√n (FAISS's guideline is 4-16·√n), so a query's
    scan and its centroid search stay near √n vectors each."""
    return int(np.clip(round(4 * np.sqrt(n)), 1, max(1, n // IVF_TRAIN_PER_CELL)))


def build_ivf(x: np.ndarray, seed: int = 0) -> faiss.IndexIVFFlat:
    """An inner-product IVF of ``x`` with :func:`ivf_cells` cells, trained on a sample."""
    n, d = x.shape
    cells = ivf_cells(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_CELL * cells), replace=False))
    index.cp.min_points_per_centroid = train.size // cells  # no FAISS warning for the sample we chose
    index.train(x[train])
    index.add(x)
    return index


def _ivf(x: np.ndarray, k: int, target_recall: float, seed: int, yardstick, max_scan: float = 1.0
         ) -> Neighbours | None:
    """IVF search of ``x`` in itself; None when the recall needs more than ``max_scan`` of the
    cells probed."""
    n, d = x.shape
    index = build_ivf(x, seed)
    cells = index.nlist
    probe, truth = yardstick
    most = max(1, int(max_scan * cells))
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(x[probe], k)
        recall = recall_at_k(found, truth)
        if recall >= target_recall:
            break
        if nprobe >= most:
            if most < cells:
                log.info("kNN: IVF reached recall@%d %.4f only, probing %d of %d cells; searching an HNSW graph "
                         "instead", k, recall, nprobe, cells)
                return None
            break
        nprobe = min(2 * nprobe, most)
    sims, idx = index.search(x, k)
    # a query whose probed cells hold fewer than k images gets -1s: search those rows exactly
    short = np.flatnonzero((idx < 0).any(axis=1))
    if short.size:
        sims[short], idx[short] = _exact(x, x[short], k, False)
    log.info("kNN: IVF (%d cells, %d probed) on n=%d d=%d, recall@%d %.4f on %d sampled queries", cells, nprobe, n, d,
             k, recall, probe.size)
    return Neighbours(sims, idx.astype(np.int64, copy=False), f"ivf(cells={cells},nprobe={nprobe})", recall)


def _hnsw(x: np.ndarray, k: int, target_recall: float, seed: int, yardstick) -> Neighbours:
    n, d = x.shape
    # L2 on unit rows ranks exactly as cosine does, and HNSW's graph is built for L2.
    index = faiss.IndexHNSWFlat(d, HNSW_M)
    index.hnsw.efConstruction = 80
    index.add(x)
    probe, truth = yardstick
    ef, recall = max(2 * k, 32), 0.0
    while True:
        index.hnsw.efSearch = ef
        _, found = index.search(x[probe], k)
        recall = recall_at_k(found, truth)
        if recall >= target_recall or ef >= 16 * k + 512:
            break
        ef *= 2
    if recall < target_recall:
        log.warning("HNSW reached recall@%d %.4f < %.2f at efSearch %d; set cluster.knn: exact for exact "
                    "neighbours", k, recall, target_recall, ef)
    dist, idx = index.search(x, k)
    sims = 1.0 - dist / 2.0  # |a - b|² = 2 - 2 a·b for unit rows
    log.info("kNN: HNSW (M=%d, efSearch=%d) on n=%d d=%d, recall@%d %.4f on %d sampled queries", HNSW_M, ef, n, d, k,
             recall, probe.size)
    return Neighbours(sims, idx.astype(np.int64, copy=False), f"hnsw(efSearch={ef})", recall)


def knn_search(
    features: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    use_gpu: bool | None = None,
    method: str = "exact",
    exact_up_to: int = EXACT_UP_TO,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> Neighbours:
    """Inner-product (cosine on unit rows) kNN of ``queries`` (default: ``features``).

    ``method``: ``exact``; ``ivf``; ``hnsw``; or ``auto`` (exact up to ``exact_up_to`` database
    rows, or on a GPU; above, IVF, or HNSW where the IVF would have to scan more than
    ``IVF_MAX_SCAN`` of the images). The approximate searches reach a recall@k >=
    ``target_recall`` measured on sampled queries. Returns
    :class:`Neighbours` (unpacks as ``sims, idx``), each (n_queries, k), best first; when
    queries are the database itself each point is normally its own first neighbour, as
    SpCL assumes.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    q = x if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    k = int(min(k, x.shape[0]))
    if k < 1:
        raise ValueError("knn_search needs k >= 1 and a non-empty database")
    if method not in ("exact", "ivf", "hnsw", "auto"):
        raise ValueError(f"kNN method must be exact, ivf, hnsw or auto; got {method!r}")
    if use_gpu is None:
        use_gpu = faiss_gpu_count() > 0
    auto = method == "auto"
    if auto:
        method = "ivf" if not use_gpu and x.shape[0] > exact_up_to else "exact"
    if method != "exact" and queries is None:
        yardstick = recall_yardstick(x, k, seed)
        found = _ivf(x, k, target_recall, seed, yardstick, IVF_MAX_SCAN if auto else 1.0) if method == "ivf" else None
        return found if found is not None else _hnsw(x, k, target_recall, seed, yardstick)
    sims, idx = _exact(x, q, k, use_gpu)
    return Neighbours(sims, idx)
