"""Backbones and feature extraction: timm models, offline weights, the feature cache."""

from aas_ray.models.backbone import ModelError, ReIDNet, build_model, resolve_device
from aas_ray.models.features import FeatureCache, extract_features

__all__ = ["FeatureCache", "ModelError", "ReIDNet", "build_model", "extract_features", "resolve_device"]
