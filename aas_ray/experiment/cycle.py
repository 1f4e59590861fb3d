"""One AL cycle (docs/method.md §3-8, Algorithm 1 step 1), written once for the simulation,
the trainer and the clustering actors.

A cycle proposes pairs with the configured sampler under what is left of its budget, puts
them to the oracle (or, with a person as the oracle, hands them back as *pending*), records
the answers in the constraint store and the journal, and summarises itself in one row:
regions, pool sizes, must-links found per pool, the utilised budget and, in words, what
made the cycle weak when it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import (ConstraintStore, SamplerInput, SimulatedOracle, config_keys, cosine_pair_sim, list_strategies,
                        make_sampler, total_pairs)
from aas_ray.al.constraints import Answer
from aas_ray.cluster import ClusterViews
from aas_ray.experiment.journal import AnnotationJournal

log = logging.getLogger(__name__)

# Strategies that ask an oracle; ``none`` (plain SpCL) and ``supervised`` (the skyline) do not.
SAMPLED = tuple(list_strategies())
# where a pair came from: AAS's two pools, or a baseline's rule (lbas / gbas: a triplet's positive or negative pair)
POOLS = ("os", "us", "random", "nis", "fn", "bound", "near", "pos", "neg")


def pair_similarity(kind: str, views: ClusterViews, x: np.ndarray):
    """sim(u, v) of U_os and Eq. 4-5 (docs/method.md §1): the k-reciprocal Jaccard similarity
    of the view graph, or cosine."""
    return views.graph.pair_sim if kind == "jaccard" else cosine_pair_sim(x)


def sampler_for(al):
    """The sampler of ``al.strategy`` with its parameters from the ``al`` config section."""
    return make_sampler(al.strategy, **{p: getattr(al, key) for p, key in config_keys(al.strategy).items()})


@dataclass
class Pending:
    """Pairs proposed for a person to answer, with what the sampler saw when it chose them."""

    cycle: int
    pairs: np.ndarray
    pool: np.ndarray
    pair_type: np.ndarray
    probability: np.ndarray
    stats: dict = field(default_factory=dict)
    clusters: np.ndarray | None = None  # pseudo-labels when proposed (context for a person)


@dataclass
class CycleOutcome:
    """Either the cycle's row (answers recorded) or the pairs that wait for a person."""

    row: dict | None = None
    pending: Pending | None = None


def pool_yield(pools: np.ndarray, answers: np.ndarray) -> dict:
    """Per pool: pairs asked and must-links found (docs/method.md §13: answers per must-link)."""
    out = {}
    for pool in POOLS:
        sel = pools == pool
        if sel.any():
            out[f"asked_{pool}"] = int(sel.sum())
            out[f"ml_{pool}"] = int((np.asarray(answers)[sel] == int(Answer.MUST_LINK)).sum())
    return out


