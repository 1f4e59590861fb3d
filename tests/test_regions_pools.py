import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aas_ray.al import find_regions, region_index
from aas_ray.al.pools import (
    disagreeing_pairs,
    disagreement_counts,
    over_segmentation_pool,
    region_medoids,
    under_segmentation_pool,
)

# docs/method.md §5 worked example (paper Fig. 1C): images x1..x8 -> indices 0..7.
A_FIG1 = np.array([0, 0, 1, 0, 1, 0, 2, 2])  # {1,2,4,6} {3,5} {7,8}
B_FIG1 = np.array([0, 0, 0, 0, 1, 2, 2, 1])  # {1,2,3,4} {5,8} {6,7}


def pairs_of(codes):
    return {tuple(sorted((int(c[0]) - 1, int(c[1]) - 1))) for c in codes}


def fig1_features():
    # Points on the unit circle in the order 2,1,3,5,8,7,6,4 (4 next to 2 again), slightly
    # uneven so no two distances tie: the closest cross pairs are then those of the figure.
    order = [2, 1, 3, 5, 8, 7, 6, 4]
    angles = np.cumsum([0, 0.70, 0.75, 0.80, 0.72, 0.78, 0.74, 0.77])
    x = np.zeros((8, 2))
    for pos, img in enumerate(order):
        x[img - 1] = [np.cos(angles[pos]), np.sin(angles[pos])]
    return x.astype(np.float32)


def test_fig1_disagreements_and_informative_pairs():
    region = np.zeros(8, dtype=np.int64)
    i_tilde = {tuple(p) for p in disagreeing_pairs(A_FIG1, B_FIG1, np.arange(8)).tolist()}
    assert i_tilde == pairs_of(["16", "26", "46", "35", "78", "13", "23", "34", "58", "67"])
    assert disagreement_counts(A_FIG1, B_FIG1, region, 1)[0] == 10
    us = under_segmentation_pool(fig1_features(), A_FIG1, B_FIG1, region)
    assert {tuple(p) for p in us.pairs.tolist()} == pairs_of(["13", "35", "46", "58", "67", "78"])
    assert set(us.pair_type.tolist()) == {0}


def test_fig1_is_one_region():
    regions = find_regions(A_FIG1, B_FIG1)
    assert len(regions) == 1 and regions[0].tolist() == list(range(8))


def test_identical_views_have_no_region():
    labels = np.array([0, 0, 1, 1, 2, -1])
    assert find_regions(labels, labels) == []


def test_noise_counts_as_singletons():
    # Noise point 2 in A; B puts it with 0 and 1 -> partial overlap -> one region.
    a = np.array([0, 0, -1, 1, 1])
    b = np.array([0, 0, 0, 1, 1])
    regions = find_regions(a, b)
    assert [r.tolist() for r in regions] == [[0, 1, 2]]
    # Noise matched by a B singleton is agreement, not a region.
    assert find_regions(np.array([0, 0, -1]), np.array([5, 5, 7])) == []


