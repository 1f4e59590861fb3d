"""Append-only persistence of oracle answers (docs/method.md §8): a crash loses none of them.

One JSON object per line, flushed and fsynced as each answer arrives. A crash can at
worst leave a torn last line, which loading skips with a warning; damage anywhere
else is an error, because silently dropping answers a person gave is not acceptable.

A person's change of mind is appended too: a ``correction`` record replaces the pair's
earlier answer, a ``retraction`` withdraws it (undo). The history stays as it was written;
:func:`effective` gives the answers that hold now.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from aas_ray.al.constraints import Annotation, Answer, ConstraintStore
from aas_ray.checks import InputError

log = logging.getLogger(__name__)


KINDS = ("answer", "correction", "retraction")


def _record(a: Annotation) -> dict:
    rec = {"u": a.u, "v": a.v, "answer": a.answer.name, "cycle": a.cycle, "source": a.source}
    if a.kind != "answer":
        rec["kind"] = a.kind
    return rec


def effective(records: list[Annotation]) -> list[Annotation]:
    """The answers that hold: per pair its last record, none if that was a retraction; in the
    order those last records were written."""
    last: dict[tuple[int, int], int] = {}
    for i, a in enumerate(records):
        last[(min(a.u, a.v), max(a.u, a.v))] = i
    keep = sorted(last.values())
    return [records[i] for i in keep if records[i].kind != "retraction"]


class AnnotationJournal:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, annotations: list[Annotation]) -> None:
        if not annotations:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        lines = "".join(json.dumps(_record(a)) + "\n" for a in annotations)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash mid-write) so new answers start on a fresh line."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            log.warning("annotation journal %s: dropping a torn last line (%d bytes)", self.path, len(data) - keep)
            f.truncate(keep)

    def read(self) -> list[Annotation]:
        if not self.path.is_file():
            return []
        raw = self.path.read_text(encoding="utf-8").split("\n")
        out = []
        for i, line in enumerate(raw):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                kind = str(rec.get("kind", "answer"))
                if kind not in KINDS:
                    raise ValueError(f"unknown record kind {kind!r}")
                out.append(Annotation(int(rec["u"]), int(rec["v"]), Answer[rec["answer"]],
                                      int(rec.get("cycle", 0)), str(rec.get("source", "oracle")), kind))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
                if i == len(raw) - 1:  # the unterminated last line: a write cut by a crash
                    log.warning("annotation journal %s: ignoring a torn last line", self.path)
                    continue
                raise InputError(f"annotation journal {self.path} line {i + 1} is corrupt: {err}") from None
        return out

    def count(self) -> int:
        """Complete records in the journal (a torn last line is not one)."""
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.endswith(b"\n") and line.strip())

    def load_store(self, n: int, records: list[Annotation] | None = None) -> ConstraintStore:
        """Replay the answers that hold now into a fresh store, contradictions included."""
        store = ConstraintStore(n)
        for a in effective(self.read() if records is None else records):
            store.add(a.u, a.v, a.answer, a.cycle, a.source)
        return store

    def record(self, store: ConstraintStore, pairs, answers, cycle: int, source: str) -> list:
        """Add answers to ``store`` and the journal together; returns contradictions raised."""
        conflicts = []
        start = len(store.annotations)
        for (u, v), ans in zip(pairs, answers):
            c = store.add(int(u), int(v), Answer(int(ans)), cycle, source)
            if c is not None:
                conflicts.append(c)
        self.append(store.annotations[start:])
        return conflicts
