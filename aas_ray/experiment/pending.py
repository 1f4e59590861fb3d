"""A cycle's pairs handed to a person and the answers taken back (docs/method.md §8, §10).

The pairs go out as ``pending-cycle-<k>.csv`` (and to the annotation page, which journals
each answer as it is given); they are also kept in the run's state, so a lost file is
written again with the same pairs. Taking the answers back merges both routes: answers the
page journaled, and answers typed into the CSV, each row checked against the pair asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from aas_ray.al import Answer, ConstraintStore
from aas_ray.checks import InputError, labels_array, pair_array
from aas_ray.experiment.cycle import ALCycle, Pending

IMAGES = "images.csv"
CATALOGUE = "catalogue.json"


def write_image_table(run_dir: Path, cat) -> None:
    """The training images a page may show (index, path below the catalogue root, bbox) and
    the root they must stay inside; the run folder never holds the truth."""
    df = pd.DataFrame({"index": np.arange(len(cat)), "image_id": cat.df["image_id"].astype(str),
                       "path": cat.df["path"].astype(str),
                       "bbox": cat.df["bbox"].astype(str) if "bbox" in cat.df.columns else ""})
    df.to_csv(run_dir / IMAGES, index=False)
    (run_dir / CATALOGUE).write_text(json.dumps({"name": cat.name, "root": str(Path(cat.root).resolve())}))



class PersonInTheLoop:
    def __init__(self, run_dir: Path, train_cat, store: ConstraintStore, cycle: ALCycle):
        self.dir = Path(run_dir)
        self.paths = train_cat.abs_paths()
        self.store = store
        self.cycle = cycle

    def path(self, c: int) -> Path:
        return self.dir / f"pending-cycle-{c}.csv"

    def write(self, p: Pending) -> Path:
        path = self.path(p.cycle)
        pd.DataFrame({"u": p.pairs[:, 0], "v": p.pairs[:, 1], "image_u": [str(self.paths[u]) for u in p.pairs[:, 0]],
                      "image_v": [str(self.paths[v]) for v in p.pairs[:, 1]], "pool": p.pool, "pair_type": p.pair_type,
                      "answer": ""}).to_csv(path, index=False)
        return path

    def hand_out(self, p: Pending, state) -> Path:
        """Keep the pairs in ``state`` (the caller saves it) and write them out."""
        state.pending = {"cycle": p.cycle, "pairs": p.pairs.tolist(), "pool": list(map(str, p.pool)),
                         "pair_type": list(map(str, p.pair_type)), "probability": list(map(float, p.probability)),
                         "stats": p.stats}
        if p.clusters is not None:
            np.save(self.dir / f"pending-cycle-{p.cycle}-clusters.npy", p.clusters)
        return self.write(p)

    def pending(self, state) -> Pending:
        return checked_pending(state.pending, len(self.paths), self.dir / "state.json")

    def take_back(self, state) -> dict:
        """The person's answers to the pending cycle into the journal; the cycle's row. ``state``
        forgets the pending pairs (the caller saves it)."""
        p = self.pending(state)
        path = self.path(p.cycle)
        journaled = self.store.answers_for(p.pairs)
        written = read_answers(path, p.pairs, self.paths) if path.is_file() else [None] * len(p.pairs)
        missing, new = [], []
        for i, (have, csv) in enumerate(zip(journaled, written)):
            if have < 0 and csv is None:
                missing.append(i + 2)
            elif have >= 0 and csv is not None and int(csv) != have:
                raise InputError(f"{path} line {i + 2}: says {csv.name} but {Answer(int(have)).name} was recorded for "
                                 "this pair (on the annotation page); correct it there, or leave this cell empty")
            elif have < 0:
                new.append(i)
        if missing:
            raise InputError(f"{path}: lines {missing[:10]}{' ...' if len(missing) > 10 else ''} have no answer yet "
                             "(same / different / unsure)")
        self.cycle.add(p.cycle, p.pairs[new], [written[i] for i in new], "human")
        row = self.cycle.finish(p)
        state.pending = None
        if path.is_file():
            path.rename(path.with_suffix(".answered.csv"))
        return row


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


def awaiting_message(path: Path, run_dir: Path) -> str:
    return (f"the run waits for a person: answer the pairs in {path} ('answer' column: same / different / "
            f"unsure), then continue with: aas-ray run --resume {run_dir}")

