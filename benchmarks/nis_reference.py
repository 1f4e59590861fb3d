"""NIS's count of individuals (docs/method.md §14) against the authors' reference code (Perez
et al., ECCV 2024, github.com/cvl-umass/counting-clusters), on the same similarities and the
same number of vetted pairs.

1. Export: the demo config's frozen features of the training images (seed 0's split, as the
   frozen-feature comparison study uses) of each dataset, their cosine similarity matrix and
   their identities, to ``<export-dir>/<dataset>-{features,similarity,labels}.npy``.
2. The reference: ``src/methods.py`` of a checkout given by ``--reference`` (made beforehand;
   nothing is fetched here), its ``nested_is`` on the row softmax of that similarity matrix
   (the last step of its ``calculate_similarity``), seeded through ``np.random.seed``.
3. Ours: ``NISSampler.propose`` on the same features, the simulated oracle answering every
   pair, then ``NISSampler.estimate``.

Both get the same budget B (pairs vetted) split the same way: k draws per vertex besides the
vertex itself (the reference's N_n = k + 1 samples, the vertex its first) and ceil(B / k)
vertices, with k = round(sqrt(B)) - 1 (``auto``: the reference script's N_v = N_n = sqrt(B),
ours' default) or a fixed k (5: ours' former default). Per dataset, budget, k and
implementation: the mean estimate over seeds, its sd, the mean 95 % half-width and how often
the interval holds the truth; for the reasons, the estimator with each drawn vertex's true
group size (the vertex sampling alone), how often a vertex's draws find no match, and the
floor n̂ / (k + 1) that the vertex's own sample puts under n̄.

    git clone https://github.com/cvl-umass/counting-clusters /tmp/counting-clusters   # once, by hand
    python benchmarks/nis_reference.py --reference /tmp/counting-clusters
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from saving import save_results  # noqa: E402

from aas_ray.al.baselines import NISSampler, nis_draws  # noqa: E402

DEFAULT_LION = HERE.parents[1] / "shared" / "data" / "LionData"
log = logging.getLogger("nis_reference")


def export(dataset: str, lion_root: str, out: Path) -> dict:
    """Frozen features, cosine similarities and identities of ``dataset``'s training images."""
    from aas_ray.checks import unit_features
    from aas_ray.cli import DEMO_CONFIG
    from aas_ray.config import load_config
    from aas_ray.experiment.prepare import prepare_experiment

    extra = [f"data.root={lion_root}"] if dataset == "LionData" else []
    cfg = load_config(DEMO_CONFIG, [f"data.name={dataset}", "seed=0", *extra])
    exp = prepare_experiment(cfg, progress=False)
    x = unit_features(exp.train_features)
    labels = np.unique(exp.truth, return_inverse=True)[1].astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{dataset}-{k}.npy" for k in ("features", "similarity", "labels")}
    np.save(paths["features"], x)
    np.save(paths["similarity"], (x @ x.T).astype(np.float64))
    np.save(paths["labels"], labels)
    return {k: str(p) for k, p in paths.items()}


