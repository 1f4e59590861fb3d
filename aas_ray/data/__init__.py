"""Datasets: catalogues, sources, the synthetic default, images."""

from aas_ray.data.catalogue import Catalogue, DatasetError
from aas_ray.data.registry import REGISTRY, describe_datasets, load_catalogue

__all__ = ["Catalogue", "DatasetError", "REGISTRY", "describe_datasets", "load_catalogue"]
