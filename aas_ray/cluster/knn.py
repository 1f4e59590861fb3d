"""k nearest neighbours (docs/method.md §1): exact, or approximate above a size with a measured
recall; on a GPU when there is one.

On a CPU, exact search costs n² · d: 100k × 2048 features take minutes on two cores. Above
``exact_up_to`` images an inverted file (IVF: k-means cells, each query scans the cells of
its nearest centroids) is searched instead; the number of cells scanned is raised until the
recall@k measured on a sample of queries (against exact search for those queries) reaches
``target_recall``, and the recall reached is returned with the result, so a run can report
it. Where the cells do not follow the data (many equally distant groups, more than cells)
the IVF would have to scan a large share of the images; ``auto`` then searches an HNSW
graph, whose search depth is raised the same way.

On a GPU (the current CUDA device of the calling thread; a Ray Train worker's own) the search
is a flat scan: FAISS's GPU index when the installed FAISS has GPU support, else the same scan
in torch (chunked matrix product and top-k). Exact (float32) up to ``exact_up_to`` images;
above, ``auto`` scans a float16 copy (half the memory, tensor cores) and measures its recall
the same way, falling back to float32 when it falls short; above ``GPU_IVF_ABOVE`` images
FAISS searches a GPU IVF first, its probes raised as on the CPU.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from aas_ray.checks import InputError

try:
    import faiss
except ImportError:  # pyproject names no FAISS build: the installer chooses one
    raise ImportError("aas-ray needs FAISS: pip install -r requirements.txt (requirements-gpu.txt on a GPU "
                      "machine), or pip install 'aas-ray[cpu]' / 'aas-ray[gpu]'") from None

log = logging.getLogger(__name__)

# knn_search's and build_views' search: exact up to EXACT_UP_TO images, approximate above
METHOD = "auto"
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
# GPU, auto: a float16 flat scan of 1M x 2048 is seconds; above this size FAISS tries an IVF first
GPU_IVF_ABOVE = 4_000_000
# torch's float16 scan keeps this many candidates per neighbour and ranks them again in float32
RERANK = 2
# torch's scan: the query-by-database scores of one chunk of queries
SCORE_BYTES = 1 << 30

# FAISS's GPU resources (cuBLAS handles, pinned and scratch memory) cost more to create than a
# small search: one per device for the process, used by one search at a time.
_GPU_RESOURCES: dict[int, object] = {}
_GPU_LOCK = threading.Lock()


def faiss_gpu_count() -> int:
    # faiss-cpu builds have no get_num_gpus in some versions; absence means no GPU path.
    fn = getattr(faiss, "get_num_gpus", None)
    return int(fn()) if fn is not None else 0


def gpu_device() -> int | None:
    """The CUDA device searches run on: the calling thread's current one when torch can use
    CUDA, device 0 when only FAISS sees a GPU, None without a GPU."""
    if torch.cuda.is_available():
        return torch.cuda.current_device()
    return 0 if faiss_gpu_count() > 0 else None


def gpu_resources(device: int):
    """The process's FAISS ``StandardGpuResources`` for ``device`` (created on first use)."""
    res = _GPU_RESOURCES.get(device)
    if res is None:
        res = _GPU_RESOURCES[device] = faiss.StandardGpuResources()
    return res


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