def load_reference(path: str):
    """The reference's ``src/methods.py`` as a module, from a checkout on disk."""
    src = Path(path) / "src" / "methods.py"
    if not src.is_file():
        raise SystemExit(f"--reference {path}: no src/methods.py there (a checkout of cvl-umass/counting-clusters)")
    spec = importlib.util.spec_from_file_location("counting_clusters_methods", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_runs(ref, sim: np.ndarray, labels: np.ndarray, tau: float, n_v: int, n_n: int, seeds) -> list:
    s_ij = sim.copy()
    s_ij[s_ij == 0] = 1  # as calculate_similarity (the diagonal is 1 already)
    s_sm = np.stack([ref.softmax_t(row, tau) for row in s_ij])
    gt = (labels[:, None] == labels[None, :]).astype(np.float64)
    out, n_hat = [], None
    for seed in seeds:
        np.random.seed(seed)
        f_hat, ci, n_hat = ref.nested_is(gt, s_sm, n_v, n_n, n_hat=n_hat, ci=True)
        out.append((float(f_hat), float(ci)))
    return out


def our_runs(x: np.ndarray, labels: np.ndarray, tau: float, draws: int, budget: int, seeds) -> tuple[list, float]:
    from aas_ray.al import ConstraintStore, SimulatedOracle, SamplerInput

    n = x.shape[0]
    views = SamplerInput(x, np.full(n, -1), np.full(n, -1), None)
    oracle = SimulatedOracle(labels)
    out, no_match = [], []
    for seed in seeds:
        store = ConstraintStore(n)
        prop = NISSampler(tau=tau, neighbours=draws).propose(views, store, budget, np.random.default_rng(seed))
        for (u, v), a in zip(prop.draw.pairs, oracle.answer(prop.draw.pairs)):
            store.add(int(u), int(v), int(a))
        est, ci, _ = NISSampler.estimate(prop.drawn, store)
        out.append((est, ci))
        no_match += [not (labels[nb[nb != v]] == labels[v]).any() for v, nb, *_ in prop.drawn]
    return out, float(np.mean(no_match))


def exact_size_runs(q: np.ndarray, sizes: np.ndarray, n_vertices: int, seeds) -> list:
    """F̂ = mean 1 / (n_v Q_v) with each drawn vertex's true group size: the vertex sampling alone."""
    out = []
    for seed in seeds:
        v = np.random.default_rng(seed).choice(q.size, size=n_vertices, p=q)
        t = 1.0 / (sizes[v] * q[v])
        out.append((float(t.mean()), float(1.96 * t.std() / math.sqrt(t.size))))
    return out


def summary(runs: list, truth: int) -> dict:
    est = np.array([r[0] for r in runs], dtype=np.float64)
    ci = np.array([r[1] for r in runs], dtype=np.float64)
    ok = np.isfinite(est)
    return {"mean": float(est[ok].mean()), "sd": float(est[ok].std()), "ci95": float(ci[ok].mean()),
            "min": float(est[ok].min()), "max": float(est[ok].max()),
            "coverage": float((np.abs(est[ok] - truth) <= ci[ok]).mean()), "runs": int(ok.sum())}


def why(x: np.ndarray, labels: np.ndarray, tau: float) -> dict:
    """What sets both estimators' bias: the true group sizes, the reference's self-weight 1/q_v
    (= n̂_v, the soft count) and the chance that one draw from the softmax is a match."""
    sizes = np.bincount(labels)[labels].astype(np.float64)
    e = np.exp((x @ x.T - 1.0) / tau)
    n_hat = e.sum(axis=1)  # 1 / q_v of the reference's softmax row (self included)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    np.fill_diagonal(e, 0.0)
    p_match = (e * same).sum(axis=1) / e.sum(axis=1)  # one draw of ours (self excluded) is a match
    return {"images": int(labels.size), "individuals": int(labels.max() + 1), "mean_group_size": float(sizes.mean()),
            "median_group_size": float(np.median(sizes)), "mean_soft_count": float(n_hat.mean()),
            "mean_p_match": float(p_match.mean()), "uniform_p_match": float(((sizes - 1) / (labels.size - 1)).mean()),
            "cosine_median": float(np.median(x @ x.T)), "sizes": sizes, "n_hat": n_hat}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="a checkout of cvl-umass/counting-clusters (read, never fetched)")
    p.add_argument("--datasets", default="synthetic,LionData")
    p.add_argument("--lion-root", default=str(DEFAULT_LION))
    p.add_argument("--budgets", default="0.0015,0.0045,0.05", help="pairs vetted / all pairs (0.0015: one cycle of "
                   "the frozen-feature comparison; 0.0045: its whole run)")
    p.add_argument("--draws", default="auto,5", help="draws per vertex besides itself: auto = the reference's "
                   "allocation (round(sqrt(B)) - 1, ours' default), or a number (5: ours' former default)")
    p.add_argument("--max-vertices", type=int, default=500, help="skip a split with more vertices than this "
                   "(its cost, not its answer: 5 draws at 5 %% of the pairs)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--tau", type=float, default=0.5, help="softmax temperature (both: 0.5)")
    p.add_argument("--export-dir", default="runs/nis-reference", help="where the .npy files go")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ref = load_reference(args.reference)
    seeds = list(range(args.seeds))
    rows, reasons = [], {}
    for ds in args.datasets.split(","):
        if ds == "LionData" and not (Path(args.lion_root) / "wildlife_reidentification-main").is_dir():
            log.warning("LionData not found at %s (--lion-root): skipped", args.lion_root)
            continue
        t0 = time.time()
        paths = export(ds, args.lion_root, Path(args.export_dir))
        x, sim, labels = (np.load(paths[k]) for k in ("features", "similarity", "labels"))
        truth = int(np.unique(labels).size)
        w = why(x, labels, args.tau)
        sizes, n_hat = w.pop("sizes"), w.pop("n_hat")
        reasons[ds] = {**w, "export": paths}
        n = labels.size
        q_ours = (1 / n_hat) / (1 / n_hat).sum()
        for frac in map(float, args.budgets.split(",")):
            budget = math.ceil(frac * n * (n - 1) / 2)
            for alloc in args.draws.split(","):
                draws = nis_draws(budget) if alloc == "auto" else int(alloc)
                n_v = math.ceil(budget / draws)
                if n_v > args.max_vertices:
                    log.warning("%s, budget %g, %d draws: %d vertices > --max-vertices, skipped", ds, frac, draws, n_v)
                    continue
                log.warning("%s, budget %g (%d pairs), %d draws per vertex, %d vertices", ds, frac, budget, draws, n_v)
                ref_runs = reference_runs(ref, sim, labels, args.tau, n_v, draws + 1, seeds)
                ours, no_match = our_runs(x, labels, args.tau, draws, budget, seeds)
                exact_ours = exact_size_runs(q_ours, sizes, n_v, seeds)
                exact_unif = exact_size_runs(np.full(n, 1.0 / n), sizes, n_v, seeds)
                for impl, runs in (("reference", ref_runs), ("ours", ours),
                                   ("exact sizes, Q ∝ 1/n̂ (ours)", exact_ours),
                                   ("exact sizes, Q uniform (reference)", exact_unif)):
                    rows.append({"dataset": ds, "truth": truth, "budget_fraction": frac, "pairs": budget,
                                 "allocation": alloc, "vertices": n_v, "draws_per_vertex": draws,
                                 "self_floor": float(n_hat.mean() / (draws + 1)),
                                 "implementation": impl, **summary(runs, truth),
                                 **({"no_match_vertices": no_match} if impl == "ours" else {})})
        log.warning("%s done in %.0f s", ds, time.time() - t0)
    text = render(rows, reasons, args)
    print(text)
    stamp = save_results("nis-reference", text, {"rows": rows, "why": reasons, "tau": args.tau, "seeds": args.seeds})
    print(f"saved benchmarks/results/nis-reference-{stamp}.txt/.json")