labels_st = st.lists(st.integers(-1, 6), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_region_invariants(data):
    a = np.array(data.draw(labels_st))
    b = np.array(data.draw(st.lists(st.integers(-1, 6), min_size=a.size, max_size=a.size)))
    rid = region_index(a, b)
    regions = find_regions(a, b)
    seen = np.concatenate(regions) if regions else np.empty(0, int)
    assert seen.size == np.unique(seen).size  # disjoint
    for r in regions:
        assert np.array_equal(r, np.sort(r))
        # A region is a union of whole clusters of both views (noise = singletons).
        for lab in (a, b):
            for c in set(lab[r].tolist()) - {-1}:
                assert set(np.flatnonzero(lab == c)) <= set(r.tolist())
    # Outside regions, A and B clusters coincide exactly (IoU = 1).
    out = np.flatnonzero(rid < 0)
    for i in out:
        same_a = set(np.flatnonzero(a == a[i])) if a[i] >= 0 else {i}
        same_b = set(np.flatnonzero(b == b[i])) if b[i] >= 0 else {i}
        assert same_a == same_b
    # Inside each region the two views disagree somewhere.
    for k, r in enumerate(regions):
        assert disagreeing_pairs(a, b, r).shape[0] > 0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_us_pool_pairs_disagree_and_count_formula(seed):
    rng = np.random.default_rng(seed)
    n = 30
    a = rng.integers(-1, 5, n)
    b = rng.integers(-1, 5, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rid = region_index(a, b)
    k = int(rid.max()) + 1
    counts = disagreement_counts(a, b, rid, max(k, 1))
    for r in range(k):
        assert counts[r] == disagreeing_pairs(a, b, np.flatnonzero(rid == r)).shape[0]
    us = under_segmentation_pool(x, a, b, rid)
    listed = set()
    for r in range(k):
        listed |= {tuple(p) for p in disagreeing_pairs(a, b, np.flatnonzero(rid == r)).tolist()}
    assert {tuple(p) for p in us.pairs.tolist()} <= listed  # I_k ⊆ Ĩ_k
    assert np.all(us.pairs[:, 0] < us.pairs[:, 1])
    assert np.unique(us.pairs, axis=0).shape[0] == us.pairs.shape[0]


def test_medoid_is_most_central_member():
    x = np.array([[1, 0], [0.9, 0.1], [0.8, 0.3], [0, 1], [0.1, 1]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rid = np.array([0, 0, 0, 1, 1])
    med = region_medoids(x, rid, 2)
    assert med[0] == 1
    sims = x @ x.T
    for r in range(2):
        m = np.flatnonzero(rid == r)
        assert med[r] == m[np.argmax(sims[np.ix_(m, m)].sum(axis=1))]


def test_os_pool_respects_kmax_and_smin():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    medoids = np.arange(0, 40, 2)

    def cos(p):
        return np.clip(np.einsum("ij,ij->i", x[p[:, 0]], x[p[:, 1]]), 0, 1)

    pairs, sims = over_segmentation_pool(x, medoids, 2, 0.3, cos)
    assert np.all(sims >= 0.3)
    assert np.all(np.isin(pairs, medoids))
    # each medoid proposes at most k_max partners; deduplication keeps each pair once
    assert pairs.shape[0] <= 2 * medoids.size
    assert np.unique(pairs, axis=0).shape[0] == pairs.shape[0]
    all_pairs, _ = over_segmentation_pool(x, medoids, 2, 0.0, cos)
    assert pairs.shape[0] <= all_pairs.shape[0]
    # exactly the k_max nearest other medoids by cosine, then the s_min filter: brute force
    s = x[medoids] @ x[medoids].T
    np.fill_diagonal(s, -np.inf)
    want = set()
    for i in range(medoids.size):
        for j in np.argsort(-s[i], kind="stable")[:2]:
            u, v = sorted((int(medoids[i]), int(medoids[j])))
            if cos(np.array([[u, v]]))[0] >= 0.3:
                want.add((u, v))
    assert {tuple(p) for p in pairs.tolist()} == want and len(want) > 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8), st.booleans()), min_size=1, max_size=40))
def test_cooccurring_cluster_pairs_match_a_direct_listing(rows):
    from aas_ray.al.pools import cooccurring_cluster_pairs

    own = np.array([r[1] for r in rows])
    other = np.array([r[0] for r in rows])
    noise = np.array([r[2] for r in rows])
    expected = {
        (min(own[i], own[j]), max(own[i], own[j]))
        for i in range(len(rows)) for j in range(len(rows))
        if own[i] != own[j] and other[i] == other[j] and not noise[i] and not noise[j]
    }
    got = cooccurring_cluster_pairs(own, other, noise)
    assert {tuple(p) for p in got.tolist()} == expected
    assert got.shape[0] == len(expected)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_closest_pair_compiled_and_blas_paths_agree(seed):
    # Eq. 2 has two implementations (small blocks compiled, large blocks BLAS): same
    # closest pair, up to float ties.
    from aas_ray.al.pools import closest_cross_pairs

    rng = np.random.default_rng(seed)
    n, k = 120, 9
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, k, n)
    present = np.unique(labels)
    pairs = np.array([(p, q) for p in present for q in present if p < q], dtype=np.int64)
    small = closest_cross_pairs(x, labels, k, pairs, compiled_up_to=n * n)  # every pair compiled
    blas = closest_cross_pairs(x, labels, k, pairs, compiled_up_to=0)  # every pair through BLAS
    assert (labels[small[:, 0]] == pairs[:, 0]).all() and (labels[small[:, 1]] == pairs[:, 1]).all()
    dots = lambda pr: np.einsum("ij,ij->i", x[pr[:, 0]], x[pr[:, 1]])
    np.testing.assert_allclose(dots(small), dots(blas), atol=1e-5)
    brute = [max(x[u] @ x[v] for u in np.flatnonzero(labels == p) for v in np.flatnonzero(labels == q)) for p, q in pairs]
    np.testing.assert_allclose(dots(small), brute, atol=1e-5)
