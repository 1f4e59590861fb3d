"""Backbones and feature extraction: timm models, offline weights, the feature cache."""

from aas_ray.models.backbone import ModelError, ReIDNet, build_model, load_trained
from aas_ray.models.devices import resolve_device
from aas_ray.models.features import FeatureCache, extract_features, feature_loader

__all__ = ["FeatureCache", "ModelError", "ReIDNet", "build_model", "extract_features", "feature_loader", "load_trained",
           "resolve_device"]
