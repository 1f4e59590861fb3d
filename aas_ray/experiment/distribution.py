"""How the work of one training step is spread over processes: the interface the learner and
the training loop call, and its single-process implementation (the default).

Under Ray Train DDP (:mod:`aas_ray.orchestration.ddp`) another implementation shards each
global PK batch across the workers, gathers the memory update and the extracted features in
rank order, and broadcasts rank 0's labels; here every call is the identity.
"""

from __future__ import annotations

import numpy as np
import torch


class SingleProcess:
    """One process does all the work: nothing to shard, gather or broadcast."""

    is_main = True

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that takes the training steps (DDP wraps the model; here it is the model)."""
        return model

    def shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This process's share of the epoch's global PK batches (all of them here)."""
        return batches

    def gather_batch(self, feats: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features and image indices of a whole step's batch, for the memory update;
        ``idx``: this process's indices, on the host."""
        return feats, idx

    def share(self, cat):
        """The part of a catalogue this process extracts features of (the whole of it here)."""
        return cat

    def gather_rows(self, local: np.ndarray, n: int) -> np.ndarray:
        """The features of all ``n`` images of a catalogue from each process's share."""
        return local

    def broadcast(self, obj):
        """The main process's ``obj`` on every process."""
        return obj

    def checkpointed(self, epoch: int, metrics: dict, folder) -> None:
        """Called on every process once epoch ``epoch`` is checkpointed in ``folder``."""
