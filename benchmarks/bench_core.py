"""Benchmark of the AAS core library: per-stage time and peak memory (docs/method.md §1-9).

For synthetic Gaussian-mixture embeddings (n = 10k, 50k, 100k; d = 2048 and 512) it
prints the time and peak resident memory of every stage: kNN, Jaccard, DBSCAN, FINCH,
regions + pools, sampling, NP3; and at n = 20k it compares the sparse Jaccard stage
with a straightforward dense port of SpCL's reference (tests/dense_reference.py).

Each (n, d) runs in its own subprocess so peak memory is not inherited.

    python benchmarks/bench_core.py                      # the full table (~20 min on 2 cores)
    python benchmarks/bench_core.py --sizes 10000 --dims 512 --no-dense
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from saving import save_results

log = logging.getLogger("bench_core")


def embeddings(n: int, d: int, seed: int = 0):
    """Long-tailed mixture: ~n/8 identities, unit rows, within-identity cosine ≈ 0.5."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.round(3 * (1 + rng.pareto(1.5, n))), 2, 60).astype(int)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    y = np.repeat(np.arange(sizes.size), sizes)[:n]
    centres = rng.standard_normal((sizes.size, d), dtype=np.float32)
    x = centres[y] + rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def run_one(n: int, d: int, use_gpu: bool | None, min_sim: float = 0.01) -> dict:
    from memwatch import StageTimer, rss_bytes

    from aas_ray.al import AASSampler, ConstraintStore, SimulatedOracle, SamplerInput, cycle_budget, np3
    from aas_ray.al.pools import (
        disagreement_counts, over_segmentation_pool, region_medoids, under_segmentation_pool,
    )
    from aas_ray.al.regions import region_index
    from aas_ray.al.sampling import draw_without_replacement, mixture, over_segmentation_probs, under_segmentation_probs
    from aas_ray.cluster import jaccard_graph, knn_search
    from aas_ray.cluster.views import choose_partition, dbscan_view, finch_partitions, first_non_self_neighbour

    x, y = embeddings(n, d)
    base_rss = rss_bytes()
    st = StageTimer()
    k1, k2 = 30, 6
    with st.stage("kNN"):
        knn = knn_search(x, k1, use_gpu=use_gpu)
    with st.stage("Jaccard"):
        g = jaccard_graph(x, k1, k2, knn=knn, min_sim=min_sim)
    with st.stage("DBSCAN"):
        a = dbscan_view(g, 0.6, 4)
    with st.stage("FINCH"):
        n_a = int(np.unique(a[a >= 0]).size)
        parts, counts = finch_partitions(x, first_non_self_neighbour(g.knn_idx))
        b = parts[:, choose_partition(counts, "auto", max(n_a, 1))]
    # A cycle-2 situation: one cycle of answers already in the store, so NP3 has work.
    store = ConstraintStore(n)
    oracle = SimulatedOracle(y)
    budget = cycle_budget(n, 0.0002)
    prop = AASSampler().propose(SamplerInput(x, a, b, g.pair_sim), store, budget, np.random.default_rng(0))
    for (u, v), ans in zip(prop.draw.pairs, oracle.answer(prop.draw.pairs)):
        store.add(u, v, ans)
    ml, cl = store.must_links(), store.cannot_links()
    with st.stage("NP3"):
        ra = np3(a, ml, cl, x)
        rb = np3(b, ml, cl, x)
    with st.stage("regions + pools"):
        rid = region_index(ra, rb)
        m = int(rid.max()) + 1
        med = region_medoids(x, rid, m)
        os_pairs, os_sim = over_segmentation_pool(x, med, 5, 0.3, g.pair_sim)
        us = under_segmentation_pool(x, ra, rb, rid)
    with st.stage("sampling"):
        keep_os, keep_us = store.open_pairs(os_pairs), store.open_pairs(us.pairs)
        sizes = np.bincount(rid[rid >= 0], minlength=m).astype(float)
        rate = disagreement_counts(ra, rb, rid, m) / np.maximum(sizes * (sizes - 1) / 2, 1)
        p_os, p_us = mixture(
            over_segmentation_probs(os_sim[keep_os]),
            under_segmentation_probs(us.region[keep_us], us.pair_type[keep_us], g.pair_sim(us.pairs[keep_us]), rate),
            0.6,
        )
        pick = draw_without_replacement(np.concatenate([p_os, p_us]), budget, np.random.default_rng(1))
    times = {r["stage"]: r for r in st.rows}
    after_knn = sum(r["seconds"] for r in st.rows if r["stage"] != "kNN")
    return {
        "n": n, "d": d, "stages": st.rows, "knn_seconds": times["kNN"]["seconds"], "after_knn_seconds": after_knn,
        "peak_rss_gib": max(r["peak_rss_gib"] for r in st.rows), "features_gib": x.nbytes / 2**30,
        "baseline_rss_gib": base_rss / 2**30, "sim_nnz": int(g.sim.nnz), "clusters_a": n_a,
        "clusters_b": int(np.unique(b).size), "regions": m, "U_os": int(os_pairs.shape[0]),
        "U_us": int(us.pairs.shape[0]), "drawn": int(pick.size), "budget": budget,
        "constraints": int(ml.shape[0] + cl.shape[0]),
    }


