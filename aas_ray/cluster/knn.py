"""k nearest neighbours with FAISS (docs/method.md §1): exact, or approximate above a size with
a measured recall.

Exact search costs n² · d: 100k × 2048 features take minutes on two cores. Above
``exact_up_to`` images an HNSW graph is searched instead, and its search breadth is raised
until the recall@k measured on a sample of queries (against exact search for those
queries) reaches ``target_recall``; the recall reached is returned with the result, so a
run can report it. A GPU index is used for exact search whenever FAISS sees a GPU.
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


def _hnsw(x: np.ndarray, k: int, target_recall: float, seed: int) -> Neighbours:
    n, d = x.shape
    # L2 on unit rows ranks exactly as cosine does, and HNSW's graph is built for L2.
    index = faiss.IndexHNSWFlat(d, HNSW_M)
    index.hnsw.efConstruction = 80
    index.add(x)
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False))
    _, truth = _exact(x, x[probe], k, False)
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
    target_recall: float = 0.99,
    seed: int = 0,
) -> Neighbours:
    """Inner-product (cosine on unit rows) kNN of ``queries`` (default: ``features``).

    ``method``: ``exact``; ``hnsw``; or ``auto`` (exact up to ``exact_up_to`` database rows, or
    on a GPU, HNSW with a measured recall@k >= ``target_recall`` above). Returns
    :class:`Neighbours` (unpacks as ``sims, idx``), each (n_queries, k), best first; when
    queries are the database itself each point is normally its own first neighbour, as
    SpCL assumes.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    q = x if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    k = int(min(k, x.shape[0]))
    if k < 1:
        raise ValueError("knn_search needs k >= 1 and a non-empty database")
    if method not in ("exact", "hnsw", "auto"):
        raise ValueError(f"kNN method must be exact, hnsw or auto; got {method!r}")
    if use_gpu is None:
        use_gpu = faiss_gpu_count() > 0
    approximate = method == "hnsw" or (method == "auto" and not use_gpu and x.shape[0] > exact_up_to)
    if approximate and queries is None:
        return _hnsw(x, k, target_recall, seed)
    sims, idx = _exact(x, q, k, use_gpu)
    return Neighbours(sims, idx)
