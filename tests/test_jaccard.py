import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from aas_ray.checks import InputError
from aas_ray.cluster import dbscan_view, jaccard_graph, knn_search
from conftest import mixture
from dense_reference import dense_jaccard


@pytest.mark.parametrize("n,d,k,k1,k2,seed", [(300, 16, 30, 20, 6, 0), (250, 64, 10, 30, 6, 1), (120, 8, 60, 10, 1, 2)])
def test_sparse_jaccard_equals_dense_reference(n, d, k, k1, k2, seed):
    x, _ = mixture(n, d, k, seed=seed)
    g = jaccard_graph(x, k1=k1, k2=k2, min_sim=0.0)  # every overlapping pair, as SpCL
    dense = dense_jaccard(x, g.knn_idx[:, :k1], k1, k2)
    sparse = 1.0 - g.sim.toarray()
    assert np.abs(sparse - dense).max() < 1e-5
    # The sparse graph stores exactly the pairs whose supports overlap (d_J < 1).
    assert g.sim.nnz == int((dense < 1 - 1e-7).sum())
    assert np.allclose(g.sim.diagonal(), 1.0, atol=1e-6)


def test_dbscan_on_sparse_equals_dense():
    x, _ = mixture(300, 16, 20, spread=0.5)
    g = jaccard_graph(x, k1=20, k2=6)
    dense = dense_jaccard(x, g.knn_idx[:, :20], 20, 6)
    a_dense = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dense)
    a_sparse = dbscan_view(g, 0.6, 4)
    assert np.array_equal(a_dense, a_sparse)
    assert len(set(a_sparse) - {-1}) > 1


def test_pair_sim_lookup_matches_matrix():
    x, _ = mixture(200, 16, 20)
    g = jaccard_graph(x, k1=15, k2=4)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 200, size=(500, 2))
    dense = g.sim.toarray()
    assert np.allclose(g.pair_sim(pairs), dense[pairs[:, 0], pairs[:, 1]])


def test_knn_returns_self_first():
    x, _ = mixture(100, 8, 10)
    sims, idx = knn_search(x, 5)
    assert np.array_equal(idx[:, 0], np.arange(100))
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_nan_features_are_rejected():
    x, _ = mixture(50, 8, 5)
    x[7, 3] = np.nan
    with pytest.raises(InputError, match=r"NaN.*\[7\]"):
        jaccard_graph(x)


def test_empty_features_are_rejected():
    with pytest.raises(InputError, match="empty"):
        jaccard_graph(np.zeros((0, 8)))


def test_padded_knn_table_is_rejected():
    # FAISS pads with -1 when it finds fewer than k neighbours; a -1 must not be read as
    # "the last image" by the support kernels.
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims, idx = knn_search(x, 10)
    idx[3, 4] = -1
    with pytest.raises(InputError, match="-1"):
        jaccard_graph(x, 10, 3, knn=(sims, idx))


@pytest.mark.parametrize("min_sim", [0.0, 0.05])
def test_min_sum_scan_and_sort_paths_agree(min_sim):
    # The kernel emits a row either by scanning all marks or by sorting the touched images
    # (full rows without a floor, the upper triangle with one): the same matrix either way.
    from aas_ray.cluster.jaccard import jaccard_similarity

    x, _ = mixture(400, 16, 40, seed=5)
    v = jaccard_graph(x, k1=20, k2=6).sim.tocsr()  # any nonnegative sparse matrix exercises the kernel
    scanned = jaccard_similarity(v, min_sim, scan_factor=10**9)
    sorted_ = jaccard_similarity(v, min_sim, scan_factor=0)
    for a, b in ((scanned.indptr, sorted_.indptr), (scanned.indices, sorted_.indices), (scanned.data, sorted_.data)):
        np.testing.assert_array_equal(a, b)
    assert scanned.nnz > 400
