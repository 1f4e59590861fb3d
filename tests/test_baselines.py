"""The AL baselines (docs/method.md §14): each sampler's contract, and the rule each implements
on a hand-made case."""

import numpy as np
import pytest

from aas_ray.al import ConstraintStore, SamplerInput, SimulatedOracle, list_strategies, make_sampler
from aas_ray.al.baselines import NISSampler, farthest_point_order, nis_draws
from aas_ray.cluster import build_views
from conftest import mixture

BASELINES = [s for s in list_strategies() if s not in ("aas", "random")]


@pytest.fixture(scope="module")
def views():
    x, y = mixture(300, 16, 30, spread=0.8, seed=3)
    v = build_views(x, k1=15, k2=4, eps="auto")
    g = v.graph
    return x, y, SamplerInput.of_clustering(x, v, v.graph.pair_sim)


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
    v = SamplerInput(x, np.full(5, -1), np.full(5, -1), None, idx, sims)
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
    v = SamplerInput(x, np.zeros(4, int), np.zeros(4, int), g.pair_sim, jaccard=g, eps=0.6)
    got = make_sampler("uncertainty").propose(v, ConstraintStore(4), 3, np.random.default_rng(0)).draw.pairs.tolist()
    assert got == [[0, 2], [2, 3], [1, 2]]  # |d - 0.6| = 0.02, 0.02, 0.15


def test_farthest_in_and_nearest_out_of_each_cluster():
    from aas_ray.cluster.knn import knn_search

    # cluster 0: images 0, 1, 2 along an arc (0 and 2 farthest apart); cluster 1: images 3, 4;
    # image 2 is the member of cluster 0 nearest to cluster 1 (image 3)
    x = square([[1, 0], [0.9, 0.45], [0.6, 0.8], [0.3, 0.95], [-0.2, 1]])
    sims, idx = knn_search(x, 5)
    labels = np.array([0, 0, 0, 1, 1])
    v = SamplerInput(x, labels, labels, None, idx, sims)
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
    v = SamplerInput(x, np.full(y.size, -1), np.full(y.size, -1), None, idx, sims)
    oracle = SimulatedOracle(y)
    estimates, covered = [], 0
    for seed in range(30):
        store = ConstraintStore(y.size)
        sampler = NISSampler(tau=0.1)  # the reference's allocation: 13 draws for each of 16 vertices
        prop = sampler.propose(v, store, 200, np.random.default_rng(seed))
        for (a, b), ans in zip(prop.draw.pairs, oracle.answer(prop.draw.pairs)):
            store.add(int(a), int(b), int(ans))
        est, ci, used = NISSampler.estimate(prop.drawn, store)
        assert used > 0
        estimates.append(est)
        covered += abs(est - 30) <= ci
        if seed == 0:  # vertices: small groups drawn far more often per image than big ones
            verts = np.array([s[0] for s in prop.drawn])
            assert np.isin(verts, np.flatnonzero(np.repeat(sizes, sizes) == 2)).mean() > 0.6
    assert abs(np.mean(estimates) - 30) < 1  # a sharp proposal: n̄ ≈ the group size, little bias
    assert covered >= 24  # the 95 % interval covers the truth most of the time


def test_nis_allocates_the_budget_as_the_reference():
    # N_v = N_n = round(√B): 9 draws besides the vertex for B = 100, so ceil(100 / 9) vertices
    assert nis_draws(100) == 9 and nis_draws(1) == 1 and nis_draws(0) == 1
    x, y = mixture(120, 8, 12, spread=0.5, seed=1)
    v = SamplerInput(x, np.full(120, -1), np.full(120, -1), None)
    prop = NISSampler(tau=0.05).propose(v, ConstraintStore(120), 100, np.random.default_rng(0))
    samples = prop.drawn
    assert len(samples) == 12 and all(s[1].size == 9 for s in samples)
    drawn_self = sum(int((s[1] == s[0]).sum()) for s in samples)
    assert drawn_self > 0  # at τ 0.05 a vertex often draws itself: that asks nothing
    pairs = prop.draw.pairs
    assert len(pairs) <= 100 and (pairs[:, 0] != pairs[:, 1]).all()
    asked = {tuple(sorted(p)) for p in pairs.tolist()}
    drawn = {tuple(sorted((s[0], int(j)))) for s in samples for j in s[1] if j != s[0]}
    assert asked <= drawn


def test_nis_estimate_is_the_reference_formula():
    # two vertices; n̄_v = (1 / q_v + Σ same / q) / (draws + 1), the vertex its own first sample
    store = ConstraintStore(6)
    store.add(0, 1, "same")
    store.add(0, 2, "different")
    store.add(3, 4, "different")
    samples = [(0, np.array([1, 2, 0]), np.array([0.25, 0.25, 0.5]), 0.5, 0.5),   # n̄ = (2+4+0+2)/4 = 2
               (3, np.array([4, 4]), np.array([0.1, 0.1]), 0.8, 0.25)]            # n̄ = 1.25/3
    terms = np.array([1 / 2 / 0.5, 3 / 1.25 / 0.25])
    est, ci, used = NISSampler.estimate(samples, store)
    assert used == 2
    assert est == pytest.approx(terms.mean())
    assert ci == pytest.approx(1.96 * terms.std() / np.sqrt(2))
    # an unanswered draw leaves its vertex out; an implied answer counts (0-1 same, 1-5 same)
    store.add(1, 5, "same")
    est, _, used = NISSampler.estimate(samples + [(0, np.array([5]), np.array([0.5]), 0.5, 1.0),
                                                  (2, np.array([3]), np.array([0.5]), 0.5, 1.0)], store)
    assert used == 3 and est == pytest.approx((terms.sum() + 1 / 2) / 3)  # n̄ = (2 + 2) / 2


