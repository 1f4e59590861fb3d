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


def feature_loader(cat: Catalogue, image_size, mean_std, batch_size: int = 64, workers: int = 0,
                   device: torch.device | str = "cpu") -> DataLoader:
    """The test-transform batches of ``cat`` in catalogue order. On CUDA the batches are pinned
    for asynchronous copies and the workers persist, so a loader kept by its caller (the
    trainer's evaluation images) does not start its workers again at every evaluation."""
    cuda = torch.device(device).type == "cuda"
    ds = CatalogueImages(cat, test_transform(tuple(image_size), mean_std), tuple(image_size))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=to_tensor_batch,
                      pin_memory=cuda, persistent_workers=cuda and workers > 0)


@torch.no_grad()
def extract_features(
    model: ReIDNet, cat: Catalogue, image_size, batch_size: int = 64, workers: int = 0,
    device: torch.device | str = "cpu", progress: bool = True, desc: str = "features", amp: bool = False,
    loader: DataLoader | None = None,
) -> np.ndarray:
    """L2-normalised embeddings of every catalogue image, in catalogue order; mixed precision
    on CUDA when ``amp`` (``train.amp``). ``loader``: a :func:`feature_loader` of ``cat`` to reuse."""
    device = torch.device(device)
    loader = loader or feature_loader(cat, image_size, model.mean_std, batch_size, workers, device)
    was_training = model.training
    model.eval().to(device)
    out = torch.empty((len(cat), model.feat_dim), dtype=torch.float32)
    use_amp = amp and device.type == "cuda"
    for imgs, idx in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with torch.autocast(device_type=device.type, enabled=use_amp):
            f = model(imgs.to(device, non_blocking=True))
        out[idx] = f.float().cpu()
    model.train(was_training)
    return out.numpy()


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