def explain(views: ClusterViews, stats: dict, budget: int, cfg) -> list[str]:
    """What made this cycle weak, in words a user can act on (docs/method.md §13)."""
    notes = []
    a = views.labels_a
    n = a.size
    if n == 0:
        return notes
    noise = float((a < 0).mean())
    sizes = np.bincount(a[a >= 0]) if (a >= 0).any() else np.zeros(1, int)
    eps = f"eps {views.eps:.2f}"
    auto = cfg.cluster.eps == "auto"
    if noise >= 0.8:
        notes.append(f"view A (DBSCAN, {eps}) leaves {noise:.0%} of the images as noise, so regions are few and "
                     "small; " + ("the features barely group the images: a larger cluster.k1 smooths the "
                                  "k-reciprocal distance" if auto else "a larger cluster.eps, or cluster.eps: auto, "
                                  "usually helps"))
    elif sizes.max() >= 0.5 * n:
        notes.append(f"view A (DBSCAN, {eps}) puts {sizes.max() / n:.0%} of the images into one cluster, so the "
                     "views disagree everywhere inside it; " + (
                         "with this few images the k-reciprocal sets cover much of the data: a smaller cluster.k1 "
                         "usually helps" if auto else "SpCL's eps 0.6 was set for person re-ID sets of ~13k images: "
                         "try cluster.eps: auto, or a smaller cluster.eps or cluster.k1"))
    regions = stats.get("regions")
    if regions == 0:
        notes.append("views A and B agree everywhere: no region of uncertainty, nothing to ask this cycle "
                     "(training goes on with plain SpCL)")
    elif regions == 1:
        notes.append(f"a single region of uncertainty holds {stats.get('largest_region', '?')} images: U_os needs "
                     "two regions and U_us comes from one place; cluster.finch_partition: 0 (FINCH's finest "
                     "partition) or cluster.eps: auto gives more, smaller regions")
    if regions and regions > 1 and stats.get("U_os") == 0:
        why = (" (with the Jaccard similarity, medoids of different regions rarely share k-reciprocal neighbours)"
               if cfg.cluster.similarity == "jaccard" else "")
        notes.append(f"U_os is empty: no two region medoids reach al.s_min = {cfg.al.s_min}{why}; "
                     "cluster.similarity: cosine or a smaller al.s_min allows over-segmentation pairs")
    if regions and stats.get("U_us") == 0:
        notes.append("U_us is empty: inside the regions the views' nearest cross-cluster pairs all agree")
    open_pairs = stats.get("pool_open")
    if budget == 0:
        notes.append("no budget left for this cycle (al.budget_per: run, and earlier cycles spent it)"
                     if cfg.al.budget_per == "run" else "this cycle's budget is 0 pairs")
    elif open_pairs is not None and open_pairs < budget and (regions or "regions" not in stats):
        rest = "are kept for later cycles" if cfg.al.budget_per == "run" else "stay unspent"
        pools = (f" (U_os {stats['U_os']} and U_us {stats['U_us']} pairs before settled ones are dropped)"
                 if cfg.al.strategy == "aas" and "U_os" in stats else "")
        why = ("AAS asks only pairs where the two views disagree, and its pools run dry when they mostly agree"
               if cfg.al.strategy == "aas" else f"{cfg.al.strategy} has no further pair to ask")
        notes.append(f"the open pool holds {open_pairs} pairs{pools}, fewer than the {budget} this cycle may ask: "
                     f"{budget - open_pairs} pairs of budget {rest} ({why})")
    return notes


def budget_use(stats: dict, drawn: int) -> dict:
    """What the cycle could ask, what it asked and the open pool it chose from: ``unspent``
    is the budget left when the pool ran dry (docs/method.md §7)."""
    if "budget" not in stats:
        return {}
    out = {"budget": int(stats["budget"]), "unspent": max(int(stats["budget"]) - int(drawn), 0)}
    if stats.get("pool_open") is not None:
        out["pool_open"] = int(stats["pool_open"])
    return out


