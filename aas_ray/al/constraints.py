"""The constraint store (docs/method.md §8): must-links closed by union-find, cannot-links between
ML components, implied answers, and contradictions reported with the answers involved.

Pure and in memory; the append-only journal that persists it lives in the experiment
layer (``aas_ray.experiment.journal``), which replays answers through :meth:`add`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntEnum

import networkx as nx
import numpy as np

from aas_ray.checks import InputError

log = logging.getLogger(__name__)


class Answer(IntEnum):
    CANNOT_LINK = 0
    MUST_LINK = 1
    UNSURE = 2

    @classmethod
    def parse(cls, value) -> "Answer":
        if isinstance(value, Answer):
            return value
        key = str(value).strip().lower().replace("-", "_")
        aliases = {
            "ml": cls.MUST_LINK, "must_link": cls.MUST_LINK, "same": cls.MUST_LINK, "1": cls.MUST_LINK,
            "yes": cls.MUST_LINK, "cl": cls.CANNOT_LINK, "cannot_link": cls.CANNOT_LINK,
            "different": cls.CANNOT_LINK, "0": cls.CANNOT_LINK, "no": cls.CANNOT_LINK,
            "unsure": cls.UNSURE, "2": cls.UNSURE, "?": cls.UNSURE, "skip": cls.UNSURE,
        }
        if key not in aliases:
            raise InputError(f"unknown answer {value!r}; use same/different/unsure (or ML/CL)")
        return aliases[key]


@dataclass(frozen=True)
class Annotation:
    u: int
    v: int
    answer: Answer
    cycle: int = 0
    source: str = "oracle"
    # "answer"; or, in a journal, "correction" (replaces the pair's earlier answer) or
    # "retraction" (withdraws it): a person's changes are appended, never edited in place.
    kind: str = "answer"


@dataclass
class Contradiction:
    """An answer that conflicts with earlier ones; it is recorded but not applied."""

    annotation: Annotation
    involved: list[Annotation] = field(default_factory=list)

    def __str__(self) -> str:
        chain = "; ".join(f"{a.answer.name}({a.u},{a.v})" for a in self.involved)
        return f"{self.annotation.answer.name}({self.annotation.u},{self.annotation.v}) contradicts {chain}"


class ContradictionError(InputError):
    def __init__(self, contradiction: Contradiction):
        super().__init__(f"contradictory annotations: {contradiction}")
        self.contradiction = contradiction


class ConstraintStore:
    """All answers for one dataset of ``n`` images, in arrival order.

    A contradicting answer is kept in :attr:`annotations` and :attr:`contradictions`
    (so nothing a person answered is lost) but does not change the constraint graph:
    the earlier answers win until someone resolves the conflict.
    """

    def __init__(self, n: int):
        if n < 1:
            raise InputError("a constraint store needs at least one image")
        self.n = int(n)
        self.annotations: list[Annotation] = []
        self.contradictions: list[Contradiction] = []
        self._parent = np.arange(self.n, dtype=np.int64)
        self._cl: dict[int, set[int]] = {}
        self._ml_graph = nx.Graph()
        self._cl_answers: dict[tuple[int, int], Annotation] = {}
        self._ml_answers: dict[tuple[int, int], Annotation] = {}
        self._asked: set[tuple[int, int]] = set()
        self._answer: dict[tuple[int, int], Answer] = {}

    # --- union-find -----------------------------------------------------------------
    def _find(self, i: int) -> int:
        root = i
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[i] != root:
            self._parent[i], i = root, self._parent[i]
        return int(root)

    def roots(self) -> np.ndarray:
        """ML component of every image (vectorised path halving to a fixed point)."""
        p = self._parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p.copy()
            p = q
            self._parent = p

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self._parent[rb] = ra
        moved = self._cl.pop(rb, set())
        for other in moved:
            peers = self._cl[other]
            peers.discard(rb)
            peers.add(ra)
        self._cl.setdefault(ra, set()).update(moved)

    # --- answers ----------------------------------------------------------------------
    def _check_pair(self, u: int, v: int) -> tuple[int, int]:
        u, v = int(u), int(v)
        if not (0 <= u < self.n and 0 <= v < self.n):
            raise InputError(f"pair ({u}, {v}) is outside the {self.n} images of this dataset")
        if u == v:
            raise InputError(f"pair ({u}, {v}) pairs an image with itself")
        return (u, v) if u < v else (v, u)

    def _ml_path(self, a: int, b: int) -> list[Annotation]:
        if a == b:
            return []
        nodes = nx.shortest_path(self._ml_graph, a, b)
        return [self._ml_answers[tuple(sorted(e))] for e in zip(nodes[:-1], nodes[1:])]

    def _find_contradiction(self, ann: Annotation) -> Contradiction | None:
        ru, rv = self._find(ann.u), self._find(ann.v)
        if ann.answer == Answer.CANNOT_LINK and ru == rv:
            return Contradiction(ann, self._ml_path(ann.u, ann.v))
        if ann.answer == Answer.MUST_LINK and rv in self._cl.get(ru, ()):
            for (a, b), cl in self._cl_answers.items():
                ra, rb = self._find(a), self._find(b)
                if {ra, rb} == {ru, rv}:
                    near_u, near_v = (a, b) if ra == ru else (b, a)
                    return Contradiction(ann, self._ml_path(ann.u, near_u) + [cl] + self._ml_path(near_v, ann.v))
        return None

    def add(self, u: int, v: int, answer, cycle: int = 0, source: str = "oracle", strict: bool = False) -> Contradiction | None:
        """Record one answer. Returns the contradiction it raised, if any (``strict`` raises it)."""
        u, v = self._check_pair(u, v)
        ann = Annotation(u, v, Answer.parse(answer), int(cycle), str(source))
        conflict = self._find_contradiction(ann)
        if conflict is not None and strict:
            raise ContradictionError(conflict)
        self.annotations.append(ann)
        self._asked.add((u, v))
        self._answer[(u, v)] = ann.answer
        if conflict is not None:
            self.contradictions.append(conflict)
            log.warning("contradictory annotation kept but not applied: %s", conflict)
            return conflict
        if ann.answer == Answer.MUST_LINK:
            self._ml_answers.setdefault((u, v), ann)
            self._ml_graph.add_edge(u, v)
            self._union(u, v)
        elif ann.answer == Answer.CANNOT_LINK:
            self._cl_answers.setdefault((u, v), ann)
            ru, rv = self._find(u), self._find(v)
            self._cl.setdefault(ru, set()).add(rv)
            self._cl.setdefault(rv, set()).add(ru)
        return None

    # --- queries ----------------------------------------------------------------------
    def _keys(self, pairs: np.ndarray) -> np.ndarray:
        p = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        return p[:, 0] * self.n + p[:, 1]

    def asked(self, pairs: np.ndarray) -> np.ndarray:
        """Whether each pair has been put to the oracle already (any answer, unsure too)."""
        if not self._asked:
            return np.zeros(len(pairs), dtype=bool)
        done = self._keys(np.array(sorted(self._asked)))
        return np.isin(self._keys(pairs), done)

    def answers_for(self, pairs: np.ndarray) -> np.ndarray:
        """The recorded answer of each pair (an :class:`Answer` value), -1 when never answered."""
        pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        return np.array([int(self._answer.get((int(u), int(v)), -1)) for u, v in pairs], dtype=np.int64)

    def implied(self, pairs: np.ndarray) -> np.ndarray:
        """Per pair: 1 = must-link implied, 0 = cannot-link implied, -1 = unknown.

        ML is transitive; CL(a, b) and ML(b, c) imply CL(a, c).
        """
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        out = np.full(pairs.shape[0], -1, dtype=np.int8)
        if pairs.shape[0] == 0:
            return out
        r = self.roots()
        ru, rv = r[pairs[:, 0]], r[pairs[:, 1]]
        out[ru == rv] = 1
        cl_roots = [(a, b) for a, peers in self._cl.items() for b in peers if a < b]
        if cl_roots:
            cl_keys = np.array([a * self.n + b for a, b in cl_roots], dtype=np.int64)
            lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
            out[np.isin(lo * self.n + hi, cl_keys)] = 0
        return out

    def open_pairs(self, pairs: np.ndarray) -> np.ndarray:
        """Mask of pairs still worth asking: never asked and not implied (docs/method.md §6)."""
        return ~self.asked(pairs) & (self.implied(pairs) < 0)

    def ml_closure_labels(self) -> np.ndarray:
        """The must-link closure as a clustering: one id per ML component of two or more
        images, -1 for images no must-link touches."""
        r = self.roots()
        sizes = np.bincount(r, minlength=self.n)
        return np.where(sizes[r] > 1, r, -1)

    def must_links(self) -> np.ndarray:
        """Applied ML answers as an (m, 2) array."""
        return np.array(sorted(self._ml_answers), dtype=np.int64).reshape(-1, 2)

    def cannot_links(self) -> np.ndarray:
        """Applied CL answers as an (m, 2) array."""
        return np.array(sorted(self._cl_answers), dtype=np.int64).reshape(-1, 2)

    def counts(self) -> dict[str, int]:
        kinds = [a.answer for a in self.annotations]
        return {
            "asked": len(self.annotations),
            "must_link": kinds.count(Answer.MUST_LINK),
            "cannot_link": kinds.count(Answer.CANNOT_LINK),
            "unsure": kinds.count(Answer.UNSURE),
            "contradictions": len(self.contradictions),
        }
