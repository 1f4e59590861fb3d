import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aas_ray.al import np3
from aas_ray.checks import InputError


def test_fig2_worked_example():
    # docs/method.md §9 / paper Fig. 2: A, B, C, D, E in one cluster; ML A-B, ML C-D, CL B-E.
    A, B, C, D, E = range(5)
    x = np.array([[0.0, 1.0], [0.3, 1.0], [1.0, 0.2], [1.0, 0.0], [0.9, 0.4]])
    out = np3(np.zeros(5, int), [[A, B], [C, D]], [[B, E]], x)
    groups = {frozenset(np.flatnonzero(out == c).tolist()) for c in np.unique(out)}
    assert groups == {frozenset({A, B}), frozenset({C, D, E})}


def test_no_constraints_changes_nothing():
    labels = np.array([3, 3, -1, 7, 7, 0])
    x = np.random.default_rng(0).normal(size=(6, 4))
    assert np.array_equal(np3(labels, None, np.empty((0, 2)), x), labels)


def test_ml_merges_clusters_and_keeps_smallest_id():
    labels = np.array([0, 0, 1, 1, 2])
    out = np3(labels, [[1, 2]], None, np.eye(5))
    assert out.tolist() == [0, 0, 0, 0, 2]


def test_constrained_noise_becomes_a_cluster():
    labels = np.array([-1, -1, 0, 0, -1])
    out = np3(labels, [[0, 2]], [[1, 3]], np.random.default_rng(1).normal(size=(5, 3)))
    assert out[0] == out[2] and out[1] != out[3] and out[1] >= 0 and out[4] == -1


def test_contradiction_is_named():
    with pytest.raises(InputError, match=r"CL\(0,2\).*ML\(0,1\), ML\(1,2\)"):
        np3(np.zeros(3, int), [[0, 1], [1, 2]], [[0, 2]], np.eye(3))


def test_nan_features_rejected():
    x = np.ones((3, 2))
    x[1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        np3(np.zeros(3, int), [[0, 1]], None, x)


def test_large_conflict_graph_uses_dsatur_and_holds():
    # An 14-clique of cannot-links inside one cluster: needs 14 sub-clusters.
    n = 14
    cl = [[i, j] for i in range(n) for j in range(i + 1, n)]
    out = np3(np.zeros(n, int), None, cl, np.random.default_rng(0).normal(size=(n, 3)))
    assert np.unique(out).size == n


@st.composite
def instances(draw):
    n = draw(st.integers(2, 30))
    labels = np.array(draw(st.lists(st.integers(-1, 4), min_size=n, max_size=n)))
    truth = np.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=25))
    pairs = np.array([p for p in pairs if p[0] != p[1]], dtype=int).reshape(-1, 2)
    # Constraints from a ground truth can never contradict each other.
    same = truth[pairs[:, 0]] == truth[pairs[:, 1]] if pairs.size else np.zeros(0, bool)
    seed = draw(st.integers(0, 1000))
    x = np.random.default_rng(seed).normal(size=(n, 4))
    return labels, pairs[same], pairs[~same], x


@settings(max_examples=300, deadline=None)
@given(instances())
def test_np3_satisfies_every_constraint(inst):
    labels, ml, cl, x = inst
    out = np3(labels, ml, cl, x)
    for u, v in ml:
        assert out[u] == out[v] and out[u] >= 0
    for u, v in cl:
        assert not (out[u] == out[v])
    # Images that carry no constraint and were noise stay noise.
    touched = set(ml.ravel().tolist()) | set(cl.ravel().tolist())
    for i in np.flatnonzero(labels < 0):
        if i not in touched:
            assert out[i] == -1


def _partition(labels):
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


@settings(max_examples=150, deadline=None)
@given(instances())
def test_batched_single_group_split_equals_cluster_by_cluster(inst):
    # Clusters with one CL group are split all at once; the per-cluster path (method §9 step 3
    # with Hungarian matching) must give the same partition on them.
    from aas_ray.al import refine

    labels, ml, cl, x = inst
    batched = np3(labels, ml, cl, x)

    def one_by_one(out, clusters, groups, graph, comp, x_, next_id):
        return refine._split_each(out, clusters, [np.array([g]) for g in groups], graph, comp, x_, next_id)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(refine, "_split_single_group", one_by_one)
        looped = np3(labels, ml, cl, x)
    assert _partition(batched) == _partition(looped)
