"""Clustering views of the embedding space (docs/method.md §1-2): kNN, k-reciprocal Jaccard,
DBSCAN, FINCH."""

from aas_ray.cluster.jaccard import JaccardGraph, jaccard_graph
from aas_ray.cluster.knn import knn_search
from aas_ray.cluster.views import ClusterViews, auto_eps, build_views, check_view_params, dbscan_view

__all__ = ["ClusterViews", "JaccardGraph", "auto_eps", "build_views", "check_view_params", "dbscan_view", "jaccard_graph", "knn_search"]
