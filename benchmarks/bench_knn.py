"""Approximate kNN on this machine: what an inverted file (IVF) and an HNSW graph cost for the
recall they reach, against exact search (docs/method.md §1). It is the measurement behind
``cluster.knn: auto`` (IVF, or HNSW when the IVF would scan more than 1/32 of the images).

On the structured embeddings of ``bench_scale.py``, per size: the exact neighbours of 500
sampled queries (the yardstick aas-ray itself uses); an IVF with aas-ray's cell count, its
recall and its time for every doubling of the cells probed; optionally (``--hnsw``) an HNSW
graph with aas-ray's settings at every doubling of its search depth. Search times for all n
queries are projected from the 500 sampled ones (marked "projected"); build times are
measured.

    .venv/bin/python benchmarks/bench_knn.py --n 100000 --d 2048 --hnsw
    .venv/bin/python benchmarks/bench_knn.py --n 1000000 --d 512
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import faiss

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from saving import save_results

log = logging.getLogger("bench_knn")
K = 30


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def run(n: int, d: int, hnsw: bool) -> dict:
    from bench_scale import structured_embeddings

    from aas_ray.cluster.knn import HNSW_M, IVF_MAX_SCAN, build_ivf, recall_at_k, recall_yardstick

    x, _ = structured_embeddings(n, d)
    (probe, truth), t_exact = timed(recall_yardstick, x, K, 0)
    res = {"n": n, "d": d, "k": K, "queries": int(probe.size), "exact_projected_s": t_exact * n / probe.size,
           "ivf": [], "hnsw": []}
    index, t_build = timed(build_ivf, x, 0)
    cells = index.nlist
    nprobe = 1
    while nprobe <= cells:
        index.nprobe = nprobe
        (_, found), t = timed(index.search, x[probe], K)
        row = {"cells": cells, "nprobe": nprobe, "scan_share": nprobe / cells, "build_s": t_build,
               "search_projected_s": t * n / probe.size, "recall": recall_at_k(found, truth)}
        res["ivf"].append(row)
        log.info("n=%d d=%d IVF %s", n, d, row)
        if row["recall"] >= 0.999 or row["scan_share"] > 2 * IVF_MAX_SCAN:
            break
        nprobe *= 2
    del index
    if hnsw:
        index = faiss.IndexHNSWFlat(d, HNSW_M)
        index.hnsw.efConstruction = 80
        _, t_build = timed(index.add, x)
        ef = 32
        while ef <= 16 * K + 512:
            index.hnsw.efSearch = ef
            (_, found), t = timed(index.search, x[probe], K)
            row = {"efSearch": ef, "build_s": t_build, "search_projected_s": t * n / probe.size,
                   "recall": recall_at_k(found, truth)}
            res["hnsw"].append(row)
            log.info("n=%d d=%d HNSW %s", n, d, row)
            if row["recall"] >= 0.999:
                break
            ef *= 2
    return res


def table(results: list[dict]) -> str:
    lines = [f"recall@{K} on 500 sampled queries against exact search; search seconds for all n queries are "
             "projected from those 500", "",
             "| n | d | method | setting | build s | search s (projected) | total s | recall@30 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['d']} | exact | - | 0 | {r['exact_projected_s']:.0f} | "
                     f"{r['exact_projected_s']:.0f} | 1.0000 |")
        for v in r["ivf"]:
            lines.append(f"| {r['n']} | {r['d']} | IVF | {v['cells']} cells, {v['nprobe']} probed "
                         f"({100 * v['scan_share']:.1f} % scanned) | {v['build_s']:.1f} | {v['search_projected_s']:.1f} | "
                         f"{v['build_s'] + v['search_projected_s']:.1f} | {v['recall']:.4f} |")
        for v in r["hnsw"]:
            lines.append(f"| {r['n']} | {r['d']} | HNSW | efSearch {v['efSearch']} | {v['build_s']:.1f} | "
                         f"{v['search_projected_s']:.1f} | {v['build_s'] + v['search_projected_s']:.1f} | "
                         f"{v['recall']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="100000", help="comma-separated sizes")
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--hnsw", action="store_true", help="also build an HNSW graph (minutes at 100k x 2048)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = [run(int(n), args.d, args.hnsw) for n in args.n.split(",")]
    host = f"{platform.node()} {os.cpu_count()} CPU cores, faiss {faiss.__version__}"
    text = f"{host}\n{table(results)}"
    print(text)
    save_results("knn", text, {"host": host, "results": results})


if __name__ == "__main__":
    main()
