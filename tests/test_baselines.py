"""The AL baselines (docs/method.md §14): each sampler's contract, and the rule each implements
on a hand-made case."""

import numpy as np
import pytest

from aas_ray.al import ConstraintStore, SimulatedOracle, Views, make_sampler
from aas_ray.al.baselines import NISSampler
from aas_ray.cluster import build_views
from conftest import mixture

BASELINES = ["nis", "farthest-nearest", "uncertainty", "nearest"]


@pytest.fixture(scope="module")
def views():
    x, y = mixture(300, 16, 30, spread=0.8, seed=3)
    v = build_views(x, k1=15, k2=4, eps="auto")
    g = v.graph
    return x, y, Views(x, v.labels_a, v.labels_b, g.pair_sim, g.knn_idx, g.knn_sim, g, v.eps)


def cycles(strategy, y, views, budget, seed=0, n_cycles=3):
    store, sampler, oracle, rng = ConstraintStore(len(y)), make_sampler(strategy), SimulatedOracle(y), \
        np.random.default_rng(seed)
    asked = []
    for c in range(n_cycles):
        prop = sampler.propose(views, store, budget, rng)
        pairs = [tuple(map(int, p)) for p in prop.draw.pairs]
        assert len(pairs) <= budget
        assert all(0 <= u < v < len(y) for u, v in pairs)
        assert len(set(pairs)) == len(pairs) and not set(pairs) & set(asked)
        assert (store.implied(prop.draw.pairs) < 0).all()  # nothing the answers already settle
        asked += pairs
        for (u, v), a in zip(prop.draw.pairs, oracle.answer(prop.draw.pairs)):
            store.add(int(u), int(v), int(a), c)
    return asked


@pytest.mark.parametrize("strategy", BASELINES)
def test_contract(strategy, views):
    x, y, v = views
    asked = cycles(strategy, y, v, 40)
    assert len(asked) > 40
    assert cycles(strategy, y, v, 40) == asked  # deterministic for a seed
    if strategy == "nis":
        assert cycles(strategy, y, v, 40, seed=1) != asked


def square(points):
    x = np.asarray(points, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_asks_the_most_similar_open_pairs_first():
    x = square([[1, 0], [0.99, 0.14], [0, 1], [0.2, 0.98], [-1, 0.05]])
    from aas_ray.cluster.knn import knn_search

    sims, idx = knn_search(x, 5)
    v = Views(x, np.full(5, -1), np.full(5, -1), None, idx, sims)
    store = ConstraintStore(5)
    first = make_sampler("nearest").propose(v, store, 2, np.random.default_rng(0)).draw.pairs.tolist()
    assert first == [[0, 1], [2, 3]]
    store.add(0, 1, "same")
    store.add(1, 3, "different")  # implies 0-3 different
    nxt = make_sampler("nearest").propose(v, store, 10, np.random.default_rng(0)).draw.pairs.tolist()
    assert [0, 1] not in nxt and [0, 3] not in nxt and nxt[0] == [2, 3]


def test_uncertainty_asks_pairs_closest_to_the_radius():
    import scipy.sparse as sp

    from aas_ray.cluster.jaccard import JaccardGraph

    d = {(0, 1): 0.1, (0, 2): 0.58, (1, 2): 0.75, (2, 3): 0.62, (1, 3): 0.95}
    rows, cols, vals = [], [], []
    for (u, v), dist in d.items():
        rows += [u, v]
        cols += [v, u]
        vals += [1 - dist, 1 - dist]
    g = JaccardGraph(sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(4, 4)),
                     np.zeros((4, 1), np.int64), np.zeros((4, 1), np.float32))
    x = square([[1, 0], [0, 1], [1, 1], [1, -1]])
    v = Views(x, np.zeros(4, int), np.zeros(4, int), g.pair_sim, jaccard=g, eps=0.6)
    got = make_sampler("uncertainty").propose(v, ConstraintStore(4), 3, np.random.default_rng(0)).draw.pairs.tolist()
    assert got == [[0, 2], [2, 3], [1, 2]]  # |d - 0.6| = 0.02, 0.02, 0.15


def test_farthest_in_and_nearest_out_of_each_cluster():
    from aas_ray.cluster.knn import knn_search

    # cluster 0: images 0, 1, 2 along an arc (0 and 2 farthest apart); cluster 1: images 3, 4;
    # image 2 is the member of cluster 0 nearest to cluster 1 (image 3)
    x = square([[1, 0], [0.9, 0.45], [0.6, 0.8], [0.3, 0.95], [-0.2, 1]])
    sims, idx = knn_search(x, 5)
    labels = np.array([0, 0, 0, 1, 1])
    v = Views(x, labels, labels, None, idx, sims)
    got = {tuple(p) for p in make_sampler("farthest-nearest").propose(v, ConstraintStore(5), 10,
                                                                      np.random.default_rng(0)).draw.pairs.tolist()}
    assert got == {(0, 2), (2, 3), (3, 4)}


def test_nis_prefers_images_with_few_look_alikes_and_estimates_the_count():
    rng = np.random.default_rng(0)
    # 30 individuals: 5 with 20 images each, 25 with 2 each
    sizes = [20] * 5 + [2] * 25
    y = np.repeat(np.arange(30), sizes)
    centres = rng.normal(size=(30, 24))
    x = centres[y] + 0.15 * rng.normal(size=(y.size, 24))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    from aas_ray.cluster.knn import knn_search

    sims, idx = knn_search(x, 10)
    v = Views(x, np.full(y.size, -1), np.full(y.size, -1), None, idx, sims)
    oracle = SimulatedOracle(y)
    estimates, covered = [], 0
    for seed in range(30):
        store = ConstraintStore(y.size)
        sampler = NISSampler(tau=0.1, neighbours=5)
        prop = sampler.propose(v, store, 200, np.random.default_rng(seed))
        for (a, b), ans in zip(prop.draw.pairs, oracle.answer(prop.draw.pairs)):
            store.add(int(a), int(b), int(ans))
        est, ci, used = NISSampler.estimate(prop.stats["nis_samples"], store)
        assert used > 0
        estimates.append(est)
        covered += abs(est - 30) <= ci
        if seed == 0:  # vertices: small groups drawn far more often per image than big ones
            verts = np.array([s[0] for s in prop.stats["nis_samples"]])
            assert np.isin(verts, np.flatnonzero(np.repeat(sizes, sizes) == 2)).mean() > 0.6
    assert abs(np.mean(estimates) - 30) < 1  # unbiased up to the small bias of 1 / n̄
    assert covered >= 24  # the 95 % interval covers the truth most of the time
