"""A cycle's pairs handed to a person and the answers taken back (docs/method.md §8, §10).

The pairs go out as ``pending-cycle-<k>.csv`` (and to the annotation page, which journals
each answer as it is given); they are also kept in the run's state, so a lost file is
written again with the same pairs. Taking the answers back merges both routes: answers the
page journaled, and answers typed into the CSV, each row checked against the pair asked.
"""

from __future__ import annotations

from pathlib import Path

from aas_ray.al import Answer, ConstraintStore
from aas_ray.checks import InputError
from aas_ray.experiment.checkpoint import RunState
from aas_ray.experiment.cycle import ALCycle, Pending
from aas_ray.experiment.run_folder import RunFolder


class PersonInTheLoop:
    """A cycle's pairs out to a person through the run folder, and the answers back in."""

    def __init__(self, folder: RunFolder, train_cat, store: ConstraintStore, cycle: ALCycle):
        self.folder = folder
        self.paths = train_cat.abs_paths()
        self.store = store
        self.cycle = cycle

    def hand_out(self, p: Pending, state: RunState) -> Path:
        """Keep the pairs in ``state``, write them out, then save the state; returns the CSV."""
        state.pending = {"cycle": p.cycle, "pairs": p.pairs.tolist(), "pool": list(map(str, p.pool)),
                         "pair_type": list(map(str, p.pair_type)), "probability": list(map(float, p.probability)),
                         "stats": p.stats}
        path = self.folder.write_pending(p, self.paths)
        self.folder.save_state(state)
        return path

    def pending(self, state: RunState) -> Pending:
        return self.folder.pending(state, len(self.paths))

    def has_file(self, c: int) -> bool:
        """Whether cycle ``c``'s pending CSV is still there (a lost one is written again)."""
        return self.folder.pending_file(c).is_file()

    def take_back(self, state: RunState) -> dict:
        """The person's answers to the pending cycle into the journal; the cycle's row. ``state``
        forgets the pending pairs and is saved."""
        p = self.pending(state)
        path = self.folder.pending_file(p.cycle)
        journaled = self.store.answers_for(p.pairs)
        written = self.folder.pending_answers(p, self.paths)
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
        self.folder.mark_answered(p.cycle)
        self.folder.save_state(state)
        return row


def awaiting_message(path: Path, run_dir: Path) -> str:
    return (f"the run waits for a person: answer the pairs in {path} ('answer' column: same / different / "
            f"unsure), then continue with: aas-ray run --resume {run_dir}")

