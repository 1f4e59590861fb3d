"""Ray Train: the SpCL trainer under DDP across N workers (a GPU each when the Ray cluster
has GPUs, NCCL; else gloo on CPUs).

It runs :class:`SpCLTrainer` with :class:`RayDDP` as its distribution, which changes only
what distribution changes: each worker trains on its slice of every global PK batch (DDP
averages the gradients); the hybrid memory is updated with every worker's batch, gathered in
rank order, so all copies stay identical; feature extraction is split across workers and
gathered; clustering and pair mining run once per epoch on rank 0 (which alone writes the
annotation journal; it uses its own CPUs and GPU, while the other ranks wait for its labels)
and the labels are broadcast; checkpoints go through ``ray.train.report`` (the last two are
kept) and a ``FailureConfig`` restarts killed workers from the last one, with their
constraints. Checkpoints go to the ``storage`` setting (:mod:`aas_ray.orchestration.storage`),
which every node can reach.

Each worker reserves a GPU (when used) and an equal share of its node's CPUs, and sizes its
thread pools to that share; the check that the workers fit the cluster comes first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from aas_ray.checks import InputError
from aas_ray.config import Config
from aas_ray.experiment.run_folder import RunFolder
from aas_ray.experiment.trainer import SpCLTrainer
from aas_ray.orchestration.resources import plan_ddp, use_threads
from aas_ray.orchestration.storage import CHECKPOINTS_KEPT, folder_checkpoint, restore_folder

log = logging.getLogger(__name__)


class RayDDP:
    """The trainer's distribution (see :class:`~aas_ray.experiment.distribution.SingleProcess`)
    as worker ``rank`` of ``world`` Ray Train workers, on ``device``."""

    def __init__(self, cfg: Config, rank: int, world: int, device: torch.device):
        if cfg.train.batch_size % (cfg.train.num_instances * world):
            raise InputError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of num_instances x "
                             f"workers ({cfg.train.num_instances} x {world})")
        self.rank, self.world, self.device = rank, world, device
        self.per = cfg.train.batch_size // world  # images of each global batch a worker trains on
        self._shares: dict[int, tuple] = {}  # this rank's part of each catalogue it extracts
        self._global_batches = iter(())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        return prepare_model(model, move_to_device=False)

    def shard(self, batches):
        """The same global PK batches on every worker; each trains on its slice of each batch."""
        self._global_batches = iter(batches)
        return [b[self.rank * self.per:(self.rank + 1) * self.per] for b in batches]

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_batch(self, feats, idx):
        """Every worker's features, gathered in rank order, with this step's global batch: the
        ranks' slices in rank order are that batch, known here on the host, so the update
        needs no gather of the indices and no host sync."""
        batch = torch.tensor(next(self._global_batches))
        per = batch.numel() // self.world
        if not torch.equal(idx, batch[self.rank * per:(self.rank + 1) * per]):
            raise RuntimeError(f"rank {self.rank}: the loader's batch is not this rank's slice of the global batch")
        return self._gather(feats.float()), batch

    def share(self, cat):
        """This rank's contiguous part of ``cat`` (the same object each time it is asked)."""
        if id(cat) not in self._shares:
            n = len(cat)
            per = -(-n // self.world)
            self._shares[id(cat)] = (cat, cat.subset(np.arange(self.rank * per, min((self.rank + 1) * per, n))))
        return self._shares[id(cat)][1]

    def gather_rows(self, local: np.ndarray, n: int) -> np.ndarray:
        per = -(-n // self.world)
        buf = torch.zeros(per, local.shape[1], device=self.device)
        buf[: len(local)] = torch.from_numpy(local).to(self.device)
        return self._gather(buf).cpu().numpy()[:n]

    def broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def checkpointed(self, epoch: int, metrics: dict, folder: RunFolder) -> None:
        """Ray Train hears of the epoch; rank 0 hands it the run folder's durable files."""
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        numeric["epoch"] = epoch
        if self.is_main:
            with folder_checkpoint(folder, ray.train.Checkpoint) as checkpoint:
                ray.train.report(numeric, checkpoint=checkpoint)
        else:
            ray.train.report(numeric)


def train_loop_per_worker(config: dict) -> None:
    from aas_ray.orchestration.mlflow_tracking import MlflowTracker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_threads(config["threads"])
    cfg = Config.model_validate_json(config["cfg"])
    folder = RunFolder(config["run_dir"])
    distribution = RayDDP(cfg, rank, world, ray.train.torch.get_device())
    if ctx.get_local_rank() == 0:
        # Every node needs the last checkpoint in its run folder: each rank loads its own
        # copy of the model, memory and optimiser state from it (a node new to the run, or
        # one whose folder is behind, takes the last reported checkpoint).
        folder.dir.mkdir(parents=True, exist_ok=True)
        restore_folder(ray.train.get_checkpoint(), folder)
    dist.barrier()
    nodes = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    tracker = MlflowTracker(config["uri"], config["run_id"]) if rank == 0 and config.get("uri") else None
    if tracker is not None:
        tracker.set_tag("ray_nodes", ",".join(nodes))  # the node of each rank, in rank order
    trainer = SpCLTrainer(cfg, folder, tracker, progress=False, device=distribution.device, dist=distribution)
    trainer.state.tracking_run_id = config.get("run_id")
    trainer.run()


def check_workers(num_workers: int, use_gpu: bool | None = None) -> tuple[bool, int]:
    """``(use_gpu, CPUs per worker)`` of ``num_workers`` on the Ray cluster (``RAY_ADDRESS``, or
    a local one started now); workers the cluster cannot place are an :class:`InputError`."""
    if not ray.is_initialized():
        ray.init()
    return plan_ddp(num_workers, [n["Resources"] for n in ray.nodes() if n["Alive"]], use_gpu)


def train_distributed(cfg: Config, run_dir: Path, num_workers: int, uri: str | None = None, run_id: str | None = None,
                      max_failures: int = 2, use_gpu: bool | None = None, storage_path: str | None = None):
    """Run the trainer on ``num_workers`` Ray Train workers; returns Ray's Result.

    ``use_gpu`` None: GPUs when the Ray cluster has any. More workers than the cluster can
    place (a GPU each, with GPUs) is an :class:`InputError` before anything starts.
    ``storage_path``: where Ray Train keeps its checkpoints (default: ``ray_train`` beside
    the run folder, which only this machine sees)."""
    use_gpu, cpus = check_workers(num_workers, use_gpu)
    log.info("DDP: %d workers, each with %s%d CPU(s)", num_workers, "a GPU and " if use_gpu else "", cpus)
    run_dir = Path(run_dir).resolve()
    storage_path = storage_path or str(run_dir.parent / "ray_train")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump_json(), "run_dir": str(run_dir), "uri": uri, "run_id": run_id,
                           "threads": cpus},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"train-{run_dir.name}", storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT)),
    )
    return trainer.fit()
