"""Batched feature extraction with a progress bar, and an on-disk cache keyed by
dataset, model and weights."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from aas_ray.data.catalogue import Catalogue
from aas_ray.data.images import CatalogueImages, test_transform, to_tensor_batch
from aas_ray.models.backbone import ReIDNet, weights_id

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    model: ReIDNet, cat: Catalogue, image_size, batch_size: int = 64, workers: int = 0,
    device: torch.device | str = "cpu", progress: bool = True, desc: str = "features",
) -> np.ndarray:
    """L2-normalised embeddings of every catalogue image, in catalogue order."""
    device = torch.device(device)
    ds = CatalogueImages(cat, test_transform(tuple(image_size), model.mean_std), tuple(image_size))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=to_tensor_batch, persistent_workers=False)
    was_training = model.training
    model.eval().to(device)
    out = np.empty((len(ds), model.feat_dim), dtype=np.float32)
    use_amp = device.type == "cuda"
    for imgs, idx in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with torch.autocast(device_type=device.type, enabled=use_amp):
            f = model(imgs.to(device, non_blocking=True))
        out[idx.numpy()] = f.float().cpu().numpy()
    model.train(was_training)
    return out


class FeatureCache:
    """``<dir>/features/<key>.npy``, key = hash(dataset fingerprint, model, weights, size)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(os.path.expanduser(str(cache_dir))) / "features"

    def key(self, cat: Catalogue, model_cfg) -> str:
        # "draft1": JPEGs decoded at a reduced scale before resizing (aas_ray.data.images.load_rgb)
        blob = "|".join([cat.name, cat.fingerprint(), weights_id(model_cfg), str(tuple(model_cfg.image_size)), "draft1"])
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def get_or_compute(self, cat: Catalogue, model_cfg, compute) -> np.ndarray:
        path = self.dir / f"{self.key(cat, model_cfg)}.npy"
        if path.is_file():
            feats = np.load(path)
            if feats.shape[0] == len(cat):
                log.info("features from cache %s", path)
                return feats
            log.warning("cached features %s have %d rows for %d images; recomputing", path, feats.shape[0], len(cat))
        feats = compute()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, feats)
        os.replace(tmp, path)
        return feats
