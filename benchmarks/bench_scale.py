"""One whole clustering + AAS cycle at 10k to 1M images on this machine, with the code paths
aas-ray runs (docs/method.md §1-9): kNN (exact up to 20k images, IVF with a measured
recall above), k-reciprocal Jaccard, DBSCAN at the automatic radius, FINCH from the
neighbour graph, then an AL cycle with a cycle of answers already in the store (NP3 of both
views, regions, pools, sampling).

The embeddings are structured like trained re-ID features: long-tailed identities (cosine
≈ 0.8 within), inside families of look-alikes (≈ 0.5 across identities of a family),
unrelated otherwise. At ``--check`` sizes the same cycle also runs with exact kNN, and the
approximate path is compared with it: recall@k1 over all queries, ARI of view A, of view B
and of the regions.

    .venv/bin/python benchmarks/bench_scale.py                         # 10k, 100k x 2048; 10k, 100k, 1M x 512
    .venv/bin/python benchmarks/bench_scale.py --sizes 100000 --dims 2048 --check 100000
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000 --dims 512 --recall 0.99   # 1M in ~25 min
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
from saving import save_results

log = logging.getLogger("bench_scale")
K1, K2 = 30, 6


def structured_embeddings(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.round(3 * (1 + rng.pareto(1.5, n))), 2, 60).astype(int)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    y = np.repeat(np.arange(sizes.size), sizes)[:n]
    n_ids = sizes.size
    fam = rng.integers(0, max(2, n_ids // 12), n_ids)
    fam_c = rng.standard_normal((fam.max() + 1, d), dtype=np.float32)
    id_c = fam_c[fam] + np.float32(0.8) * rng.standard_normal((n_ids, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):  # in chunks: 1M x 512 never exists twice
        e = min(n, s + 65536)
        x[s:e] = id_c[y[s:e]] + np.float32(0.6) * rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)
    return x, y


def cycle(x: np.ndarray, y: np.ndarray, knn: str, st, recall: float) -> dict:
    from aas_ray.al import AASSampler, ConstraintStore, SimulatedOracle, SamplerInput
    from aas_ray.cluster.finch import finch_levels
    from aas_ray.cluster.jaccard import jaccard_graph
    from aas_ray.cluster.knn import knn_search
    from aas_ray.cluster.views import auto_eps, choose_partition, dbscan_view, first_non_self_neighbour
    from aas_ray.experiment.labels import refine

    n = x.shape[0]
    with st.stage("kNN"):
        nb = knn_search(x, K1, method=knn, target_recall=recall)
    with st.stage("Jaccard"):
        g = jaccard_graph(x, K1, K2, knn=nb, min_sim=0.01)
    with st.stage("DBSCAN (auto radius)"):
        eps = auto_eps(g, 4)
        a = dbscan_view(g, eps, 4)
    with st.stage("FINCH"):
        parts, counts = finch_levels(x, first_non_self_neighbour(nb.idx), knn, target_recall=recall)
        b = parts[:, choose_partition(counts, 0, 1)]
    budget = int(np.ceil(0.0002 * n * (n - 1) / 2))
    store, oracle, rng = ConstraintStore(n), SimulatedOracle(y), np.random.default_rng(0)
    views = SamplerInput(x, a, b, g.pair_sim)
    first = AASSampler().propose(views, store, budget, rng)  # cycle 1's answers: NP3 has work
    for (u, v), ans in zip(first.draw.pairs, oracle.answer(first.draw.pairs)):
        store.add(int(u), int(v), int(ans), 1)
    with st.stage("AAS cycle (NP3 x2, regions, pools, sampling)"):
        prop = AASSampler().propose(views, store, budget, rng)
    with st.stage("NP3 training labels"):
        labels = refine(a, store, x)
    from aas_ray.al import region_index

    return {"n": n, "d": x.shape[1], "knn_method": nb.method, "knn_recall_sampled": nb.recall, "eps": eps,
            "clusters_a": int(np.unique(a[a >= 0]).size), "clusters_b": int(np.unique(b).size),
            "finch_levels": counts, "regions": prop.stats.get("regions"), "U_os": prop.stats.get("U_os"),
            "U_us": prop.stats.get("U_us"), "drawn": len(prop.draw), "budget": budget,
            "constraints": len(store.annotations), "refined_clusters": int(np.unique(labels[labels >= 0]).size),
            "_nb": nb, "_a": a, "_b": b, "_regions": region_index(a, b)}


def child(args) -> None:
    from memwatch import StageTimer
    from sklearn.metrics import adjusted_rand_score

    from aas_ray.cluster.knn import recall_at_k

    t = time.perf_counter()
    x, y = structured_embeddings(2000, args.d)
    cycle(x, y, "auto", StageTimer(), args.recall)  # start-up (numba kernels, thread pools): not charged
    warm = time.perf_counter() - t
    t = time.perf_counter()
    x, y = structured_embeddings(args.n, args.d)
    made = time.perf_counter() - t
    st = StageTimer()
    res = cycle(x, y, "auto", st, args.recall)
    res["stages"] = st.rows
    res["total_seconds"] = sum(r["seconds"] for r in st.rows)
    res["peak_rss_gib"] = max(r["peak_rss_gib"] for r in st.rows)
    res["features_gib"] = x.nbytes / 2**30
    res["warmup_seconds"], res["make_seconds"] = warm, made
    if args.check:
        ex = cycle(x, y, "exact", StageTimer(), args.recall)
        res["check"] = {
            "recall_at_k1_all_queries": recall_at_k(res["_nb"].idx, ex["_nb"].idx),
            "ari_view_a": adjusted_rand_score(ex["_a"], res["_a"]), "eps_exact": ex["eps"],
            "ari_view_b": adjusted_rand_score(ex["_b"], res["_b"]),
            "ari_regions": adjusted_rand_score(ex["_regions"], res["_regions"]),
            "regions_exact": ex["regions"], "regions_approx": res["regions"]}
    print("RESULT " + json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))


def spawn(n: int, d: int, check: bool, recall: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--d", str(d), "--recall", str(recall)] + (
        ["--compare"] if check else [])
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"n={n} d={d} failed:\n{proc.stderr[-3000:]}")
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    log.info("n=%d d=%d done in %.0f s", n, d, time.time() - t)
    return res


def table(results: list[dict]) -> str:
    stages = [s["stage"] for s in results[0]["stages"]]
    short = {"kNN": "kNN", "Jaccard": "Jaccard", "DBSCAN (auto radius)": "DBSCAN", "FINCH": "FINCH",
             "AAS cycle (NP3 x2, regions, pools, sampling)": "AAS cycle", "NP3 training labels": "NP3 labels"}
    lines = ["seconds per stage (peak RSS GiB in the stage); one process per size, after a start-up pass on 2000",
             "| n | d | kNN method | recall@k1 (sampled) | " + " | ".join(short[s] for s in stages) +
             " | total | peak GiB | features GiB |", "|" + "---|" * (len(stages) + 7)]
    for r in results:
        by = {s["stage"]: s for s in r["stages"]}
        cells = " | ".join(f"{by[s]['seconds']:.2f} ({by[s]['peak_rss_gib']:.2f})" for s in stages)
        lines.append(f"| {r['n']} | {r['d']} | {r['knn_method']} | {r['knn_recall_sampled']:.4f} | {cells} | "
                     f"**{r['total_seconds']:.1f}** | {r['peak_rss_gib']:.2f} | {r['features_gib']:.2f} |")
    lines += ["", "| n | d | eps | view A clusters | FINCH levels | regions | U_os | U_us | drawn / budget |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['d']} | {r['eps']} | {r['clusters_a']} | {r['finch_levels']} | {r['regions']} | "
                     f"{r['U_os']} | {r['U_us']} | {r['drawn']} / {r['budget']} |")
    checks = [r for r in results if "check" in r]
    if checks:
        lines += ["", "approximate against exact kNN (same data, the whole cycle run both ways):",
                  "| n | d | recall@k1, all queries | ARI view A | eps exact / approx | ARI view B | ARI regions | "
                  "regions exact / approx |", "|---|---|---|---|---|---|---|---|"]
        for r in checks:
            c = r["check"]
            lines.append(f"| {r['n']} | {r['d']} | {c['recall_at_k1_all_queries']:.4f} | {c['ari_view_a']:.4f} | "
                         f"{c['eps_exact']} / {r['eps']} | {c['ari_view_b']:.4f} | {c['ari_regions']:.4f} | "
                         f"{c['regions_exact']} / {c['regions_approx']} |")
    return "\n".join(lines)


def main() -> None:
    from aas_ray.cluster.knn import TARGET_RECALL

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="comma-separated n (default: per --dims, see the docstring)")
    p.add_argument("--dims", default="2048,512")
    p.add_argument("--check", default="100000", help="sizes also run with exact kNN for comparison")
    p.add_argument("--recall", type=float, default=TARGET_RECALL, help="cluster.knn_recall (default %(default)s)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    p.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        args.check = args.compare
        child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check = {int(s) for s in args.check.split(",") if s}
    plan = []
    for d in map(int, args.dims.split(",")):
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
            [10_000, 100_000] if d >= 1024 else [10_000, 100_000, 1_000_000])
        plan += [(n, d) for n in sizes]
    results = [spawn(n, d, n in check, args.recall) for n, d in plan]
    host = f"{platform.node()} {os.cpu_count()} CPU cores, cluster.knn_recall {args.recall}"
    text = f"{host}\n{table(results)}"
    print(text)
    save_results("scale", text, {"host": host, "results": results})


if __name__ == "__main__":
    main()
