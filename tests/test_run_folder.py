"""The run folder: its state records how many answers the journal held, a journal that lost
answers is refused, a pending cycle goes out and comes back through its files, and the
files a restart needs are copied together."""

import numpy as np
import pandas as pd
import pytest

from aas_ray.al import Answer
from aas_ray.al.constraints import Annotation
from aas_ray.checks import InputError
from aas_ray.experiment.checkpoint import RunState
from aas_ray.experiment.cycle import Pending
from aas_ray.experiment.run_folder import DURABLE, RunFolder


def answered(folder: RunFolder, k: int) -> None:
    folder.journal.append([Annotation(i, i + 1, Answer.MUST_LINK, 1, "oracle") for i in range(k)])


def test_saved_state_records_the_journal_and_a_shorter_journal_is_refused(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.dir.mkdir()
    assert not folder.is_run() and folder.load_state() == RunState()
    answered(folder, 3)
    state = RunState(epoch_done=2)
    folder.save_state(state)
    assert folder.is_run() and folder.load_state().answers == 3 and folder.load_state().epoch_done == 2
    store = folder.constraints(10, state=folder.load_state())
    assert store.must_links().shape == (3, 2)
    lines = folder.journal.path.read_text().splitlines(keepends=True)
    folder.journal.path.write_text("".join(lines[:2]))  # an answer lost
    with pytest.raises(InputError, match=r"holds 2 answers but the run's last checkpoint recorded 3"):
        folder.constraints(10, state=folder.load_state())
    assert folder.constraints(10).must_links().shape == (2, 2)  # without a state to check against: what is there


def test_a_pending_cycle_goes_out_and_its_answers_come_back(tmp_path):
    folder = RunFolder(tmp_path)
    paths = [f"/img/{i}.jpg" for i in range(6)]
    p = Pending(2, np.array([[0, 1], [2, 5]]), np.array(["A", "B"]), np.array(["ml", "cl"]), np.array([0.5, 0.25]),
                clusters=np.array([0, 0, 1, 1, -1, 1]))
    path = folder.write_pending(p, paths)
    assert path == folder.pending_file(2) and path.name == "pending-cycle-2.csv"
    assert folder.clusters(2, 6).tolist() == [0, 0, 1, 1, -1, 1] and folder.clusters(3, 6) is None
    assert folder.pending_answers(p, paths) == [None, None]
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[1, "answer"] = "different"
    df.to_csv(path, index=False)
    assert folder.pending_answers(p, paths) == [None, Answer.CANNOT_LINK]
    df.loc[0, "image_u"] = "/img/elsewhere.jpg"
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match="line 2: the row was changed"):
        folder.pending_answers(p, paths)
    folder.mark_answered(2)
    assert not path.exists() and (tmp_path / "pending-cycle-2.answered.csv").is_file()
    assert folder.pending_answers(p, paths) == [None, None]  # the file gone: nothing typed in
    np.save(folder.clusters_file(2), np.zeros(4, dtype=np.int64))  # not one label per training image
    with pytest.raises(InputError, match="has 4 entries but there are 6 images"):
        folder.clusters(2, 6)


def test_the_durable_files_are_copied_together(tmp_path):
    src, dst = RunFolder(tmp_path / "a"), RunFolder(tmp_path / "b")
    src.dir.mkdir()
    dst.dir.mkdir()
    for name in DURABLE[:-1]:
        src.file(name).write_text(name)
    (src.dir / "weights.safetensors").write_text("not needed for a restart")
    src.copy_durable(dst.dir)
    assert sorted(p.name for p in dst.dir.iterdir()) == sorted(DURABLE[:-1])
    assert all(dst.file(name).read_text() == name for name in DURABLE[:-1])