def run_dense_comparison(n: int, d: int) -> dict:
    from dense_reference import dense_jaccard
    from memwatch import StageTimer

    from aas_ray.cluster import jaccard_graph, knn_search

    x, _ = embeddings(n, d)
    knn = knn_search(x, 30)
    # The same steady state as the core rows: numba's kernels are loaded before timing.
    jaccard_graph(embeddings(2000, d)[0], 30, 6)
    st = StageTimer()
    with st.stage("sparse"):
        g = jaccard_graph(x, 30, 6, knn=knn, min_sim=0.0)  # every pair, as the dense port
    with st.stage("dense SpCL port"):
        dense = dense_jaccard(x, knn[1][:, :30], 30, 6)
    diff = float(np.abs((1.0 - g.sim.toarray()) - dense).max())
    s, dn = st.rows
    return {"n": n, "d": d, "sparse_s": s["seconds"], "dense_s": dn["seconds"], "speedup": dn["seconds"] / s["seconds"],
            "sparse_peak_gib": s["peak_rss_gib"], "dense_peak_gib": dn["peak_rss_gib"], "max_abs_diff": diff}


def median_of(runs: list[dict]) -> dict:
    """Per stage, the median time and the largest peak over repeated runs in one process."""
    out = dict(runs[0])
    stages = []
    for i, row in enumerate(runs[0]["stages"]):
        secs = [r["stages"][i]["seconds"] for r in runs]
        stages.append({**row, "seconds": float(np.median(secs)), "all_seconds": secs,
                       "peak_rss_gib": max(r["stages"][i]["peak_rss_gib"] for r in runs)})
    out["stages"] = stages
    out["knn_seconds"] = next(r["seconds"] for r in stages if r["stage"] == "kNN")
    out["after_knn_seconds"] = sum(r["seconds"] for r in stages if r["stage"] != "kNN")
    out["peak_rss_gib"] = max(r["peak_rss_gib"] for r in runs)
    out["repeats"] = len(runs)
    return out


def child(args) -> None:
    if args.child == "dense":
        out = run_dense_comparison(args.n, args.d)
    else:
        use_gpu = None if args.gpu == "auto" else args.gpu == "yes"
        # Steady state, as in a long-lived clustering actor: a first pass on a small input
        # pays the once-per-process start-up (numba's cached kernels loading, BLAS and
        # FAISS thread pools), which is reported separately and not charged to any stage.
        t = time.perf_counter()
        run_one(2000, args.d, use_gpu)
        warm = time.perf_counter() - t
        runs = [run_one(args.n, args.d, use_gpu) for _ in range(args.repeat)]
        out = median_of(runs)
        out["warmup_seconds_n2000"] = warm
    print("RESULT " + json.dumps(out))


def spawn(kind: str, n: int, d: int, gpu: str, repeat: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--d", str(d), "--gpu", gpu,
           "--repeat", str(repeat)]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} n={n} d={d} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    log.info("%s n=%d d=%d done in %.0f s", kind, n, d, time.time() - t)
    return res


def print_table(results: list[dict], dense: dict | None) -> str:
    lines = []
    stages = ["kNN", "Jaccard", "DBSCAN", "FINCH", "NP3", "regions + pools", "sampling"]
    hdr = f"{'n':>7} {'d':>5} | " + " | ".join(f"{s:>15}" for s in stages) + f" | {'after-kNN/kNN':>13} | {'peak GiB':>8}"
    lines += ["time in seconds (peak RSS GiB during the stage); each process first runs the whole",
              "pipeline once on n=2000 (start-up: numba kernels, thread pools), not counted; sizes up to",
              "n=20k are run --repeat times in that process and each stage's median is shown", hdr, "-" * len(hdr)]
    for r in results:
        by = {s["stage"]: s for s in r["stages"]}
        cells = " | ".join(f"{by[s]['seconds']:7.2f} ({by[s]['peak_rss_gib']:4.2f})" for s in stages)
        ratio = r["after_knn_seconds"] / r["knn_seconds"]
        lines.append(f"{r['n']:>7} {r['d']:>5} | {cells} | {ratio:13.2f} | {r['peak_rss_gib']:8.2f}")
    lines.append("")
    lines.append(f"{'n':>7} {'d':>5} {'sim nnz':>11} {'nnz/n':>7} {'A clusters':>10} {'B clusters':>10} {'regions':>8} "
                 f"{'|U_os|':>7} {'|U_us|':>7} {'budget':>7} {'drawn':>6} {'warm-up s':>9}")
    for r in results:
        lines.append(f"{r['n']:>7} {r['d']:>5} {r['sim_nnz']:>11} {r['sim_nnz'] / r['n']:7.1f} {r['clusters_a']:>10} "
                     f"{r['clusters_b']:>10} {r['regions']:>8} {r['U_os']:>7} {r['U_us']:>7} {r['budget']:>7} "
                     f"{r['drawn']:>6} {r.get('warmup_seconds_n2000', float('nan')):9.2f}")
    if dense:
        lines += ["", f"Jaccard at n={dense['n']}, d={dense['d']}: sparse {dense['sparse_s']:.2f} s "
                  f"(peak {dense['sparse_peak_gib']:.2f} GiB) vs dense SpCL port {dense['dense_s']:.2f} s "
                  f"(peak {dense['dense_peak_gib']:.2f} GiB): {dense['speedup']:.1f}x faster, "
                  f"max |Δd_J| = {dense['max_abs_diff']:.2e}"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,50000,100000")
    p.add_argument("--dims", default="2048,512")
    p.add_argument("--dense-n", type=int, default=20000)
    p.add_argument("--no-dense", action="store_true")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per size up to n=20k (median stage times); larger sizes run once")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = [spawn("core", n, d, args.gpu, args.repeat if n <= 20000 else 1)
               for d in map(int, args.dims.split(",")) for n in map(int, args.sizes.split(","))]
    dense = None if args.no_dense else spawn("dense", args.dense_n, 512, args.gpu)
    table = print_table(results, dense)
    host = f"{platform.node()} {os.cpu_count()} CPU cores"
    print(f"\n{host}\n{table}")
    save_results("core", f"{host}\n{table}\n", {"host": host, "results": results, "dense": dense}, out=args.out)


if __name__ == "__main__":
    main()