def render(rows: list, reasons: dict, args) -> str:
    lines = [f"NIS count of individuals: reference code vs ours, tau {args.tau}, {args.seeds} seeds each "
             "(estimate: mean ± sd over seeds; ci95: mean half-width; cover: share of seeds whose interval holds "
             "the truth; k: draws per vertex besides itself; V: vertices; floor: mean n̂ / (k + 1); no-match: "
             "share of ours' vertices whose k draws hold no match)", ""]
    hdr = (f"{'dataset':9s} {'truth':>5s} {'budget':>7s} {'pairs':>5s} {'V':>4s} {'k':>3s} {'floor':>5s} "
           f"{'implementation':36s} {'estimate':>15s} {'ci95':>7s} {'cover':>5s} {'no-match':>8s}")
    lines += [hdr, "-" * len(hdr)]
    for r in rows:
        nm = f"{r['no_match_vertices']:8.2f}" if "no_match_vertices" in r else " " * 8
        lines.append(f"{r['dataset']:9s} {r['truth']:5d} {100 * r['budget_fraction']:6.2f}% {r['pairs']:5d} "
                     f"{r['vertices']:4d} {r['draws_per_vertex']:3d} {r['self_floor']:5.1f} {r['implementation']:36s} "
                     f"{r['mean']:7.1f} ± {r['sd']:5.1f} {r['ci95']:7.1f} {r['coverage']:5.2f} {nm}")
    lines += ["", "Per dataset:"]
    for ds, w in reasons.items():
        lines.append(f"  {ds}: {w['images']} images of {w['individuals']} individuals; group size of an image "
                     f"mean {w['mean_group_size']:.1f}, median {w['median_group_size']:.0f}; median cosine "
                     f"{w['cosine_median']:.2f}; soft count n̂ = 1/q_self mean {w['mean_soft_count']:.0f}; "
                     f"one softmax draw is a match with p = {w['mean_p_match']:.3f} "
                     f"(uniform: {w['uniform_p_match']:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
