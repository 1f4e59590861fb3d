"""The view builder (docs/method.md §1-2): DBSCAN radius, FINCH level choice, self-paced views."""

import numpy as np
import pytest

from aas_ray.checks import InputError
from aas_ray.cluster import auto_eps, build_views, dbscan_view, jaccard_graph
from aas_ray.cluster.views import choose_partition, finch_partitions, first_non_self_neighbour
from aas_ray.eval import clustering_metrics
from conftest import mixture


def test_choose_partition_auto_integer_and_bad_level():
    counts = [120, 30, 7, 2]
    assert choose_partition(counts, "auto", 28) == 1
    assert choose_partition(counts, "auto", 5) == 2
    assert choose_partition(counts, "auto", 500) == 0
    assert choose_partition(counts, 0, 2) == 0
    assert choose_partition(counts, 9, 2) == 3  # clipped to the coarsest level FINCH found
    with pytest.raises(InputError, match="finch_partition"):
        choose_partition(counts, -1, 2)


def test_build_views_equals_its_parts():
    x, _ = mixture(300, 16, 30, spread=0.7, seed=2)
    v = build_views(x, k1=15, k2=4, eps=0.55, finch_partition="auto", self_paced=True)
    g = jaccard_graph(x, 15, 4, min_sim=0.01)
    np.testing.assert_array_equal(v.labels_a, dbscan_view(g, 0.55, 4))
    np.testing.assert_array_equal(v.tight, dbscan_view(g, 0.53, 4))
    np.testing.assert_array_equal(v.loose, dbscan_view(g, 0.57, 4))
    parts, counts = finch_partitions(x, first_non_self_neighbour(g.knn_idx))
    n_a = np.unique(v.labels_a[v.labels_a >= 0]).size
    assert v.finch_level == choose_partition(counts, "auto", n_a)
    np.testing.assert_array_equal(v.labels_b, parts[:, v.finch_level])
    finest = build_views(x, k1=15, k2=4, eps=0.55, finch_partition=0)
    np.testing.assert_array_equal(finest.labels_b, parts[:, 0])
    only_a = build_views(x, k1=15, k2=4, eps=0.55, need_b=False)
    assert only_a.labels_b is None and only_a.tight is None
    np.testing.assert_array_equal(only_a.labels_a, v.labels_a)


def test_auto_eps_finds_the_groups_a_fixed_radius_merges():
    # 40 tight identities of 6 images in 300 points: with k1 = 30 the k-reciprocal sets span
    # several identities, and SpCL's eps = 0.6 merges most of the data into a few clusters.
    x, y = mixture(240, 32, 40, spread=0.55, seed=1)
    g = jaccard_graph(x, 30, 6)
    fixed = dbscan_view(g, 0.6, 4)
    eps = auto_eps(g, 4)
    auto = dbscan_view(g, eps, 4)
    n_fixed = np.unique(fixed[fixed >= 0]).size
    n_auto = np.unique(auto[auto >= 0]).size
    assert 0.2 <= eps < 0.6
    assert n_auto > n_fixed
    # the radius it picks is the one with the most clusters among all radii it could pick
    for e in np.round(np.arange(0.2, 0.9, 0.05), 2):
        lab = dbscan_view(g, float(e), 4)
        assert np.unique(lab[lab >= 0]).size <= n_auto
    # merged identities at 0.6 (pair precision ~0.5); the radius with the most clusters keeps them apart (~0.9)
    assert clustering_metrics(auto, y)["pair_precision"] > clustering_metrics(fixed, y)["pair_precision"] + 0.3


def test_eps_auto_in_views_and_config():
    from aas_ray.config import ClusterConfig, ConfigError, load_config

    x, _ = mixture(200, 16, 25, spread=0.6, seed=4)
    v = build_views(x, **ClusterConfig(k1=15, k2=4, eps="auto").view_params(), need_b=False)
    assert v.eps == auto_eps(jaccard_graph(x, 15, 4, min_sim=0.01), 4)
    with pytest.raises(ConfigError, match="cluster.eps"):
        load_config(None, ["cluster.eps=1.5"])
    with pytest.raises(ConfigError, match="cluster.eps"):
        load_config(None, ["cluster.eps=big"])


def finch_clust_reference(x, first):
    """finch-clust itself on the same input (the package this implementation must match)."""
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pynndescent absent: never used on this path
        from finch import FINCH
    with contextlib.redirect_stdout(io.StringIO()):
        c, counts, _ = FINCH(x, initial_rank=first, distance="cosine", ann_threshold=10**9, verbose=False)
    return np.asarray(c).reshape(x.shape[0], -1), [int(k) for k in counts]


