"""Zero-shot evaluation of a backbone under the open-set protocol (SPEC §11)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from aas_ray.eval import retrieval_metrics
from aas_ray.eval.protocol import OpenSetSplit
from aas_ray.experiment.setup import make_split, prepare_data
from aas_ray.models import FeatureCache, build_model, extract_features, resolve_device

log = logging.getLogger(__name__)


def evaluate_split(features: np.ndarray, identities: np.ndarray, split: OpenSetSplit) -> dict[str, float]:
    q, g = split.query, split.gallery
    sim = features[q] @ features[g].T
    return retrieval_metrics(sim, identities[q], identities[g])


def dataset_features(cfg, data, progress: bool = True, model=None) -> np.ndarray:
    """Backbone features of every image (cached on disk for the untrained backbone)."""
    device = resolve_device(cfg.model.device)

    def compute():
        m = model if model is not None else build_model(cfg.model)
        return extract_features(m, data.cat, cfg.model.image_size, cfg.model.batch_size,
                                cfg.model.workers, device, progress, desc=f"features {data.cat.name}")

    if model is not None:
        return compute()
    return FeatureCache(cfg.data.cache_dir).get_or_compute(data.cat, cfg.model, compute)


def zero_shot(cfg, progress: bool = True) -> dict:
    """Features of the configured backbone, the §11 split, and its retrieval metrics."""
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, progress)
    feats = dataset_features(cfg, data, progress)
    split = make_split(cfg, data, feats)
    metrics = evaluate_split(feats, data.identities, split)
    return {"data": data, "features": feats, "split": split, "metrics": metrics}
