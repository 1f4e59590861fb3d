"""Ray Train: the SpCL trainer under DDP across N workers (GPUs when present, gloo on CPU).

It wraps :class:`SpCLTrainer` and changes only what distribution changes: each worker
trains on its slice of every global PK batch (DDP averages the gradients); the hybrid
memory is updated with every worker's batch, gathered in rank order, so all copies stay
identical; feature extraction is split across workers and gathered; clustering and pair
mining run once per epoch on rank 0 (which alone writes the annotation journal) and the
labels are broadcast; checkpoints go through ``ray.train.report`` and a ``FailureConfig``
restarts killed workers from the last one, with their constraints.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

from aas_ray.checks import InputError
from aas_ray.config import Config
from aas_ray.experiment.checkpoint import RunState
from aas_ray.experiment.trainer import SpCLTrainer
from aas_ray.experiment.tracking import NullTracker
from aas_ray.models import extract_features

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("checkpoint.pt", "state.json", "annotations.jsonl", "pairs.csv")


class DistributedSpCLTrainer(SpCLTrainer):
    def __init__(self, cfg: Config, run_dir: Path, tracker, rank: int, world: int):
        if cfg.train.batch_size % (cfg.train.num_instances * world):
            raise InputError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of num_instances x "
                             f"workers ({cfg.train.num_instances} x {world})")
        self.rank, self.world = rank, world
        super().__init__(cfg, run_dir, tracker if rank == 0 else NullTracker(), progress=False,
                         device=ray.train.torch.get_device())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model):
        return prepare_model(model, move_to_device=False)

    def my_batches(self, batches):
        """The same global PK batches on every worker; each trains on its slice of each batch."""
        per = self.cfg.train.batch_size // self.world
        return [b[self.rank * per:(self.rank + 1) * per] for b in batches]

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def update_memory(self, feats, idx) -> None:
        self.memory.update(self._gather(feats.float()), self._gather(idx))

    def extract(self, cat) -> np.ndarray:
        n = len(cat)
        per = -(-n // self.world)
        mine = np.arange(self.rank * per, min((self.rank + 1) * per, n))
        local = extract_features(self.model, cat.subset(mine), self.cfg.model.image_size, self.cfg.model.batch_size,
                                 self.cfg.model.workers, self.device, False)
        buf = torch.zeros(per, local.shape[1], device=self.device)
        buf[: len(mine)] = torch.from_numpy(local).to(self.device)
        return self._gather(buf).cpu().numpy()[:n]

    def epoch_labels(self, epoch: int):
        """Rank 0 clusters, runs the cycle and refines; every rank gets the same labels, or
        the same pause when the cycle's pairs wait for a person."""
        box = [None]
        if self.is_main:
            got = self.pseudo_labels(epoch)
            box = [(got, self.state.indep_thres, self.state.cycles)]
        dist.broadcast_object_list(box, src=0)
        got, self.state.indep_thres, self.state.cycles = box[0]
        return got

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        numeric["epoch"] = epoch
        if self.is_main:
            with tempfile.TemporaryDirectory() as tmp:
                for name in CHECKPOINT_FILES:
                    if (self.dir / name).exists():
                        shutil.copy2(self.dir / name, Path(tmp) / name)
                ray.train.report(numeric, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(numeric)


def _restore(run_dir: Path) -> None:
    """After a restart on a fresh node, bring the last reported checkpoint into the run folder."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return
    with ckpt.as_directory() as d:
        theirs = RunState.load(Path(d) / "state.json").epoch_done
        ours = RunState.load(run_dir / "state.json").epoch_done
        if theirs > ours or not (run_dir / "checkpoint.pt").exists():
            for name in CHECKPOINT_FILES:
                if (Path(d) / name).exists():
                    shutil.copy2(Path(d) / name, run_dir / name)


def train_loop_per_worker(config: dict) -> None:
    from aas_ray.orchestration.tracking import MlflowTracker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = Config.model_validate_json(config["cfg"])
    run_dir = Path(config["run_dir"])
    if ctx.get_local_rank() == 0:
        # Every node needs the last checkpoint in its run folder: each rank loads its own
        # copy of the model, memory and optimiser state from it.
        run_dir.mkdir(parents=True, exist_ok=True)
        _restore(run_dir)
    dist.barrier()
    tracker = MlflowTracker(config["uri"], config["run_id"]) if rank == 0 and config.get("uri") else None
    trainer = DistributedSpCLTrainer(cfg, run_dir, tracker, rank, world)
    trainer.state.tracking_run_id = config.get("run_id")
    if rank == 0:
        # Clustering and pair mining run in the dataset's actor (FAISS on its GPU, if any),
        # not in the training worker.
        from aas_ray.orchestration.actors import ActorClusterer, ClusteringActor

        actor = ClusteringActor.options(num_cpus=0).remote(cfg.data.name)
        trainer.clusterer = ActorClusterer(actor)
    trainer.run()


def train_distributed(cfg: Config, run_dir: Path, num_workers: int, uri: str | None = None, run_id: str | None = None,
                      max_failures: int = 2, use_gpu: bool | None = None):
    """Run the trainer on ``num_workers`` Ray Train workers; returns Ray's Result."""
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    run_dir = Path(run_dir).resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump_json(), "run_dir": str(run_dir), "uri": uri, "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=f"train-{run_dir.name}", storage_path=str(run_dir.parent / "ray_train"),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()