class ALCycle:
    """Runs AL cycles for one dataset of ``n`` training images and one strategy.

    ``oracle`` None means a person answers: :meth:`run` then returns the proposed pairs as
    pending, and :meth:`record` takes the answers when they come back. Answers go to the
    ``store`` and, when given, the fsynced ``journal`` (answers) and ``pairs_log`` (CSV of
    every pair asked, with its pool and probability).
    """

    def __init__(self, cfg, n: int, store: ConstraintStore, rng: np.random.Generator,
                 oracle: SimulatedOracle | None = None, journal: AnnotationJournal | None = None,
                 pairs_log: Path | None = None):
        if cfg.al.strategy not in SAMPLED:
            raise ValueError(f"strategy {cfg.al.strategy!r} asks no oracle; AL cycles need one of {SAMPLED}")
        self.cfg = cfg
        self.n = n
        self.store = store
        self.rng = rng
        self.oracle = oracle
        self.journal = journal
        self.pairs_log = Path(pairs_log) if pairs_log else None
        self.sampler = sampler_for(cfg.al)
        self._proposal = None  # the last proposal, which the sampler may summarise once answered

    def budget_left(self, c: int) -> int:
        """What this cycle may still ask: its budget minus the answers already recorded for it
        (a resumed cycle asks only the rest); with ``budget_per: run``, the run's budget minus
        every answer so far."""
        if self.cfg.al.budget_per == "run":
            already = len(self.store.annotations)
        else:
            already = sum(1 for a in self.store.annotations if a.cycle == c)
        return max(self.cfg.al.cycle_budget(self.n) - already, 0)

    def run(self, c: int, x: np.ndarray, views: ClusterViews, cap: int | None = None) -> CycleOutcome:
        """One cycle; ``cap`` limits it to at most that many pairs (a comparison at equal pairs
        asked gives every strategy what the reference strategy asked in the same cycle)."""
        budget = self.budget_left(c) if cap is None else min(self.budget_left(c), int(cap))
        sim = pair_similarity(self.cfg.cluster.similarity, views, x)
        prop = self.sampler.propose(SamplerInput.of_clustering(x, views, sim), self.store, budget, self.rng)
        self._proposal = prop
        d = prop.draw
        stats = dict(prop.stats, budget=budget, notes=explain(views, prop.stats, budget, self.cfg))
        pending = Pending(c, d.pairs, d.pool, d.pair_type, d.probability, stats)
        if self.oracle is None and len(d):
            return CycleOutcome(pending=pending)
        answers = self.oracle.answer(d.pairs) if self.oracle is not None else np.empty(0, np.int64)
        return CycleOutcome(row=self.record(pending, answers, f"simulated:{self.cfg.al.strategy}"))

    def record(self, asked: Pending, answers, source: str) -> dict:
        """Record answers to every pair of ``asked`` and return the cycle's row."""
        self.add(asked.cycle, asked.pairs, answers, source)
        return self.finish(asked)

    def add(self, c: int, pairs, answers, source: str) -> None:
        """Answers into the store and, when there is one, the journal (fsynced)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        answers = np.asarray([int(Answer.parse(a)) for a in answers], dtype=np.int64)
        if self.journal is not None:
            conflicts = self.journal.record(self.store, pairs, answers, c, source)
        else:
            conflicts = [k for (u, v), a in zip(pairs, answers) if (k := self.store.add(int(u), int(v), int(a), c, source))]
        for k in conflicts:
            log.warning("contradictory answer kept but not applied: %s", k)

    def finish(self, asked: Pending) -> dict:
        """Every pair of ``asked`` is answered (by the oracle, a person's CSV or the web page):
        log them with their answers and summarise the cycle."""
        pairs = np.asarray(asked.pairs, dtype=np.int64).reshape(-1, 2)
        answers = self.store.answers_for(pairs)
        if self.pairs_log is not None and len(pairs):
            pd.DataFrame({"cycle": asked.cycle, "u": pairs[:, 0], "v": pairs[:, 1], "pool": asked.pool,
                          "pair_type": asked.pair_type, "probability": asked.probability,
                          "answer": [Answer(int(a)).name for a in answers]}).to_csv(
                self.pairs_log, mode="a", header=not self.pairs_log.exists(), index=False)
        return self.row(asked, answers)

    def row(self, asked: Pending, answers: np.ndarray) -> dict:
        counts = self.store.counts()
        stats = asked.stats
        this_cycle = sum(1 for a in self.store.annotations if a.cycle == asked.cycle)
        row = {"cycle": asked.cycle, **{k: stats[k] for k in ("regions", "U_os", "U_us") if k in stats},
               **pool_yield(np.asarray(asked.pool), answers),
               "pairs_asked": this_cycle, "asked_total": counts["asked"], "must_link": counts["must_link"],
               "cannot_link": counts["cannot_link"], "ml_cl_ratio": counts["must_link"] / max(counts["cannot_link"], 1),
               "utilised_budget": counts["asked"] / total_pairs(self.n), "contradictions": counts["contradictions"],
               **budget_use(stats, len(asked.pairs)), "notes": " | ".join(stats.get("notes", []))}
        if self._proposal is not None:
            row.update(self.sampler.summarise(self._proposal, self.store))
        log.info("AL cycle %d (%s): %d pairs asked, %s regions, |U_os|=%s, |U_us|=%s, utilised %.4f%%", asked.cycle,
                 self.cfg.al.strategy, this_cycle, stats.get("regions", "-"), stats.get("U_os", "-"),
                 stats.get("U_us", "-"), 100 * row["utilised_budget"])
        for note in stats.get("notes", []):
            log.warning("AL cycle %d: %s", asked.cycle, note)
        return row
