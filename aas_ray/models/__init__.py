"""Backbones and feature extraction (foundation issue §5)."""

from aas_ray.models.backbone import ModelError, ReIDNet, build_model, resolve_device
from aas_ray.models.features import FeatureCache, extract_features

__all__ = ["FeatureCache", "ModelError", "ReIDNet", "build_model", "extract_features", "resolve_device"]