def _exact(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(q, k)
    return sims, idx.astype(np.int64, copy=False)


def _on_device(a: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``a`` on ``device`` as ``dtype``, copied in slices: a float16 copy never needs the float32
    one whole on the device."""
    out = torch.empty(a.shape, dtype=dtype, device=device)
    step = max(1, (256 << 20) // (4 * a.shape[1]))
    for s in range(0, a.shape[0], step):
        out[s:s + step].copy_(torch.tensor(a[s:s + step]))
    return out


@torch.no_grad()
def torch_knn(x: np.ndarray, q: np.ndarray | None, k: int, device: torch.device | str,
              half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product kNN of ``q`` (None: ``x`` itself) in ``x``, best first, by chunked matrix
    product and top-k in torch on ``device`` (the GPU when FAISS has none; any device works):
    exact in float32 (torch's default matmul precision, TF32 off).

    ``half`` scans float16 copies, keeps ``RERANK`` · k candidates per query and ranks them again
    by their float32 products (of the float16 copies: within a few 1e-4 for unit rows), so only
    a true neighbour scored below ``RERANK`` · k others by float16 rounding is missed.
    """
    device = torch.device(device)
    xb = _on_device(x, device, torch.float16 if half else torch.float32)
    qb = xb if q is None else _on_device(q, device, xb.dtype)
    n, m, d = xb.shape[0], qb.shape[0], xb.shape[1]
    c = min(n, RERANK * k) if half else k
    rows = max(1, min(m, SCORE_BYTES // (4 * max(n, c * d))))
    sims = torch.empty((m, k), dtype=torch.float32, device=device)
    idx = torch.empty((m, k), dtype=torch.int64, device=device)
    for a in range(0, m, rows):
        qa = qb[a:a + rows]
        top = torch.topk(qa @ xb.T, c, dim=1)
        if half:
            scores = torch.einsum("rd,rcd->rc", qa.float(), xb[top.indices].float())
            best = torch.topk(scores, k, dim=1)
            sims[a:a + rows], idx[a:a + rows] = best.values, top.indices.gather(1, best.indices)
        else:
            sims[a:a + rows], idx[a:a + rows] = top.values.float(), top.indices
    return sims.cpu().numpy(), idx.cpu().numpy()


def _faiss_gpu_flat(x: np.ndarray, q: np.ndarray | None, k: int, device: int,
                    half: bool) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's GPU flat index on ``device``; ``half`` stores float16 (products summed in float32)."""
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = device
    cfg.useFloat16 = half
    with _GPU_LOCK:
        index = faiss.GpuIndexFlatIP(gpu_resources(device), x.shape[1], cfg)
        index.add(x)
        sims, idx = index.search(x if q is None else q, k)
        del index  # its copy of x leaves the GPU now, not at the next collection
    return sims, idx.astype(np.int64, copy=False)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true k nearest neighbours that were found (rows are queries)."""
    hits = sum(np.intersect1d(a[a >= 0], b).size for a, b in zip(found, truth))
    return hits / truth.size


def _probe(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False))


def recall_yardstick(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled queries and their exact neighbours, the yardstick of an approximate search."""
    probe = _probe(x.shape[0], seed)
    return probe, _exact(x, x[probe], k)[1]


def ivf_cells(n: int) -> int:
    """Cells of the inverted file: about 4·√n (FAISS's guideline is 4-16·√n), so a query's
    scan and its centroid search stay near √n vectors each."""
    return int(np.clip(round(4 * np.sqrt(n)), 1, max(1, n // IVF_TRAIN_PER_CELL)))


def _ivf_sample(n: int, cells: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_CELL * cells), replace=False))


def build_ivf(x: np.ndarray, seed: int = 0) -> faiss.IndexIVFFlat:
    """An inner-product IVF of ``x`` with :func:`ivf_cells` cells, trained on a sample."""
    n, d = x.shape
    cells = ivf_cells(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    train = _ivf_sample(n, cells, seed)
    index.cp.min_points_per_centroid = train.size // cells  # no FAISS warning for the sample we chose
    index.train(x[train])
    index.add(x)
    return index


def build_gpu_ivf(x: np.ndarray, device: int, seed: int = 0):
    """The same inverted file as :func:`build_ivf`, trained (k-means) and searched on ``device``."""
    n, d = x.shape
    cells = ivf_cells(n)
    cfg = faiss.GpuIndexIVFFlatConfig()
    cfg.device = device
    index = faiss.GpuIndexIVFFlat(gpu_resources(device), d, cells, faiss.METRIC_INNER_PRODUCT, cfg)
    index.train(x[_ivf_sample(n, cells, seed)])
    index.add(x)
    return index


def _ivf(x: np.ndarray, k: int, target_recall: float, seed: int, yardstick, max_scan: float = 1.0,
         device: int | None = None) -> Neighbours | None:
    """IVF search of ``x`` in itself (on GPU ``device`` if given); None when the recall needs more
    than ``max_scan`` of the cells probed."""
    n, d = x.shape
    cells = ivf_cells(n)
    probe, truth = yardstick
    most = max(1, int(max_scan * cells))
    nprobe, recall = 1, 0.0
    with _GPU_LOCK if device is not None else nullcontext():
        index = build_ivf(x, seed) if device is None else build_gpu_ivf(x, device, seed)
        while True:
            index.nprobe = nprobe
            _, found = index.search(x[probe], k)
            recall = recall_at_k(found, truth)
            if recall >= target_recall:
                break
            if nprobe >= most:
                if most < cells:
                    log.info("kNN: IVF reached recall@%d %.4f only, probing %d of %d cells; searching %s instead",
                             k, recall, nprobe, cells, "an HNSW graph" if device is None else "a flat index")
                    return None
                break
            nprobe = min(2 * nprobe, most)
        sims, idx = index.search(x, k)
        del index
    # a query whose probed cells hold fewer than k images gets -1s: search those rows exactly
    short = np.flatnonzero((idx < 0).any(axis=1))
    if short.size:
        sims[short], idx[short] = _exact(x, x[short], k)
    where = "" if device is None else f"cuda:{device},"
    log.info("kNN: IVF (%s%d cells, %d probed) on n=%d d=%d, recall@%d %.4f on %d sampled queries", where, cells,
             nprobe, n, d, k, recall, probe.size)
    return Neighbours(sims, idx.astype(np.int64, copy=False), f"ivf({where}cells={cells},nprobe={nprobe})", recall)


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


def gpu_flat_search(x: np.ndarray, q: np.ndarray | None, k: int, device: int | torch.device | str,
                    backend: str, method: str = METHOD, exact_up_to: int = EXACT_UP_TO,
                    target_recall: float = TARGET_RECALL, seed: int = 0) -> Neighbours:
    """kNN of ``q`` (None: ``x`` itself) on ``device`` with FAISS (``backend="faiss"``, a CUDA
    device index) or torch (``"torch"``, any device): float32 flat; with ``method="auto"`` on
    more than ``exact_up_to`` images searched in themselves, a FAISS GPU IVF above
    ``GPU_IVF_ABOVE`` images or else a float16 flat scan, either kept only when its recall@k on
    sampled queries (against float32 flat search for them) reaches ``target_recall``."""
    where = f"{device if backend == 'torch' else f'cuda:{device}'}, {backend}"

    def flat(queries: np.ndarray | None, half: bool) -> tuple[np.ndarray, np.ndarray]:
        if backend == "faiss":
            return _faiss_gpu_flat(x, queries, k, device, half)
        return torch_knn(x, queries, k, device, half)

    n = x.shape[0]
    if method != "auto" or q is not None or n <= exact_up_to:
        sims, idx = flat(q, False)
        return Neighbours(sims, idx, f"exact({where})")
    probe = _probe(n, seed)
    truth = flat(x[probe], False)[1]
    if backend == "faiss" and n > GPU_IVF_ABOVE:
        found = _ivf(x, k, target_recall, seed, (probe, truth), IVF_MAX_SCAN, device=device)
        if found is not None:
            return found
    sims, idx = flat(None, True)
    recall = recall_at_k(idx[probe], truth)
    log.info("kNN: float16 flat scan (%s) on n=%d d=%d, recall@%d %.4f on %d sampled queries", where, n, x.shape[1],
             k, recall, probe.size)
    if recall >= target_recall:
        return Neighbours(sims, idx, f"fp16({where})", recall)
    log.info("kNN: float16 falls short of recall %.4f: searching in float32", target_recall)
    sims, idx = flat(None, False)
    return Neighbours(sims, idx, f"exact({where})")


def knn_search(
    features: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    use_gpu: bool | None = None,
    method: str = METHOD,
    exact_up_to: int = EXACT_UP_TO,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> Neighbours:
    """Inner-product (cosine on unit rows) kNN of ``queries`` (default: ``features``).

    ``method``: ``exact``; ``ivf``; ``hnsw`` (both on the CPU); or ``auto`` (exact up to
    ``exact_up_to`` database rows; above, on a CPU an IVF, or HNSW where the IVF would have to
    scan more than ``IVF_MAX_SCAN`` of the images; on a GPU see :func:`gpu_flat_search`). The
    approximate searches reach a recall@k >= ``target_recall`` measured on sampled queries.
    ``use_gpu`` None: on the current CUDA device when there is a usable GPU (FAISS's GPU index if
    FAISS has GPU support, else torch). Returns :class:`Neighbours` (unpacks as ``sims, idx``),
    each (n_queries, k), best first; when queries are the database itself each point is
    normally its own first neighbour, as SpCL assumes.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    q = None if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    k = int(min(k, x.shape[0]))
    if k < 1:
        raise InputError("knn_search needs k >= 1 and a non-empty database")
    if method not in ("exact", "ivf", "hnsw", "auto"):
        raise InputError(f"kNN method must be exact, ivf, hnsw or auto; got {method!r}")
    device = gpu_device() if use_gpu is not False else None
    if use_gpu and device is None:
        raise InputError("knn_search(use_gpu=True): neither torch nor FAISS can use a GPU here")
    if device is not None and method in ("exact", "auto"):
        backend = "faiss" if faiss_gpu_count() > 0 else "torch"
        return gpu_flat_search(x, q, k, device if backend == "faiss" else torch.device("cuda", device), backend,
                               method, exact_up_to, target_recall, seed)
    auto = method == "auto"
    if auto:
        method = "ivf" if x.shape[0] > exact_up_to else "exact"
    if method != "exact" and q is None:
        yardstick = recall_yardstick(x, k, seed)
        found = _ivf(x, k, target_recall, seed, yardstick, IVF_MAX_SCAN if auto else 1.0) if method == "ivf" else None
        return found if found is not None else _hnsw(x, k, target_recall, seed, yardstick)
    sims, idx = _exact(x, x if q is None else q, k)
    return Neighbours(sims, idx)
