"""The annotation session: a person answering a paused run's pairs (docs/method.md §8, §10),
the state behind the annotation page, one process per run folder.

Every answer goes to the run's journal the moment it is given (fsynced), so closing the
page, killing the server or losing power loses nothing; reopening continues where the
person stopped. Pairs are handed out with a short lease, so two pages (two people) on one
run are not shown the same pair, and an answer to a pair someone else has just answered
is refused rather than recorded twice. A change of mind is appended as a correction (or,
for undo, a retraction); the journal's history is never edited.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import Answer, total_pairs
from aas_ray.al.constraints import Annotation
from aas_ray.checks import InputError
from aas_ray.config import load_config
from aas_ray.experiment.journal import effective
from aas_ray.experiment.run_folder import CONFIG, PAIRS, RunFolder

@dataclass
class Lease:
    client: str
    until: float


class AnnotationSession:
    """The pending cycle of one run folder, as a person answers it."""

    def __init__(self, folder: RunFolder, lease_s: float = 90.0):
        self.folder = RunFolder(folder.dir.resolve())
        self.dir = self.folder.dir
        self.lease_s = lease_s
        self.lock = threading.RLock()
        self.journal = self.folder.journal
        if not self.folder.is_run():
            raise InputError(f"{self.dir} is not a run folder (no {self.folder.state_file.name})")
        self.cfg = load_config(self.folder.file(CONFIG))
        self.root, self.images = self.folder.read_image_table()
        self.leases: dict[int, Lease] = {}
        self.history: dict[str, list[int]] = {}  # per page: pair indices it answered, for undo
        self.reload()

    # ---- state -----------------------------------------------------------------------
    def reload(self) -> None:
        """Read the run's state and journal again (after training moved on, or at start)."""
        with self.lock:
            self.state = self.folder.load_state()
            p = self.folder.pending(self.state, len(self.images)) if self.state.pending else None
            self.cycle = p.cycle if p else None
            self.pairs = p.pairs if p else np.empty((0, 2), np.int64)
            self.pool = p.pool.tolist() if p else []
            self.pair_type = p.pair_type.tolist() if p else []
            self.index = {(int(u), int(v)): i for i, (u, v) in enumerate(self.pairs)}
            self.clusters = self.folder.clusters(self.cycle, len(self.images)) if self.cycle else None
            self.records = self.journal.read()
            self._rebuild()

    def _rebuild(self) -> None:
        self.store = self.folder.constraints(len(self.images), self.records)

    def answers(self) -> np.ndarray:
        return self.store.answers_for(self.pairs) if len(self.pairs) else np.empty(0, np.int64)

    def status(self) -> dict:
        with self.lock:
            answered = int((self.answers() >= 0).sum())
            n = len(self.images)
            budget = self.cfg.al.cycle_budget(n)
            return {"run": self.dir.name, "cycle": self.cycle, "total": int(len(self.pairs)), "answered": answered,
                    "complete": self.cycle is not None and answered == len(self.pairs),
                    "waiting": self.cycle is not None, "asked_total": len(self.store.annotations),
                    "utilised_budget": len(self.store.annotations) / total_pairs(n),
                    "budget": budget, "budget_per": self.cfg.al.budget_per, "finished": self.state.finished,
                    "resume": f"aas-ray run --resume {self.dir}"}

    # ---- pairs -------------------------------------------------------------------------
    def pair(self, i: int) -> dict:
        with self.lock:
            if not 0 <= i < len(self.pairs):
                raise KeyError(i)
            u, v = (int(x) for x in self.pairs[i])
            ans = int(self.answers()[i])
            return {"i": i, "u": u, "v": v, "pool": self.pool[i], "pair_type": self.pair_type[i],
                    "answer": Answer(ans).name if ans >= 0 else None, "total": int(len(self.pairs))}

    def next_pair(self, client: str, after: int | None = None) -> dict | None:
        """The next pair nobody has answered or holds, leased to ``client`` for a while."""
        with self.lock:
            now = time.monotonic()
            open_ = np.flatnonzero(self.answers() < 0)
            if open_.size == 0:
                return None
            start = -1 if after is None else after
            order = np.r_[open_[open_ > start], open_[open_ <= start]]
            for i in order:
                lease = self.leases.get(int(i))
                if lease is None or lease.until < now or lease.client == client:
                    self.leases[int(i)] = Lease(client, now + self.lease_s)
                    return self.pair(int(i))
            return self.pair(int(order[0]))  # all leased elsewhere: show one anyway (answers stay unique)

    def answer(self, i: int, answer: str, client: str, correct: bool = False) -> dict:
        """Record one answer, fsynced before this returns. ``correct`` replaces an earlier answer
        (appended as a correction). Returns what happened and, for a contradiction, the
        answers it conflicts with."""
        with self.lock:
            if self.cycle is None:
                raise InputError("this run waits for no answers")
            if not 0 <= i < len(self.pairs):
                raise KeyError(i)
            ans = Answer.parse(answer)
            u, v = (int(x) for x in self.pairs[i])
            before = int(self.answers()[i])
            if before >= 0 and not correct:
                return {"status": "already", "answer": Answer(before).name, **self.status()}
            kind = "correction" if before >= 0 else "answer"
            rec = Annotation(u, v, ans, self.cycle, f"human:web:{client}"[:64], kind)
            if kind == "correction":
                self.journal.append([rec])
                self.records.append(rec)
                self._rebuild()
                conflict = next((c for c in self.store.contradictions if (c.annotation.u, c.annotation.v) == (u, v)), None)
            else:
                self.journal.append([rec])  # durable first: the page hears back only once it is on disk
                self.records.append(rec)
                conflict = self.store.add(u, v, ans, self.cycle, rec.source)
            self.leases.pop(i, None)
            self.history.setdefault(client, []).append(i)
            out = {"status": "recorded", "answer": ans.name, **self.status()}
            if conflict is not None:
                out["status"] = "contradiction"
                out["conflicts"] = [{"u": a.u, "v": a.v, "answer": a.answer.name, "cycle": a.cycle}
                                    for a in conflict.involved]
            return out

    def undo(self, client: str) -> dict:
        """Withdraw this page's last answer (appended as a retraction); the pair is open again."""
        with self.lock:
            done = self.history.get(client) or []
            while done:
                i = done.pop()
                if int(self.answers()[i]) >= 0:
                    u, v = (int(x) for x in self.pairs[i])
                    rec = Annotation(u, v, Answer.UNSURE, self.cycle, f"human:web:{client}"[:64], "retraction")
                    self.records.append(rec)
                    self.journal.append([rec])
                    self._rebuild()
                    return {"status": "undone", "i": i, **self.status()}
            return {"status": "nothing to undo", **self.status()}

    def context(self, image: int, limit: int = 12) -> list[int]:
        """Other images of ``image``'s pseudo-cluster when the pairs were chosen (asked for only)."""
        with self.lock:
            if self.clusters is None or not 0 <= image < self.clusters.size or self.clusters[image] < 0:
                return []
            same = np.flatnonzero(self.clusters == self.clusters[image])
            return [int(j) for j in same[same != image][:limit]]

    def review(self, cycle: int | None = None, answer: str | None = None, pool: str | None = None) -> list[dict]:
        """Every answer that holds, newest first, with its pool when it was one of this run's pairs."""
        with self.lock:
            pools = {}
            if self.folder.file(PAIRS).is_file():
                log = pd.read_csv(self.folder.file(PAIRS))
                pools = {(int(r.u), int(r.v)): str(r.pool) for r in log.itertuples()}
            for (u, v), i in self.index.items():
                pools[(u, v)] = self.pool[i]
            rows = []
            for a in reversed(effective(self.records)):
                p = pools.get((min(a.u, a.v), max(a.u, a.v)), "")
                if (cycle is not None and a.cycle != cycle) or (answer and a.answer.name != answer.upper()) or \
                        (pool and p != pool):
                    continue
                rows.append({"u": a.u, "v": a.v, "answer": a.answer.name, "cycle": a.cycle, "pool": p,
                             "source": a.source, "kind": a.kind})
            return rows

    def correct(self, u: int, v: int, answer: str, client: str) -> dict:
        """A correction of any answer on record (from the review page)."""
        with self.lock:
            u, v = min(u, v), max(u, v)
            prev = [a for a in effective(self.records) if (min(a.u, a.v), max(a.u, a.v)) == (u, v)]
            if not prev:
                raise InputError(f"no answer on record for pair ({u}, {v})")
            rec = Annotation(u, v, Answer.parse(answer), prev[-1].cycle, f"human:web:{client}"[:64], "correction")
            self.records.append(rec)
            self.journal.append([rec])
            self._rebuild()
            return {"status": "corrected", **self.status()}

    # ---- images --------------------------------------------------------------------------
    def image_path(self, index: int) -> tuple[Path, str]:
        """The file of training image ``index``, which must lie inside the catalogue root."""
        if not 0 <= index < len(self.images):
            raise KeyError(index)
        row = self.images.iloc[index]
        path = (self.root / row["path"]).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise PermissionError(f"image {index} lies outside the catalogue root")
        return path, row["bbox"]
