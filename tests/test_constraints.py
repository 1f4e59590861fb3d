import numpy as np
import pytest

from aas_ray.al import Answer, ConstraintStore, ContradictionError, SimulatedOracle
from aas_ray.checks import InputError
from aas_ray.experiment.journal import AnnotationJournal


def test_implied_answers():
    s = ConstraintStore(6)
    s.add(0, 1, "ML")
    s.add(1, 2, "same")
    s.add(2, 3, "CL")
    s.add(4, 5, "unsure")
    imp = s.implied(np.array([[0, 2], [0, 3], [1, 3], [3, 4], [4, 5]]))
    assert imp.tolist() == [1, 0, 0, -1, -1]
    # CL(a,b) and ML(b,c) => CL(a,c) also when the ML arrives after the CL.
    s.add(3, 4, "ML")
    assert s.implied(np.array([[0, 4]])).tolist() == [0]
    assert s.asked(np.array([[5, 4], [0, 5]])).tolist() == [True, False]
    assert s.open_pairs(np.array([[0, 4], [0, 5], [4, 5]])).tolist() == [False, True, False]


def test_contradiction_is_reported_with_answers_and_kept():
    s = ConstraintStore(4)
    s.add(0, 1, Answer.MUST_LINK)
    s.add(1, 2, Answer.MUST_LINK)
    c = s.add(0, 2, Answer.CANNOT_LINK)
    assert c is not None
    assert [(a.u, a.v) for a in c.involved] == [(0, 1), (1, 2)]
    assert len(s.annotations) == 3 and s.contradictions == [c]
    assert s.cannot_links().shape == (0, 2)  # not applied
    s.add(2, 3, "CL")
    c2 = s.add(0, 3, "ML")
    assert c2 is not None and any(a.answer == Answer.CANNOT_LINK for a in c2.involved)
    with pytest.raises(ContradictionError, match="contradicts"):
        s.add(1, 3, "ML", strict=True)


def test_bad_pairs_and_answers():
    s = ConstraintStore(3)
    with pytest.raises(InputError, match="outside"):
        s.add(0, 3, "ML")
    with pytest.raises(InputError, match="itself"):
        s.add(1, 1, "ML")
    with pytest.raises(InputError, match="unknown answer"):
        s.add(0, 1, "maybe")


def test_oracle_answers_and_noise():
    ids = np.array(["a", "a", "b", "b"])
    pairs = np.array([[0, 1], [0, 2], [2, 3]])
    assert SimulatedOracle(ids).answer(pairs).tolist() == [1, 0, 1]
    noisy = SimulatedOracle(np.arange(200) % 2, noise_rate=1.0).answer(np.array([[0, 2]]))
    assert noisy.tolist() == [0]


def test_journal_roundtrip_and_torn_tail(tmp_path):
    path = tmp_path / "a.jsonl"
    j = AnnotationJournal(path)
    s = ConstraintStore(5)
    j.record(s, [(0, 1), (1, 2), (3, 4)], [1, 1, 0], cycle=1, source="test")
    # Simulate a crash in the middle of writing the next answer.
    with open(path, "a") as f:
        f.write('{"u": 2, "v": 3, "ans')
    reloaded = AnnotationJournal(path).load_store(5)
    assert [(a.u, a.v, a.answer) for a in reloaded.annotations] == [(a.u, a.v, a.answer) for a in s.annotations]
    j.record(reloaded, [(2, 4)], [0], cycle=2, source="test")
    again = AnnotationJournal(path).read()
    assert len(again) == 4 and again[-1].cycle == 2


def test_journal_corruption_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"u": 0, "v": 1, "answer": "MUST_LINK"}\nGARBAGE\n{"u": 1, "v": 2, "answer": "MUST_LINK"}\n')
    with pytest.raises(InputError, match="line 2 is corrupt"):
        AnnotationJournal(path).read()
