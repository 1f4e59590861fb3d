"""Embedding-only AL simulation: N cycles on frozen features with the simulated oracle.

The fast path for sensitivity studies: no training, so one cycle costs one clustering.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import AASSampler, ConstraintStore, SimulatedOracle, Views, cycle_budget, make_sampler, np3, total_pairs
from aas_ray.al.sampling import PairDraw
from aas_ray.al.samplers import cosine_pair_sim
from aas_ray.checks import InputError, unit_features
from aas_ray.cluster import cluster_views
from aas_ray.eval import clustering_metrics
from aas_ray.experiment.annotations import AnnotationJournal

log = logging.getLogger(__name__)


def sampler_for(cfg, strategy: str):
    al = cfg.al
    return make_sampler(strategy, epsilon=al.epsilon, k_max=al.k_max, s_min=al.s_min, pi=al.pi)


def views_for(x: np.ndarray, cfg):
    graph, a, b = cluster_views(x, cfg.cluster)
    sim = graph.pair_sim if cfg.cluster.similarity == "jaccard" else cosine_pair_sim(x)
    return Views(x, a, b, sim)


@dataclass
class CycleRecord:
    draw: PairDraw
    stats: dict


def run_cycle(views: Views, store: ConstraintStore, sampler, oracle, budget: int, rng, cycle: int,
              journal: AnnotationJournal | None = None) -> CycleRecord:
    """One AL cycle (Algorithm 1 step 1 + oracle): propose, ask, record."""
    prop = sampler.propose(views, store, budget, rng)
    answers = oracle.answer(prop.draw.pairs)
    if journal is not None:
        journal.record(store, prop.draw.pairs, answers, cycle, f"simulated:{sampler.name}")
    else:
        for (u, v), ans in zip(prop.draw.pairs, answers):
            store.add(int(u), int(v), int(ans), cycle, f"simulated:{sampler.name}")
    stats = dict(prop.stats)
    stats["pairs_asked"] = len(prop.draw)
    stats["answers"] = answers
    return CycleRecord(prop.draw, stats)


def refined_quality(views: Views, store: ConstraintStore, truth: np.ndarray) -> dict:
    refined = np3(views.labels_a, store.must_links(), store.cannot_links(), views.features)
    return clustering_metrics(refined, truth)


def simulate(x: np.ndarray, truth: np.ndarray, cfg, strategies=("aas", "random"), cycles: int | None = None,
             out_dir: Path | None = None, views: Views | None = None) -> pd.DataFrame:
    """Per strategy and cycle: NP3-refined view-A quality, regions, pools, pairs, ML:CL, budget.

    Every strategy gets the same views, the same per-cycle budget and the same seed.
    """
    x = unit_features(x)
    truth = np.asarray(truth)
    if truth.size != x.shape[0]:
        raise InputError(f"{x.shape[0]} feature rows but {truth.size} labels")
    if np.unique(truth).size < 2:
        raise InputError("simulation needs at least 2 identities in the ground truth")
    n = x.shape[0]
    cycles = cfg.al.cycles if cycles is None else cycles
    budget = cycle_budget(n, cfg.al.budget_fraction)
    views = views or views_for(x, cfg)
    rows = []
    for strategy in strategies:
        rng = np.random.default_rng(cfg.seed)
        sampler = sampler_for(cfg, strategy)
        oracle = SimulatedOracle(truth, cfg.al.oracle_noise, cfg.seed)
        store = ConstraintStore(n)
        journal = AnnotationJournal(out_dir / f"annotations-{strategy}.jsonl") if out_dir else None
        if journal is not None and journal.path.exists():
            journal.path.unlink()
        base = refined_quality(views, store, truth)
        rows.append({"strategy": strategy, "cycle": 0, "pairs_asked": 0, "must_link": 0, "cannot_link": 0,
                     "ml_cl_ratio": float("nan"), "utilised_budget": 0.0, "regions": np.nan, "U_os": np.nan,
                     "U_us": np.nan, **base})
        pair_rows = []
        for c in range(1, cycles + 1):
            rec = run_cycle(views, store, sampler, oracle, budget, rng, c, journal)
            counts = store.counts()
            q = refined_quality(views, store, truth)
            rows.append({
                "strategy": strategy, "cycle": c, "pairs_asked": rec.stats["pairs_asked"],
                "must_link": counts["must_link"], "cannot_link": counts["cannot_link"],
                "ml_cl_ratio": counts["must_link"] / max(counts["cannot_link"], 1),
                "utilised_budget": counts["asked"] / total_pairs(n),
                "regions": rec.stats["regions"], "U_os": rec.stats["U_os"], "U_us": rec.stats["U_us"], **q,
            })
            pair_rows.append(pd.DataFrame({
                "cycle": c, "u": rec.draw.pairs[:, 0], "v": rec.draw.pairs[:, 1], "pool": rec.draw.pool,
                "pair_type": rec.draw.pair_type, "probability": rec.draw.probability, "answer": rec.stats["answers"],
            }))
            log.info("%s cycle %d: asked %d, NMI %.4f, ARI %.4f, pair F1 %.4f, regions %s", strategy, c,
                     rec.stats["pairs_asked"], q["nmi"], q["ari"], q["pair_f1"], rec.stats["regions"])
        if out_dir is not None and pair_rows:
            pd.concat(pair_rows).to_csv(out_dir / f"pairs-{strategy}.csv", index=False)
    table = pd.DataFrame(rows)
    table.attrs["budget_per_cycle"] = budget
    return table


def _load_labels(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"labels file not found: {p}")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    return np.array([line.strip() for line in p.read_text().splitlines() if line.strip()])


def run_simulation_cli(args, cfg) -> int:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.features:
        if not args.labels:
            raise InputError("--features needs --labels (the ground-truth identity of each row)")
        fp = Path(args.features)
        if not fp.is_file():
            raise InputError(f"features file not found: {fp}")
        x, truth, name = np.load(fp, allow_pickle=False), _load_labels(args.labels), fp.stem
    else:
        from aas_ray.experiment.setup import make_split, prepare_data
        from aas_ray.experiment.zeroshot import dataset_features

        data = prepare_data(cfg)
        feats = dataset_features(cfg, data)
        split = make_split(cfg, data, feats)
        x, truth, name = feats[split.train], data.identities[split.train], cfg.data.name
    out = Path(args.out) if args.out else Path(cfg.output_dir) / f"simulate-{name}"
    out.mkdir(parents=True, exist_ok=True)
    table = simulate(x, truth, cfg, strategies, args.cycles, out)
    table.to_csv(out / "cycles.csv", index=False)
    cols = ["strategy", "cycle", "pairs_asked", "ml_cl_ratio", "utilised_budget", "regions", "U_os", "U_us",
            "nmi", "ari", "pair_f1", "clusters", "outliers"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"dataset {name}: n={x.shape[0]}, budget {table.attrs['budget_per_cycle']} pairs per cycle")
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    log.info("cycle table, asked pairs and annotation journals written to %s", out)
    return 0
