"""Clustering views of the embedding space (SPEC §1-2): kNN, k-reciprocal Jaccard, DBSCAN, FINCH."""

from aas_ray.cluster.knn import knn_search
from aas_ray.cluster.jaccard import JaccardGraph, jaccard_graph
from aas_ray.cluster.views import cluster_views, dbscan_view, finch_view

__all__ = ["knn_search", "JaccardGraph", "jaccard_graph", "dbscan_view", "finch_view", "cluster_views"]
