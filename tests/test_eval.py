import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, average_precision_score, normalized_mutual_info_score, roc_auc_score

from aas_ray.checks import InputError
from aas_ray.eval import clustering_metrics, identity_aware_split, open_set_split, retrieval_metrics


def test_retrieval_hand_computed():
    # Query q0 (id a): gallery ranked a(0.9) b(0.8) a(0.1) -> AP = (1/1 + 2/3)/2, INP = 2/3, top1 hit.
    # Query q1 (id b): ranked a(0.9) a(0.5) b(0.4)     -> AP = 1/3, INP = 1/3, first hit at 3.
    # Query q2 (id z): unknown, best sim 0.2.
    g_ids = np.array(["a", "b", "a"])
    sim = np.array([[0.9, 0.8, 0.1], [0.9, 0.4, 0.5], [0.2, 0.1, 0.0]])
    m = retrieval_metrics(sim, np.array(["a", "b", "z"]), g_ids)
    assert np.isclose(m["mAP"], ((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert np.isclose(m["mINP"], (2 / 3 + 1 / 3) / 2)
    assert m["top1"] == 0.5 and m["top3"] == 1.0
    assert m["BAKS"] == 0.5
    # known queries score 0.9, 0.9; unknown 0.2 -> perfectly separated
    assert m["auc_roc"] == 1.0
    assert m["known_queries"] == 2 and m["unknown_queries"] == 1


def test_map_matches_sklearn_and_auc():
    rng = np.random.default_rng(0)
    g_ids = rng.integers(0, 5, 40)
    q_ids = np.r_[rng.integers(0, 5, 30), np.full(6, 99)]
    sim = rng.random((36, 40))
    m = retrieval_metrics(sim, q_ids, g_ids)
    aps = [average_precision_score(g_ids == q, s) for q, s in zip(q_ids[:30], sim[:30])]
    assert np.isclose(m["mAP"], np.mean(aps))
    assert np.isclose(m["auc_roc"], roc_auc_score(np.r_[np.ones(30), np.zeros(6)], sim.max(axis=1)))


def test_retrieval_bad_input():
    with pytest.raises(InputError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]), ["a"], ["a"])
    with pytest.raises(InputError, match="queries"):
        retrieval_metrics(np.zeros((2, 2)), ["a"], ["a", "b"])


def test_clustering_metrics_against_sklearn_and_hand():
    pred = np.array([0, 0, 1, 1, -1, -1])
    true = np.array([0, 0, 0, 1, 1, 2])
    m = clustering_metrics(pred, true)
    singles = np.array([0, 0, 1, 1, 2, 3])
    assert np.isclose(m["nmi"], normalized_mutual_info_score(true, singles))
    assert np.isclose(m["ari"], adjusted_rand_score(true, singles))
    # predicted same-cluster pairs: (0,1), (2,3); true: (0,1), (0,2), (1,2), (3,4); both: (0,1)
    assert np.isclose(m["pair_precision"], 0.5) and np.isclose(m["pair_recall"], 0.25)
    assert np.isclose(m["pair_f1"], 2 * 0.5 * 0.25 / 0.75)
    assert m["clusters"] == 2 and m["outliers"] == 2


def test_identity_aware_split():
    ids = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    t = identity_aware_split(ids, 0.2, seed=0)
    assert np.array_equal(t, identity_aware_split(ids, 0.2, seed=0))
    for i in range(10):
        m = ids == i
        if m.sum() >= 2:
            assert 1 <= t[m].sum() < m.sum()
        else:
            assert not t[m].any()


def test_open_set_split_protocol():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(20), 8)
    test = identity_aware_split(ids, 0.25, seed=1)
    x = rng.normal(size=(ids.size, 8))
    s = open_set_split(ids, test, seed=3, unknown_fraction=0.2, gallery_size=5, features=x)
    s2 = open_set_split(ids, test, seed=3, unknown_fraction=0.2, gallery_size=5, features=x)
    assert np.array_equal(s.gallery, s2.gallery) and np.array_equal(s.unknown_identities, s2.unknown_identities)
    assert s.unknown_identities.size == 4
    assert np.array_equal(s.query, np.flatnonzero(test))
    assert not np.isin(ids[s.train], s.unknown_identities).any()
    assert not np.isin(ids[s.gallery], s.unknown_identities).any()
    assert np.isin(s.gallery, s.train).all()
    counts = np.bincount(ids[s.gallery])
    assert counts.max() <= 5 and (counts[s.known_identities] == 5).all()
    # gallery = the most central exemplars of each identity
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = s.known_identities[0]
    members = s.train[ids[s.train] == k]
    cent = xn[members] @ xn[members].sum(0)
    assert set(s.gallery[ids[s.gallery] == k]) == set(members[np.argsort(-cent)[:5]])


def test_open_set_split_bad_input():
    with pytest.raises(InputError, match="at least 2"):
        open_set_split(np.zeros(6), np.array([0, 0, 0, 1, 1, 1], bool))
    with pytest.raises(InputError, match="disjoint identities"):
        open_set_split(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1], bool), unknown_fraction=0.0)


def test_paired_difference_interval_and_verdicts():
    from scipy import stats

    from aas_ray.eval.paired import mean_interval, paired_difference, wilcoxon_across

    a = np.array([0.30, 0.32, 0.29, 0.35, 0.31])
    b = np.array([0.25, 0.26, 0.27, 0.28, 0.24])
    d = paired_difference(a, b)
    diffs = a - b
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / np.sqrt(5)
    assert d.n == 5 and d.mean == pytest.approx(diffs.mean())
    assert (d.low, d.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert d.verdict("aas", "random") == "aas > random"
    assert paired_difference(b, a).verdict("aas", "random") == "aas < random"
    # a difference that changes sign over seeds is no verdict, however large its mean
    assert paired_difference([0.5, 0.1, 0.45], [0.1, 0.3, 0.1]).verdict() == "not separable"
    # one seed: no interval, no verdict; missing values drop their pair
    assert paired_difference([0.3], [0.2]).verdict() == "not separable (1 repeat)"
    assert paired_difference([0.3, np.nan, 0.4], [0.2, 0.1, 0.3]).n == 2
    with pytest.raises(InputError, match="one to one"):
        paired_difference([1, 2], [1])
    mean, low, high = mean_interval([0.2, 0.4, 0.3])
    assert mean == pytest.approx(0.3) and low < 0.3 < high
    # the paper's test across datasets: all 8 differences positive -> exact two-sided p = 2 / 2^8
    p, n = wilcoxon_across(np.arange(8) + 1.0, np.zeros(8))
    assert n == 8 and p == pytest.approx(2 / 2 ** 8)