def arc(degrees):
    return square([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in degrees])


# Three DBSCAN clusters on the unit circle and one outlier (7, at 42°) between A and B:
# A = 0, 1, 2, 3 at 0-35°, B = 4, 5, 6 at 50-70°, C = 8, 9, 10 at 150-175°.
BAS_ANGLES = [0, 10, 20, 35, 50, 55, 70, 42, 150, 160, 175]
BAS_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, -1, 2, 2, 2])


def bas_views():
    x = arc(BAS_ANGLES)
    return SamplerInput(x, BAS_LABELS, BAS_LABELS, None)


def test_farthest_point_order_starts_farthest_from_the_mean():
    # mean direction ≈ 21°: 45° is farthest; then 0° (45° from it); then 20° (20° from 0°)
    order = list(farthest_point_order(arc([0, 10, 20, 30, 45])))
    assert order[:3] == [4, 0, 2] and sorted(order) == [0, 1, 2, 3, 4]
    assert list(farthest_point_order(np.empty((0, 2), np.float32))) == []


def test_lbas_one_triplet_per_cluster_farthest_mate_nearest_other_no_outlier():
    # per cluster, the anchor is its member farthest from the cluster mean (A: 35°, B: 70°,
    # C: 175°), the positive its farthest cluster mate, the negative its nearest image of another
    # cluster; the outlier at 42°, nearest of all to A's anchor, is never asked
    prop = make_sampler("lbas").propose(bas_views(), ConstraintStore(11), 7, np.random.default_rng(0))
    got = {(tuple(p), pool) for p, pool in zip(prop.draw.pairs.tolist(), prop.draw.pool)}
    assert got == {((0, 3), "pos"), ((3, 4), "neg"), ((4, 6), "pos"), ((3, 6), "neg"), ((8, 10), "pos"),
                   ((6, 10), "neg")}
    assert list(prop.draw.pool) == ["pos", "neg"] * 3  # balanced; the odd 7th pair of budget is not spent
    assert prop.stats["triplets"] == 3 and prop.stats["outliers_discarded"] == 1


def test_lbas_takes_the_next_farthest_and_nearest_once_asked():
    store = ConstraintStore(11)
    for (u, v), a in zip([(0, 3), (3, 4), (4, 6), (3, 6), (8, 10), (6, 10)], ["same", "different"] * 3):
        store.add(u, v, a)
    prop = make_sampler("lbas").propose(bas_views(), store, 2, np.random.default_rng(0))
    pairs = prop.draw.pairs.tolist()
    assert len(pairs) == 2
    assert pairs in ([[1, 3], [3, 5]], [[5, 6], [2, 6]], [[9, 10], [5, 10]])  # whichever cluster comes first
    more = make_sampler("lbas").propose(bas_views(), store, 100, np.random.default_rng(0)).draw.pairs.tolist()
    assert {(1, 3), (3, 5), (5, 6), (2, 6), (9, 10), (5, 10)} <= {tuple(p) for p in more}
    assert not any(7 in p for p in more)


def anchors(draw):
    """The anchor of each triplet: the image its positive and negative pair share."""
    return [int((set(a) & set(b)).pop()) for a, b in zip(draw.pairs[0::2].tolist(), draw.pairs[1::2].tolist())]


def test_gbas_takes_anchors_in_one_global_farthest_point_order_lbas_cluster_by_cluster():
    # A spread over 0-160°, B tight at 270-272°: one global farthest-point order picks 160°, 0°,
    # 270°, 80° (B's other images are 1-2° from 270°), so GBAS gives A three anchors and B one;
    # LBAS gives each cluster its anchors in turn
    x = arc([0, 40, 80, 120, 160, 270, 271, 272])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    v = SamplerInput(x, labels, labels, None)
    g = make_sampler("gbas").propose(v, ConstraintStore(8), 8, np.random.default_rng(0)).draw
    assert anchors(g) == [4, 0, 5, 2] == list(farthest_point_order(x))[:4]
    assert list(g.pool) == ["pos", "neg"] * 4
    lb = make_sampler("lbas").propose(v, ConstraintStore(8), 8, np.random.default_rng(0)).draw
    assert sorted(labels[anchors(lb)].tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("strategy", ["lbas", "gbas"])
def test_balanced_cycle_logs_the_yield_of_its_positive_and_negative_questions(strategy, tmp_path):
    import pandas as pd

    from aas_ray.config import load_config
    from aas_ray.experiment.cycle import ALCycle

    x, y = mixture(300, 16, 30, spread=0.8, seed=3)
    cv = build_views(x, k1=15, k2=4, eps="auto")
    cfg = load_config(None, ["cluster.k1=15", "cluster.k2=4", f"al.strategy={strategy}", "al.budget_pairs=41"])
    cycle = ALCycle(cfg, 300, ConstraintStore(300), np.random.default_rng(0), SimulatedOracle(y),
                    pairs_log=tmp_path / "pairs.csv")
    row = cycle.run(1, x, cv).row
    assert row["asked_pos"] == row["asked_neg"] == 20 and row["pairs_asked"] == 40
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    same = y[pairs["u"]] == y[pairs["v"]]
    for pool in ("pos", "neg"):
        assert row[f"ml_{pool}"] == (same & (pairs["pool"] == pool)).sum()
    assert row["ml_pos"] > row["ml_neg"]  # cluster mates are the likelier matches
    assert (cv.labels_a[pairs[["u", "v"]].to_numpy()] >= 0).all()  # no DBSCAN outlier asked
