"""Exact kNN with FAISS (docs/method.md §1): GPU index when CUDA is present, CPU otherwise."""

from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)


def faiss_gpu_count() -> int:
    # faiss-cpu builds have no get_num_gpus in some versions; absence means no GPU path.
    fn = getattr(faiss, "get_num_gpus", None)
    return int(fn()) if fn is not None else 0


def knn_search(
    features: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product (cosine on unit rows) exact kNN of ``queries`` (default: ``features``).

    Returns ``(sims, idx)``, each (n_queries, k), best first. When queries are the
    database itself, each point is normally its own first neighbour, as SpCL assumes.
    ``use_gpu=None`` picks the GPU whenever FAISS sees one.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    q = x if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    k = int(min(k, x.shape[0]))
    if k < 1:
        raise ValueError("knn_search needs k >= 1 and a non-empty database")
    index = faiss.IndexFlatIP(x.shape[1])
    if use_gpu is None:
        use_gpu = faiss_gpu_count() > 0
    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        log.debug("kNN on GPU: n=%d d=%d k=%d", x.shape[0], x.shape[1], k)
    index.add(x)
    sims, idx = index.search(q, k)
    return sims, idx.astype(np.int64, copy=False)
