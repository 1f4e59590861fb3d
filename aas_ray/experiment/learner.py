"""The learner of SpCL training (docs/method.md §10): the model, the hybrid memory initialised
with the zero-shot features, the optimiser, its schedule and the AMP loss scale; one epoch
on given labels, feature extraction, and their state for a checkpoint.

Where the work is spread over processes, a :class:`~aas_ray.experiment.distribution.SingleProcess`
-like object passed in says how (its DDP implementation lives in the orchestration layer).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from aas_ray.config import Config
from aas_ray.data.images import CatalogueImages, PKSampler, to_tensor_batch, train_transform
from aas_ray.experiment.checkpoint import restore_optimizer, restore_scaler
from aas_ray.experiment.distribution import SingleProcess
from aas_ray.experiment.spcl import HybridMemory
from aas_ray.models import extract_features, feature_loader

# The summed loss is read (one host sync) every this many steps and at the end of an epoch: a
# loss gone NaN or infinite stops the run within that many steps.
LOSS_CHECK_EVERY = 50


class Learner:
    """``model`` trained on ``train_cat`` against a hybrid memory started from ``features``."""

    def __init__(self, cfg: Config, model: torch.nn.Module, train_cat, features: np.ndarray, device: torch.device,
                 progress: bool = True, dist=None):
        self.cfg = cfg
        self.train_cat = train_cat
        self.device = device
        self.progress = progress
        self.dist = dist or SingleProcess()
        self._loaders: dict[int, tuple] = {}
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: the fastest kernels, chosen once
        self.model = model.to(device)
        if cuda and cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.memory = HybridMemory(self.model.feat_dim, len(train_cat), cfg.train.temp,
                                   cfg.train.momentum).to(device)
        self.memory.features.copy_(torch.from_numpy(features))
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused Adam on CUDA takes the AMP scale on the device: GradScaler.step needs no host sync.
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=cuda)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.train.step_size, cfg.train.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.train.amp)
        self.train_module = self.model

    def wrap(self) -> None:
        """The module that takes the training steps, made once the weights are final (after a
        checkpoint is loaded): DDP wraps the model."""
        self.train_module = self.dist.wrap(self.model)

    def features(self) -> np.ndarray:
        """The memory's features of the training images."""
        return self.memory.features.detach().float().cpu().numpy()

    # ---- durable state --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "memory": self.memory.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, ck: dict) -> None:
        """The learner's parts of a checkpoint, on this device (see :func:`restore_optimizer`)."""
        self.model.load_state_dict(ck["model"])
        self.memory.load_state_dict(ck["memory"])
        restore_optimizer(self.optimizer, ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        restore_scaler(self.scaler, ck["scaler"])

    # ---- one epoch --------------------------------------------------------------------
    def batches(self, labels: np.ndarray, epoch: int) -> list[list[int]]:
        """The epoch's global PK batches (the same on every process)."""
        cfg = self.cfg.train
        order = np.fromiter(PKSampler(labels, cfg.batch_size, cfg.num_instances, cfg.iters,
                                      seed=self.cfg.seed * 1000 + epoch), dtype=np.int64)
        return order[: order.size // cfg.batch_size * cfg.batch_size].reshape(-1, cfg.batch_size).tolist()

    def train_epoch(self, labels: np.ndarray, epoch: int) -> dict:
        cfg = self.cfg.train
        self.memory.labels.copy_(torch.from_numpy(labels).to(self.device))
        size = tuple(self.cfg.model.image_size)
        ds = CatalogueImages(self.train_cat, train_transform(size, self.model.mean_std), size)
        loader = DataLoader(ds, batch_sampler=self.dist.shard(self.batches(labels, epoch)), num_workers=cfg.workers,
                            collate_fn=to_tensor_batch, pin_memory=self.device.type == "cuda")
        self.train_module.train()
        # The loss is summed on the device and read every LOSS_CHECK_EVERY steps: no host sync a step.
        total = torch.zeros((), device=self.device)
        steps, seen, t0 = 0, 0, time.perf_counter()
        for imgs, idx in tqdm(loader, desc=f"epoch {epoch}", disable=not self.progress, leave=False):
            imgs = imgs.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and cfg.channels_last:
                imgs = imgs.to(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, enabled=self.scaler.is_enabled()):
                f = self.train_module(imgs)
            loss = self.memory(f.float(), idx.to(self.device, non_blocking=True))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.memory.update(*self.dist.gather_batch(f.detach(), idx))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach()
            steps += 1
            seen += imgs.size(0)
            if steps % LOSS_CHECK_EVERY == 0:
                finite_loss(total, steps, epoch)
        mean = finite_loss(total, steps, epoch) / max(steps, 1)
        dt = time.perf_counter() - t0
        self.scheduler.step()
        return {"train/loss": mean, "train/images_per_s": seen / dt, "train/lr": self.optimizer.param_groups[0]["lr"]}

    # ---- features ---------------------------------------------------------------------
    def extract(self, cat) -> np.ndarray:
        """Features of ``cat`` (each process embeds its share); its loader is kept for the next
        extraction."""
        mine = self.dist.share(cat)
        m = self.cfg.model
        local = extract_features(self.model, mine, m.image_size, m.batch_size, m.workers, self.device, self.progress,
                                 desc="eval features", amp=self.scaler.is_enabled(), loader=self.loader_of(mine))
        return self.dist.gather_rows(local, len(cat))

    def loader_of(self, cat) -> DataLoader:
        """The feature loader of ``cat``, made once per catalogue object (held here, so its id
        stays its own)."""
        if id(cat) not in self._loaders:
            m = self.cfg.model
            self._loaders[id(cat)] = (cat, feature_loader(cat, m.image_size, self.model.mean_std, m.batch_size,
                                                          m.workers, self.device))
        return self._loaders[id(cat)][1]


def finite_loss(total: torch.Tensor, steps: int, epoch: int) -> float:
    value = total.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} within the {LOSS_CHECK_EVERY} steps up to step {steps} "
                                 f"of epoch {epoch}; lower train.lr")
    return value
