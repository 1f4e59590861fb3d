"""AAS's sampling pools against its budget at 1k, 10k and 100k images (docs/method.md §4-7).

For each size, the same structured embeddings as ``bench_scale.py`` (long-tailed identities
inside families of look-alikes), the views aas-ray builds (DBSCAN at the automatic radius or
HDBSCAN, FINCH's finest partition), then three AL cycles with the simulated oracle at the
paper's budget (0.02 % of all pairs per cycle). Per cycle: regions, |U_os| and |U_us|, the
budget, the pairs drawn and what stayed unspent, and the must-links each pool found. Each
configuration is run with U_os on the Jaccard similarity (the paper's reading) and on cosine.

    .venv/bin/python benchmarks/bench_pools.py                   # 1k, 10k, 100k x 512 (a few minutes)
    .venv/bin/python benchmarks/bench_pools.py --sizes 1000,10000 --view-a dbscan
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_scale import structured_embeddings  # noqa: E402
from saving import save_results  # noqa: E402

FRACTION = 0.0002  # the paper: 0.02 % of all pairs per cycle


def run(x: np.ndarray, y: np.ndarray, view_a: str, similarity: str, cycles: int) -> list[dict]:
    from aas_ray.al import ConstraintStore, SimulatedOracle
    from aas_ray.cluster import build_views
    from aas_ray.config import load_config
    from aas_ray.experiment.cycle import ALCycle

    n = x.shape[0]
    cfg = load_config(None, ["cluster.eps=auto", "cluster.finch_partition=0", f"cluster.view_a={view_a}",
                             f"cluster.similarity={similarity}", f"al.budget_fraction={FRACTION}"])
    t = time.perf_counter()
    views = build_views(x, **cfg.cluster.view_params())
    built = time.perf_counter() - t
    al = ALCycle(cfg, n, ConstraintStore(n), np.random.default_rng(0), SimulatedOracle(y))
    rows = []
    for c in range(1, cycles + 1):
        t = time.perf_counter()
        row = al.run(c, x, views).row
        rows.append({"n": n, "view_a": view_a, "similarity": similarity, "cycle": c, "views_s": built,
                     "cycle_s": time.perf_counter() - t, **{k: v for k, v in row.items() if k != "notes"}})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| n | view A | U_os sim | cycle | regions | U_os | U_us | budget | asked | unspent | ML from U_os "
            "(asked) | ML from U_us (asked) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['n']} | {r['view_a']} | {r['similarity']} | {r['cycle']} | {r.get('regions', '-')} | "
                     f"{r.get('U_os', '-')} | {r.get('U_us', '-')} | {r['budget']} | {r['pairs_asked']} | "
                     f"{r['unspent']} ({100 * r['unspent'] / max(r['budget'], 1):.0f} %) | "
                     f"{r.get('ml_os', 0)} ({r.get('asked_os', 0)}) | {r.get('ml_us', 0)} ({r.get('asked_us', 0)}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--view-a", default="dbscan,hdbscan", help="comma-separated: dbscan, hdbscan")
    p.add_argument("--similarity", default="jaccard,cosine", help="comma-separated: jaccard, cosine")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        x, y = structured_embeddings(n, args.d)
        for view_a in args.view_a.split(","):
            for sim in args.similarity.split(","):
                rows += run(x, y, view_a, sim, args.cycles)
                print(table([r for r in rows if r["n"] == n and r["view_a"] == view_a and r["similarity"] == sim]),
                      flush=True)
    text = (f"AAS pools against the paper's budget ({100 * FRACTION:.2f} % of all pairs per cycle), "
            f"{args.cycles} cycles, simulated oracle, structured embeddings x {args.d}\n\n" + table(rows))
    stamp = save_results("pools", text, rows)
    print(text)
    print(f"saved benchmarks/results/pools-{stamp}.txt / .json")


if __name__ == "__main__":
    main()
