"""A run folder and its files: the one place their names are written (docs/method.md §8, §10).

What a run keeps between processes lives here: ``state.json`` (the :class:`RunState`),
``checkpoint.pt``, the answer journal ``annotations.jsonl`` and the log of the pairs asked
``pairs.csv`` (together the durable files a restart needs), the config and split it was
started with, the images a page may show, and the files of a cycle waiting for a person:
``pending-cycle-<k>.csv`` (the pairs, with an ``answer`` column) and
``pending-cycle-<k>-clusters.npy`` (each side's pseudo-cluster when the pairs were chosen).

Everything read back is checked against the run (the pairs asked, the number of training
images): a damaged or edited file is named in a one-line error, never an index error deep in
the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import Answer, ConstraintStore
from aas_ray.al.constraints import Annotation
from aas_ray.checks import InputError, labels_array, pair_array
from aas_ray.experiment.checkpoint import RunState
from aas_ray.experiment.cycle import Pending
from aas_ray.experiment.individuals import INDIVIDUALS, OPEN_SET
from aas_ray.experiment.journal import AnnotationJournal

STATE = "state.json"
CHECKPOINT = "checkpoint.pt"
JOURNAL = "annotations.jsonl"
PAIRS = "pairs.csv"
CONFIG = "config.yaml"
SPLIT = "split.csv"
IMAGES = "images.csv"
CATALOGUE = "catalogue.json"
CYCLES = "cycles.csv"
EVALS = "evals.csv"
WEIGHTS = "weights.safetensors"
MAP_VS_BUDGET = "map_vs_budget.png"
# What a restart needs: a run resumes from these alone.
DURABLE = (CHECKPOINT, STATE, JOURNAL, PAIRS)
# What a finished run hands its tracker.
ARTIFACTS = (CONFIG, SPLIT, PAIRS, JOURNAL, CYCLES, EVALS, MAP_VS_BUDGET, WEIGHTS, INDIVIDUALS, OPEN_SET)


class RunFolder:
    """One run's folder: its files' paths, its state, its journal and its pending cycle."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        self.journal = AnnotationJournal(self.dir / JOURNAL)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.dir)!r})"

    def file(self, name: str) -> Path:
        """The path of one of the run's files (the module's constants name them)."""
        return self.dir / name

    @property
    def state_file(self) -> Path:
        return self.dir / STATE

    @property
    def checkpoint_file(self) -> Path:
        return self.dir / CHECKPOINT

    def is_run(self) -> bool:
        """Whether the folder holds a run (its state)."""
        return self.state_file.is_file()

    @classmethod
    def under(cls, root: Path) -> list["RunFolder"]:
        """The run folders directly under ``root``."""
        return [cls(state.parent) for state in Path(root).glob(f"*/{STATE}")]

    # ---- state and journal ----------------------------------------------------------
    def load_state(self) -> RunState:
        """The run's state (a fresh one when there is none yet)."""
        return RunState.load(self.state_file)

    def save_state(self, state: RunState) -> None:
        """``state``, with the number of answers the journal holds now, replaced atomically."""
        state.answers = self.journal.count()
        state.save(self.state_file)

    def constraints(self, n: int, records: list[Annotation] | None = None,
                    state: RunState | None = None) -> ConstraintStore:
        """The answers that hold now in a fresh store of ``n`` images, replayed from the journal
        (or from ``records``, read from it). With ``state``, a journal holding fewer answers
        than the state recorded is refused: answers were lost."""
        if records is None:
            records = self.journal.read()
        if state is not None and len(records) < state.answers:
            raise InputError(
                f"{self.journal.path} holds {len(records)} answers but the run's last checkpoint "
                f"recorded {state.answers}: answers were lost (a damaged or truncated journal); restore "
                "the journal from a backup before resuming")
        return self.journal.load_store(n, records)

    def copy_durable(self, to: Path) -> None:
        """The files a restart needs (those there are) into the folder ``to``."""
        for name in DURABLE:
            if (self.dir / name).exists():
                shutil.copy2(self.dir / name, Path(to) / name)

    # ---- the cycle waiting for a person ---------------------------------------------
    def pending_file(self, c: int) -> Path:
        return self.dir / f"pending-cycle-{c}.csv"

    def clusters_file(self, c: int) -> Path:
        return self.dir / f"pending-cycle-{c}-clusters.npy"

    def pending(self, state: RunState, n: int) -> Pending:
        """The pending cycle ``state`` holds, checked against the ``n`` training images."""
        return checked_pending(state.pending, n, self.state_file)

    def write_pending(self, p: Pending, paths: list) -> Path:
        """The pending cycle's pairs (``paths``: the training images' files) as the CSV a person
        answers, and its pseudo-clusters when it has them; returns the CSV's path."""
        if p.clusters is not None:
            np.save(self.clusters_file(p.cycle), p.clusters)
        path = self.pending_file(p.cycle)
        pd.DataFrame({"u": p.pairs[:, 0], "v": p.pairs[:, 1], "image_u": [str(paths[u]) for u in p.pairs[:, 0]],
                      "image_v": [str(paths[v]) for v in p.pairs[:, 1]], "pool": p.pool, "pair_type": p.pair_type,
                      "answer": ""}).to_csv(path, index=False)
        return path

    def pending_answers(self, p: Pending, paths: list) -> list[Answer | None]:
        """The answers typed into the pending cycle's CSV (None where a row is empty, or for every
        pair when the file is gone), every row checked against the pair asked."""
        path = self.pending_file(p.cycle)
        return read_answers(path, p.pairs, paths) if path.is_file() else [None] * len(p.pairs)

    def mark_answered(self, c: int) -> None:
        """The pending CSV of cycle ``c``, once imported, renamed ``*.answered.csv``."""
        path = self.pending_file(c)
        if path.is_file():
            path.rename(path.with_suffix(".answered.csv"))

    def clusters(self, c: int, n: int) -> np.ndarray | None:
        """The pseudo-clusters saved with pending cycle ``c`` (None when there are none)."""
        path = self.clusters_file(c)
        return load_clusters(path, n) if path.is_file() else None

    # ---- the images a page may show ----------------------------------------------------
    def write_image_table(self, cat) -> None:
        """The training images a page may show (index, path below the catalogue root, bbox) and
        the root they must stay inside; the run folder never holds the truth."""
        df = pd.DataFrame({"index": np.arange(len(cat)), "image_id": cat.df["image_id"].astype(str),
                           "path": cat.df["path"].astype(str),
                           "bbox": cat.df["bbox"].astype(str) if "bbox" in cat.df.columns else ""})
        df.to_csv(self.dir / IMAGES, index=False)
        (self.dir / CATALOGUE).write_text(json.dumps({"name": cat.name, "root": str(Path(cat.root).resolve())}))

    def read_image_table(self) -> tuple[Path, pd.DataFrame]:
        """The catalogue root and the table of :meth:`write_image_table`."""
        cat = json.loads((self.dir / CATALOGUE).read_text()) if (self.dir / CATALOGUE).is_file() else None
        if cat is None or not (self.dir / IMAGES).is_file():
            raise InputError(f"{self.dir} lists no images to show ({IMAGES}); it was made by an older version: "
                             "answer its pending CSV instead")
        return Path(cat["root"]), pd.read_csv(self.dir / IMAGES, keep_default_na=False,
                                              dtype={"path": str, "bbox": str})