def same_partition(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_finch_from_the_neighbour_graph_matches_finch_clust(seed):
    from aas_ray.cluster.finch import finch_levels
    from aas_ray.cluster.knn import knn_search

    rng = np.random.default_rng(seed)
    x, _ = mixture(int(rng.integers(150, 700)), 16, int(rng.integers(10, 80)), spread=float(rng.uniform(0.3, 1.0)),
                   seed=seed)
    first = first_non_self_neighbour(knn_search(x, 5).idx)
    ours, counts = finch_levels(x, first, knn_method="exact")
    ref, ref_counts = finch_clust_reference(x, first)
    assert counts == ref_counts and ours.shape == ref.shape
    for level in range(ref.shape[1]):
        assert same_partition(ours[:, level], ref[:, level]), level


def test_approximate_knn_reports_its_measured_recall():
    from aas_ray.cluster.knn import knn_search, recall_at_k

    # identity clusters inside family clusters: what trained re-ID features look like
    rng = np.random.default_rng(0)
    fam = rng.normal(size=(40, 32))
    ids = fam[rng.integers(0, 40, 400)] + 0.5 * rng.normal(size=(400, 32))
    x = ids[rng.integers(0, 400, 3000)] + 0.25 * rng.normal(size=(3000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    exact = knn_search(x, 10)
    assert exact.method == "exact"
    assert knn_search(x, 10, method="auto", exact_up_to=5000).method == "exact"
    auto = knn_search(x, 10, method="auto", exact_up_to=1000, target_recall=0.98)
    assert auto.method.startswith("ivf")  # above the size, on a CPU
    for approx in (auto, knn_search(x, 10, method="hnsw", target_recall=0.98)):
        assert approx.recall >= 0.98  # measured on sampled queries against exact search for them ...
        assert recall_at_k(approx.idx, exact.idx) >= 0.97  # ... and it holds for all queries
        assert (approx.idx >= 0).all() and (approx.idx[:, 0] == np.arange(len(x))).mean() > 0.99
        np.testing.assert_allclose(approx.sims, np.einsum("nd,nkd->nk", x, x[approx.idx]), atol=1e-4)
    v = build_views(x, k1=10, k2=3, knn="ivf", knn_recall=0.98, need_b=False)
    assert v.knn_method.startswith("ivf") and v.knn_recall >= 0.98


def test_ivf_scans_more_cells_until_the_recall_is_reached():
    from aas_ray.cluster.knn import knn_search, recall_at_k

    # no cluster structure: one probed cell misses most neighbours, so the search must widen
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = knn_search(x, 15)
    loose = knn_search(x, 15, method="ivf", target_recall=0.5)
    tight = knn_search(x, 15, method="ivf", target_recall=0.99)
    probes = [int(nb.method.split("nprobe=")[1].rstrip(")")) for nb in (loose, tight)]
    assert probes[0] < probes[1]
    assert recall_at_k(tight.idx, exact.idx) >= 0.98 > recall_at_k(loose.idx, exact.idx)
    # auto gives up on an IVF that would scan more than 1/32 of the images: HNSW instead
    auto = knn_search(x, 15, method="auto", exact_up_to=1000, target_recall=0.99)
    assert auto.method.startswith("hnsw") and auto.recall >= 0.99
    # cells smaller than k: every row still gets k real neighbours (short rows searched exactly)
    few = knn_search(x[:600], 200, method="ivf", target_recall=0.1)
    assert (few.idx >= 0).all() and few.idx.shape == (600, 200)


@pytest.mark.parametrize("seed", range(4))
def test_cluster_counts_at_every_radius_equal_dbscan(seed):
    from aas_ray.cluster.views import cluster_counts

    rng = np.random.default_rng(seed)
    x, _ = mixture(int(rng.integers(200, 500)), 16, int(rng.integers(15, 60)), spread=float(rng.uniform(0.4, 0.9)),
                   seed=seed)
    g = jaccard_graph(x, 15, 4)
    grid = np.round(np.arange(0.2, 0.9, 0.05), 2)
    for ms in (2, 4, 6):
        counts = cluster_counts(g, grid, ms)
        for e, c in zip(grid, counts):
            lab = dbscan_view(g, float(e), ms)
            assert c == np.unique(lab[lab >= 0]).size, (ms, e)


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_views_and_regions_equal_the_exact_ones(method):
    from sklearn.metrics import adjusted_rand_score

    from aas_ray.al import region_index

    rng = np.random.default_rng(3)
    fam = rng.normal(size=(60, 48))
    ids = fam[rng.integers(0, 60, 700)] + 0.6 * rng.normal(size=(700, 48))
    x = ids[rng.integers(0, 700, 6000)] + 0.35 * rng.normal(size=(6000, 48))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    params = dict(k1=20, k2=6, eps="auto", finch_partition="auto", knn_recall=0.99)
    exact = build_views(x, knn="exact", **params)
    approx = build_views(x, knn=method, **params)
    assert approx.knn_method.startswith(method) and approx.knn_recall >= 0.99
    assert approx.eps == exact.eps
    assert adjusted_rand_score(exact.labels_a, approx.labels_a) >= 0.99
    assert approx.finch_level == exact.finch_level
    rx, ra = region_index(exact.labels_a, exact.labels_b), region_index(approx.labels_a, approx.labels_b)
    assert adjusted_rand_score(exact.labels_b, approx.labels_b) >= 0.99
    assert adjusted_rand_score(rx, ra) >= 0.99
    assert abs(np.unique(rx[rx >= 0]).size - np.unique(ra[ra >= 0]).size) <= 1


def test_hdbscan_view_equals_hdbscan_with_every_distance_stored():
    """The sparse completion stores only exact d_J values (absent pairs are at 1), and just enough
    of the ones for HDBSCAN: it gives the labels HDBSCAN gives with all n x n distances stored."""
    import scipy.sparse as sp
    from scipy.sparse import csgraph
    from sklearn.metrics import adjusted_rand_score
    from sklearn.cluster import HDBSCAN

    from aas_ray.cluster.views import complete_distance, hdbscan_view

    x, _ = mixture(240, 16, 30, spread=0.8, seed=4)
    g = jaccard_graph(x, 12, 3, min_sim=0.01)
    d = complete_distance(g, 3)
    dense = np.ones((240, 240))  # pairs whose supports do not overlap: d_J = 1
    src = g.distance().tocoo()
    dense[src.row, src.col] = src.data
    np.fill_diagonal(dense, 0.0)
    # every stored value of the completion is d_J itself (a zero made the smallest positive float)
    got = d.tocoo()
    np.testing.assert_allclose(got.data, np.maximum(dense[got.row, got.col], np.finfo(np.float32).tiny), atol=1e-6)
    assert csgraph.connected_components(d, directed=False)[0] == 1
    assert (np.diff(d.indptr) >= 3).all()
    for mcs, ms in ((2, 2), (3, 3)):
        every = sp.csr_matrix(np.maximum(dense, np.finfo(np.float32).tiny))
        want = HDBSCAN(min_cluster_size=mcs, min_samples=ms, metric="precomputed", copy=True).fit_predict(every)
        labels = hdbscan_view(g, mcs, ms)
        np.testing.assert_array_equal(labels < 0, want < 0)
        keep = want >= 0  # the same partition of the clustered images
        assert adjusted_rand_score(labels[keep], want[keep]) == pytest.approx(1.0)
    with pytest.raises(InputError, match="min_cluster_size >= 2"):
        hdbscan_view(g, 1, 2)


def test_hdbscan_view_does_not_merge_tight_groups_that_one_radius_merges():
    # Tight groups of 2-6 images beside loose ones: the radius with the most DBSCAN clusters
    # stretches to the loose groups and merges tight neighbours; HDBSCAN's clusters stay purer.
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(60, 24))
    sizes = rng.integers(2, 7, 60)
    spread = np.where(np.arange(60) < 30, 0.25, 0.6)
    y = np.repeat(np.arange(60), sizes)
    x = centres[y] + spread[y, None] * rng.normal(size=(y.size, 24))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    a = build_views(x, k1=10, k2=3, eps="auto", need_b=False)
    h = build_views(x, k1=10, k2=3, eps="auto", view_a="hdbscan", need_b=False)
    qa, qh = clustering_metrics(a.labels_a, y), clustering_metrics(h.labels_a, y)
    assert qh["pair_precision"] > qa["pair_precision"] + 0.1
    assert np.bincount(h.labels_a[h.labels_a >= 0]).max() < np.bincount(a.labels_a[a.labels_a >= 0]).max()
    assert h.eps == a.eps and h.tight is None  # the radius is still resolved; no radius-based reliability views
