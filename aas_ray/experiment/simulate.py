"""Embedding-only AL: cycles on frozen features with the simulated oracle (docs/method.md §12).

The fast path for sensitivity studies: no training, so one cycle costs one NP3 and one
sampling; the views are built once and shared by every strategy. Each strategy gets the
same views, the same per-cycle budget and the same seed, and runs the same
:class:`~aas_ray.experiment.cycle.ALCycle` as training does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import ConstraintStore, SimulatedOracle
from aas_ray.checks import InputError, unit_features
from aas_ray.cluster import ClusterViews, build_views
from aas_ray.eval import clustering_metrics
from aas_ray.experiment.journal import AnnotationJournal
from aas_ray.experiment.cycle import SAMPLED, ALCycle
from aas_ray.experiment.labels import label_diagnostics, refine

log = logging.getLogger(__name__)


def quality(views: ClusterViews, store: ConstraintStore, x: np.ndarray, truth: np.ndarray) -> dict:
    """NP3-refined view A against the truth, and the pair quality of each stage."""
    refined = refine(views.labels_a, store, x)
    return {**clustering_metrics(refined, truth), **label_diagnostics(views.labels_a, store, refined, None, truth)}


def simulate(x: np.ndarray, truth: np.ndarray, cfg, strategies=("aas", "random"), cycles: int | None = None,
             out_dir: Path | None = None, views: ClusterViews | None = None,
             pairs_of: str | None = None) -> pd.DataFrame:
    """Per strategy and cycle: pseudo-label quality after NP3, regions, pools, yields, budget.

    ``none`` is the reference (view A with no answers). With ``out_dir`` each strategy's
    answers (``annotations-<s>.jsonl``) and asked pairs (``pairs-<s>.csv``) are written there.
    ``pairs_of`` names a strategy that runs first; every other strategy then asks, in each
    cycle, at most as many pairs as it did: the comparison at equal pairs asked, for a
    strategy whose pools run dry below the budget (docs/method.md §7).
    """
    x = unit_features(x)
    truth = np.asarray(truth)
    if truth.size != x.shape[0]:
        raise InputError(f"{x.shape[0]} feature rows but {truth.size} labels")
    if np.unique(truth).size < 2:
        raise InputError("simulation needs at least 2 identities in the ground truth")
    bad = [s for s in strategies if s not in (*SAMPLED, "none")]
    if bad:
        raise InputError(f"strategy {bad[0]!r} cannot be simulated on frozen features; use one of "
                         f"{(*SAMPLED, 'none')} (the supervised skyline needs training: aas-ray run)")
    if pairs_of is not None and (pairs_of not in strategies or pairs_of == "none"):
        raise InputError(f"--pairs-of {pairs_of!r} must be one of the sampling strategies compared, "
                         f"{tuple(s for s in strategies if s != 'none')}")
    if pairs_of is not None:
        strategies = [pairs_of, *(s for s in strategies if s != pairs_of)]
    n = x.shape[0]
    cycles = cfg.al.cycles if cycles is None else cycles
    views = views or build_views(x, **cfg.cluster.view_params())
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)  # only once the inputs have passed
    rows = []
    caps: dict[int, int] = {}
    for strategy in strategies:
        store = ConstraintStore(n)
        rows.append({"strategy": strategy, "cycle": 0, "pairs_asked": 0, "must_link": 0, "cannot_link": 0,
                     "utilised_budget": 0.0, **quality(views, store, x, truth)})
        if strategy == "none":
            continue
        one = cfg.model_copy(deep=True)
        one.al.strategy = strategy
        journal = pairs_log = None
        if out_dir is not None:
            journal = AnnotationJournal(out_dir / f"annotations-{strategy}.jsonl")
            pairs_log = out_dir / f"pairs-{strategy}.csv"
            for stale in (journal.path, pairs_log):
                stale.unlink(missing_ok=True)
        al = ALCycle(one, n, store, np.random.default_rng(cfg.seed),
                     SimulatedOracle(truth, cfg.al.oracle_noise, cfg.seed), journal, pairs_log)
        for c in range(1, cycles + 1):
            row = al.run(c, x, views, caps.get(c)).row
            if strategy == pairs_of:
                caps[c] = row["pairs_asked"]
            q = quality(views, store, x, truth)
            rows.append({"strategy": strategy, **row, **q})
            log.info("%s cycle %d: asked %d, NMI %.4f, ARI %.4f, pair F1 %.4f", strategy, c, row["pairs_asked"],
                     q["nmi"], q["ari"], q["pair_f1"])
    table = pd.DataFrame(rows)
    table.attrs["budget_per_cycle"] = cfg.al.cycle_budget(n)
    table.attrs["pairs_of"] = pairs_of
    return table


def load_features(features: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (.npy, n x d) and ground-truth identities (.npy, or one label per line)."""
    fp, lp = Path(features), Path(labels)
    for p, what in ((fp, "features"), (lp, "labels")):
        if not p.is_file():
            raise InputError(f"{what} file not found: {p}")
    x = _load_npy(fp, "features (n, d)")
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{fp} holds {x.dtype} values, not numbers; features must be a numeric (n, d) array")
    if lp.suffix == ".npy":
        y = _load_npy(lp, "labels")
    else:
        y = np.array([line.strip() for line in lp.read_text().splitlines() if line.strip()])
    return x, y


def _load_npy(path: Path, what: str) -> np.ndarray:
    """An array saved with ``numpy.save``, never unpickled; anything else is named."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise InputError(f"{path} is not a .npy file (it starts with {magic!r}); save the {what} with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{path} is not a plain .npy array of {what}: {err}") from None