def checked_pending(d: dict, n: int, where: Path) -> Pending:
    """The pending cycle a run's state holds, every field checked against the ``n`` training
    images: a damaged state file is named, never an index error deep in the run."""
    try:
        pairs = pair_array(d["pairs"], n, f"{where}: the pending pairs")
        fields = {k: np.asarray(d[k]) for k in ("pool", "pair_type", "probability")}
        for k, v in fields.items():
            if v.ndim != 1 or len(v) != len(pairs):
                raise InputError(f"{where}: the pending '{k}' holds {v.size} entries for {len(pairs)} pairs")
        return Pending(int(d["cycle"]), pairs, fields["pool"].astype(str), fields["pair_type"].astype(str),
                       fields["probability"].astype(float), dict(d.get("stats") or {}))
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{where}: the pending cycle is damaged ({type(err).__name__}: {err})") from None


def load_clusters(path: Path, n: int) -> np.ndarray:
    """The pseudo-clusters saved with a pending cycle: one integer label per training image."""
    try:
        c = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path} is not a numeric .npy array of cluster labels ({err})") from None
    if not np.issubdtype(c.dtype, np.integer) or c.ndim != 1:
        raise InputError(f"{path} holds a {c.dtype} array of shape {c.shape}, not one integer cluster label per image")
    return labels_array(c, n, name=str(path))


def read_answers(path: Path, pairs: np.ndarray, paths: list) -> list[Answer | None]:
    """The answers of a pending file (None where a row is empty), every row checked against
    the pairs asked."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path} cannot be read as CSV: {err}") from None
    need = {"u", "v", "image_u", "image_v", "answer"}
    if need - set(df.columns):
        raise InputError(f"{path} lacks the column(s) {sorted(need - set(df.columns))}")
    if len(df) != len(pairs):
        raise InputError(f"{path} has {len(df)} rows but {len(pairs)} pairs were asked; do not add or delete rows")
    answers = []
    for i, r in df.iterrows():
        line = i + 2  # the header is line 1
        try:
            u, v = int(r["u"]), int(r["v"])
        except ValueError:
            raise InputError(f"{path} line {line}: u, v must be the image numbers written there") from None
        pu, pv = int(pairs[i, 0]), int(pairs[i, 1])
        if (u, v) != (pu, pv) or r["image_u"] != str(paths[pu]) or r["image_v"] != str(paths[pv]):
            raise InputError(f"{path} line {line}: the row was changed (asked: {pu}, {pv} = {paths[pu]}, "
                             f"{paths[pv]}); only the 'answer' column may be edited")
        if not r["answer"].strip():
            answers.append(None)
            continue
        try:
            answers.append(Answer.parse(r["answer"]))
        except InputError as err:
            raise InputError(f"{path} line {line}: {err}") from None
    return answers
