"""The labels of an epoch (docs/method.md §10, Algorithm 1 steps 1-2): cluster the memory
features, run the AL cycle due before the epoch, refine with NP3 under every answer, keep the
reliable part with the self-paced filter.

With a person as the oracle the cycle's pairs come back as a :class:`Pending` for the loop to
hand out; once the person has answered, the next call takes the answers back and goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from aas_ray.al import ConstraintStore, SimulatedOracle
from aas_ray.cluster import ClusterViews, build_views
from aas_ray.config import Config
from aas_ray.eval import clustering_metrics
from aas_ray.experiment.checkpoint import RunState
from aas_ray.experiment.cycle import SAMPLED, ALCycle, Pending
from aas_ray.experiment.labels import label_diagnostics, refine, training_labels
from aas_ray.experiment.pending import PersonInTheLoop
from aas_ray.experiment.run_folder import PAIRS, RunFolder

log = logging.getLogger(__name__)


@dataclass
class EpochLabels:
    labels: np.ndarray
    metrics: dict


def build_views_local(x: np.ndarray, cfg: Config, need_b: bool) -> ClusterViews:
    """The clustering of the memory features, in this process (the default ``clusterer``)."""
    return build_views(x, **cfg.cluster.view_params(), self_paced=True, need_b=need_b)


class LabelStage:
    """Clusterer, AL cycle (and the person it may wait for), NP3 and the self-paced filter.

    ``cycle`` and ``person`` are None for the strategies that ask nothing; ``rng`` is the
    cycle's sampling generator and ``oracle`` the simulated one (both checkpointed)."""

    def __init__(self, cfg: Config, truth: np.ndarray, store: ConstraintStore, rng: np.random.Generator,
                 oracle: SimulatedOracle, cycle: ALCycle | None, person: PersonInTheLoop | None,
                 clusterer=build_views_local):
        self.cfg = cfg
        self.truth = truth
        self.store = store
        self.rng = rng
        self.oracle = oracle
        self.cycle = cycle
        self.person = person
        self.clusterer = clusterer

    @classmethod
    def build(cls, cfg: Config, truth: np.ndarray, train_cat, folder: RunFolder, store: ConstraintStore
              ) -> "LabelStage":
        """The stage of ``cfg``'s strategy, its answers journaled in ``folder``."""
        rng = np.random.default_rng(cfg.seed)
        oracle = SimulatedOracle(truth, cfg.al.oracle_noise, cfg.seed)
        cycle = person = None
        if cfg.al.strategy in SAMPLED:
            cycle = ALCycle(cfg, len(train_cat), store, rng, oracle if cfg.al.oracle == "simulated" else None,
                            folder.journal, folder.file(PAIRS))
            person = PersonInTheLoop(folder, train_cat, store, cycle)
        return cls(cfg, truth, store, rng, oracle, cycle, person)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "oracle_rng": self.oracle.rng.bit_generator.state}

    def load_state_dict(self, ck: dict) -> None:
        self.rng.bit_generator.state = ck["rng"]
        self.oracle.rng.bit_generator.state = ck["oracle_rng"]

    def cycle_at(self, epoch: int) -> int | None:
        """1-based AL cycle that runs before ``epoch``, if any (epochs 0, every, 2*every, ...)."""
        al = self.cfg.al
        if self.cycle is None or epoch % al.every:
            return None
        c = epoch // al.every + 1
        return c if c <= al.cycles else None

    def for_epoch(self, epoch: int, x: np.ndarray, state: RunState) -> EpochLabels | Pending:
        """The labels of ``epoch`` from the memory features ``x``, or the cycle's pairs when they
        wait for a person. ``state`` keeps the cycle rows and the self-paced threshold."""
        cfg = self.cfg
        if cfg.al.strategy == "supervised":
            # The skyline: every training image labelled with its true identity, no clustering.
            return EpochLabels(self.true_labels(), {})
        c = self.cycle_at(epoch)
        done = c is None or any(r["cycle"] == c for r in state.cycles)
        metrics: dict = {}
        if c is not None and state.pending and state.pending["cycle"] == c:
            pending = self.person.pending(state)
            if not self.person.has_file(c) and (self.store.answers_for(pending.pairs) < 0).any():
                log.warning("%s is missing: writing the same pairs again", self.person.folder.pending_file(c))
                return pending
            row = self.person.take_back(state)
            keep_cycle_row(state, row)
            metrics.update(cycle_metrics(row))
            done = True
        views = self.clusterer(x, cfg, not done)
        # A cycle cut short by a crash has no row yet: it runs again and asks only the rest.
        if not done:
            outcome = self.cycle.run(c, x, views)
            if outcome.pending is not None:
                # what the person may ask to see next to a pair: each side's pseudo-cluster now
                outcome.pending.clusters = refine(views.labels_a, self.store, x)
                return outcome.pending
            keep_cycle_row(state, outcome.row)
            metrics.update(cycle_metrics(outcome.row))
        labels, refined, state.indep_thres, stats = training_labels(views, self.store, x, state.indep_thres)
        metrics.update(view_metrics(views, stats, clustering_metrics(refined, self.truth), self.store))
        metrics.update(label_diagnostics(views.labels_a, self.store, refined, labels, self.truth))
        return EpochLabels(labels, metrics)

    def true_labels(self) -> np.ndarray:
        return np.unique(self.truth, return_inverse=True)[1].astype(np.int64)

    def final_labels(self, x: np.ndarray) -> np.ndarray:
        """The individuals at the end (docs/method.md §16): the final memory features clustered
        as for one more epoch and NP3-refined with every answer (the skyline: the truth)."""
        if self.cfg.al.strategy == "supervised":
            return self.true_labels()
        return refine(self.clusterer(x, self.cfg, False).labels_a, self.store, x)


def keep_cycle_row(state: RunState, row: dict) -> None:
    state.cycles = [r for r in state.cycles if r["cycle"] != row["cycle"]] + [row]


def view_metrics(views: ClusterViews, stats: dict, q: dict, store: ConstraintStore) -> dict:
    """The epoch's views, their NP3-refined labels scored against the truth (``q``) and the
    constraints so far, as ``views/*`` and ``oracle/*`` metrics."""
    return {"views/clusters": stats["clusters"], "views/instances": stats["instances"],
            "views/demoted": stats["demoted"], "views/outliers": q["outliers"],
            "views/eps": views.eps, "views/knn_recall": views.knn_recall,
            "views/nmi": q["nmi"], "views/ari": q["ari"],
            "views/pair_precision": q["pair_precision"], "views/pair_recall": q["pair_recall"],
            "views/pair_f1": q["pair_f1"], "oracle/constraints_ml": int(store.must_links().shape[0]),
            "oracle/constraints_cl": int(store.cannot_links().shape[0])}


def cycle_metrics(row: dict) -> dict:
    """A cycle row as ``oracle/*`` metrics (numbers only; the notes go to the log and cycles.csv)."""
    return {f"oracle/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
