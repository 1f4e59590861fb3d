"""Backbones and feature extraction: timm models, offline weights, the feature cache."""

from aas_ray.models.backbone import ModelError, ReIDNet, build_model, load_trained, resolve_device
from aas_ray.models.features import FeatureCache, extract_features

__all__ = ["FeatureCache", "ModelError", "ReIDNet", "build_model", "extract_features", "load_trained",
           "resolve_device"]
