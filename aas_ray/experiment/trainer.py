"""SpCL training with AL cycles (docs/method.md §10, Algorithm 1): one process, CPU or one GPU.

A run, in the order it meets its parts:

* **set-up** (``__init__``): the experiment (checked catalogue, zero-shot features, split),
  the model, the hybrid memory initialised with the zero-shot features, the optimiser, the
  constraint store replayed from the run's journal, the AL cycle; then the checkpoint, if
  the run folder holds one.
* **the epoch loop** (:meth:`run`): the epoch's labels, one epoch of training, an evaluation
  every ``train.eval_every`` epochs, then the state is checkpointed and the metrics logged.
* **the labels of an epoch** (:meth:`pseudo_labels`): cluster the memory features, run the
  AL cycle due before this epoch, refine with NP3, apply the self-paced filter. With a
  person as the oracle the cycle's pairs go out to ``pending-cycle-<k>.csv`` and the run
  pauses (:class:`RunOutcome` says so); ``--resume`` imports the answers and goes on.
* **the end** (:meth:`export`): tables, final weights, and what the run leaves its user:
  the individuals of the training images, their embeddings and the "new individual"
  threshold (docs/method.md §16).

Distribution (Ray Train DDP) lives in :mod:`aas_ray.orchestration.ddp`, which overrides
the hooks marked below. Whoever needs to hear of each finished epoch (a Ray Tune trial
reporting to its scheduler) passes ``on_epoch``: it is called after the epoch's checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from aas_ray.al import ConstraintStore, SimulatedOracle, total_pairs
from aas_ray.checks import InputError
from aas_ray.cluster import ClusterViews, build_views
from aas_ray.config import Config, dump_config
from aas_ray.data.images import CatalogueImages, PKSampler, to_tensor_batch, train_transform
from aas_ray.eval import clustering_metrics
from aas_ray.experiment.journal import AnnotationJournal
from aas_ray.experiment.checkpoint import (RunState, load_checkpoint, restore_optimizer, restore_scaler,
                                          save_checkpoint)
from aas_ray.experiment.cycle import SAMPLED, ALCycle, Pending
from aas_ray.experiment.individuals import write_run_outputs
from aas_ray.experiment.labels import label_diagnostics, refine, training_labels
from aas_ray.experiment.pending import PersonInTheLoop, write_image_table
from aas_ray.experiment.prepare import Experiment, prepare_experiment, save_split
from aas_ray.experiment.spcl import HybridMemory
from aas_ray.experiment.tracker import NullTracker, Tracker
from aas_ray.experiment.zeroshot import evaluate_split
from aas_ray.models import build_model, extract_features, feature_loader, resolve_device

log = logging.getLogger(__name__)

# The summed loss is read (one host sync) every this many steps and at the end of an epoch: a
# loss gone NaN or infinite stops the run within that many steps.
LOSS_CHECK_EVERY = 50

# ``on_epoch(epoch, metrics, run_dir)``: an epoch is done, its state checkpointed in run_dir
# and its metrics (``eval/*`` on evaluated epochs) logged.
EpochListener = Callable[[int, dict, Path], None]


@dataclass
class RunOutcome:
    """How :meth:`SpCLTrainer.run` ended: finished, or paused for a person's answers."""

    finished: bool
    final: dict
    pending_file: Path | None = None


@dataclass
class EpochLabels:
    labels: np.ndarray
    metrics: dict


def build_views_local(x: np.ndarray, cfg: Config, need_b: bool) -> ClusterViews:
    """The trainer's clustering of its memory features, in this process (the default
    ``clusterer``; under Ray Train a clustering actor runs the same call)."""
    return build_views(x, **cfg.cluster.view_params(), self_paced=True, need_b=need_b)


class SpCLTrainer:
    """The AL training loop of one config in one run folder."""

    def __init__(self, cfg: Config, run_dir: Path, tracker: Tracker | None = None, progress: bool = True,
                 experiment: Experiment | None = None, device: torch.device | None = None,
                 on_epoch: EpochListener | None = None):
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tracker = tracker or NullTracker()
        self.on_epoch = on_epoch
        self.progress = progress
        self.device = device or resolve_device(cfg.model.device)
        self.state = RunState.load(self.dir / "state.json")
        self.journal = AnnotationJournal(self.dir / "annotations.jsonl")
        # Where the per-epoch clustering runs: here, or a Ray actor (orchestration layer).
        self.clusterer = build_views_local
        self.exp = experiment or prepare_experiment(cfg, progress)
        # Seeded after the experiment is ready: preparing it may build a backbone to fill the
        # feature cache (drawing from torch's generator) or find the cache full, and a run must
        # not depend on which (a fresh machine and a second run of the same seed train alike).
        torch.manual_seed(cfg.seed)
        self.train_cat = self.exp.train_cat
        self.truth = self.exp.truth
        n = len(self.train_cat)
        if n < 2:
            raise InputError("the training pool holds fewer than 2 images")
        self.eval_rows = np.union1d(self.exp.split.query, self.exp.split.gallery)
        # Only queries and gallery exemplars are compared; the other images need no features.
        self.eval_cat = self.exp.data.cat.subset(self.eval_rows)
        self._loaders: dict[int, tuple] = {}
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: the fastest kernels, chosen once
        self.model = build_model(cfg.model).to(self.device)
        if cuda and cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.memory = HybridMemory(self.model.feat_dim, n, cfg.train.temp, cfg.train.momentum).to(self.device)
        self.memory.features.copy_(torch.from_numpy(self.exp.train_features))
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused Adam on CUDA takes the AMP scale on the device: GradScaler.step needs no host sync.
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=cuda)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.train.step_size, cfg.train.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.train.amp)
        self.rng = np.random.default_rng(cfg.seed)
        self.store = self._replay_journal(n)
        self.oracle = SimulatedOracle(self.truth, cfg.al.oracle_noise, cfg.seed)
        self.cycle = self.person = None
        if cfg.al.strategy in SAMPLED:
            self.cycle = ALCycle(cfg, n, self.store, self.rng, self.oracle if cfg.al.oracle == "simulated" else None,
                                 self.journal, self.dir / "pairs.csv")
            self.person = PersonInTheLoop(self.dir, self.train_cat, self.store, self.cycle)
        ckpt = self.dir / "checkpoint.pt"
        if ckpt.is_file():
            self._load_checkpoint(ckpt)
        self.train_module = self.wrap_model(self.model)
        if self.is_main:
            (self.dir / "config.yaml").write_text(dump_config(cfg))
            save_split(self.exp.data.cat, self.exp.split, self.dir / "split.csv")
            if cfg.al.oracle == "human":
                write_image_table(self.dir, self.train_cat)

    # ---- hooks the DDP trainer overrides --------------------------------------------
    @property
    def is_main(self) -> bool:
        return True

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module used for training steps (DDP wraps it; here it is the model itself)."""
        return model

    def my_batches(self, batches: list[list[int]]) -> list[list[int]]:
        """This process's share of the epoch's global PK batches (all of them here)."""
        return batches

    def update_memory(self, feats: torch.Tensor, idx: torch.Tensor) -> None:
        """The memory update of a step; ``idx``: the batch's indices on the host."""
        self.memory.update(feats, idx)

    def extract(self, cat) -> np.ndarray:
        """Features of ``cat`` (the evaluation images); its loader is kept for the next evaluation."""
        return extract_features(self.model, cat, self.cfg.model.image_size, self.cfg.model.batch_size,
                                self.cfg.model.workers, self.device, self.progress, desc="eval features",
                                amp=self.scaler.is_enabled(), loader=self.loader_of(cat))

    def loader_of(self, cat) -> torch.utils.data.DataLoader:
        """The feature loader of ``cat``, made once per catalogue object (held here, so its id
        stays its own)."""
        if id(cat) not in self._loaders:
            m = self.cfg.model
            self._loaders[id(cat)] = (cat, feature_loader(cat, m.image_size, self.model.mean_std, m.batch_size,
                                                          m.workers, self.device))
        return self._loaders[id(cat)][1]

    def epoch_labels(self, epoch: int) -> EpochLabels | Pending:
        """This epoch's labels (DDP: computed once on rank 0, then broadcast)."""
        return self.pseudo_labels(epoch)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """Called after each checkpoint (Ray Train reports it from here)."""

    # ---- durable state --------------------------------------------------------------
    def _replay_journal(self, n: int) -> ConstraintStore:
        records = self.journal.read()
        if len(records) < self.state.answers:
            raise InputError(
                f"{self.journal.path} holds {len(records)} answers but the run's last checkpoint "
                f"recorded {self.state.answers}: answers were lost (a damaged or truncated journal); restore "
                "the journal from a backup before resuming")
        return self.journal.load_store(n, records)

    def save_state(self) -> None:
        self.state.answers = self.journal.count()
        self.state.save(self.dir / "state.json")

    def _checkpoint(self) -> None:
        save_checkpoint({
            "model": self.model.state_dict(), "memory": self.memory.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "oracle_rng": self.oracle.rng.bit_generator.state,
        }, self.dir / "checkpoint.pt")
        self.save_state()

    def _load_checkpoint(self, path: Path) -> None:
        ck = load_checkpoint(path, self.device)
        self.model.load_state_dict(ck["model"])
        self.memory.load_state_dict(ck["memory"])
        restore_optimizer(self.optimizer, ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        restore_scaler(self.scaler, ck["scaler"])
        self.rng.bit_generator.state = ck["rng"]
        self.oracle.rng.bit_generator.state = ck["oracle_rng"]
        torch.set_rng_state(ck["torch_rng"].cpu())
        log.info("resumed from %s after epoch %d (%d answers on record)", path, self.state.epoch_done,
                 len(self.store.annotations))

    def log_step(self, metrics: dict, step: int) -> None:
        """Metrics of a finished step: saved in the state first, then logged, then marked
        logged, so a kill in between never loses them (the next run logs what is left)."""
        if not self.is_main:
            return
        self.state.unlogged.append({"step": step, "metrics": metrics})
        self.save_state()
        self.flush_metrics()

    def flush_metrics(self) -> None:
        while self.state.unlogged:
            item = self.state.unlogged[0]
            self.tracker.log_metrics_once(item["metrics"], step=item["step"])
            self.state.unlogged.pop(0)
            self.save_state()

    # ---- AL cycles and labels -------------------------------------------------------
    def cycle_at(self, epoch: int) -> int | None:
        """1-based AL cycle that runs before ``epoch``, if any (epochs 0, every, 2*every, ...)."""
        al = self.cfg.al
        if self.cycle is None or epoch % al.every:
            return None
        c = epoch // al.every + 1
        return c if c <= al.cycles else None

    def pseudo_labels(self, epoch: int) -> EpochLabels | Pending:
        cfg = self.cfg
        if cfg.al.strategy == "supervised":
            # The skyline: every training image labelled with its true identity, no clustering.
            return EpochLabels(self.true_labels(), {})
        x = self.memory.features.detach().float().cpu().numpy()
        c = self.cycle_at(epoch)
        done = c is None or any(r["cycle"] == c for r in self.state.cycles)
        metrics: dict = {}
        if c is not None and self.state.pending and self.state.pending["cycle"] == c:
            pending = self.person.pending(self.state)
            if not self.person.path(c).is_file() and (self.store.answers_for(pending.pairs) < 0).any():
                log.warning("%s is missing: writing the same pairs again", self.person.path(c))
                return pending
            row = self.person.take_back(self.state)
            self.save_state()
            self._keep_cycle_row(row)
            metrics.update(cycle_metrics(row))
            done = True
        views = self.clusterer(x, cfg, not done)
        # A cycle cut short by a crash has no row yet: it runs again and asks only the rest.
        if not done:
            outcome = self.cycle.run(c, x, views)
            if outcome.pending is not None:
                # what the person may ask to see next to a pair: each side's pseudo-cluster now
                outcome.pending.clusters = refine(views.labels_a, self.store, x)
                return outcome.pending
            self._keep_cycle_row(outcome.row)
            metrics.update(cycle_metrics(outcome.row))
        labels, refined, self.state.indep_thres, stats = training_labels(views, self.store, x, self.state.indep_thres)
        q = clustering_metrics(refined, self.truth)
        metrics.update({"views/clusters": stats["clusters"], "views/instances": stats["instances"],
                        "views/demoted": stats["demoted"], "views/outliers": q["outliers"],
                        "views/eps": views.eps, "views/knn_recall": views.knn_recall,
                        "views/nmi": q["nmi"], "views/ari": q["ari"],
                        "views/pair_precision": q["pair_precision"], "views/pair_recall": q["pair_recall"],
                        "views/pair_f1": q["pair_f1"], "oracle/constraints_ml": int(self.store.must_links().shape[0]),
                        "oracle/constraints_cl": int(self.store.cannot_links().shape[0])})
        metrics.update(label_diagnostics(views.labels_a, self.store, refined, labels, self.truth))
        return EpochLabels(labels, metrics)

    def true_labels(self) -> np.ndarray:
        return np.unique(self.truth, return_inverse=True)[1].astype(np.int64)

    def final_labels(self, x: np.ndarray) -> np.ndarray:
        """The individuals at the end (docs/method.md §16): the final memory features clustered
        as for one more epoch and NP3-refined with every answer (the skyline: the truth)."""
        if self.cfg.al.strategy == "supervised":
            return self.true_labels()
        return refine(self.clusterer(x, self.cfg, False).labels_a, self.store, x)

    def _keep_cycle_row(self, row: dict) -> None:
        self.state.cycles = [r for r in self.state.cycles if r["cycle"] != row["cycle"]] + [row]

    # ---- training and evaluation ------------------------------------------------------
    def train_epoch(self, labels: np.ndarray, epoch: int) -> dict:
        cfg = self.cfg.train
        self.memory.labels.copy_(torch.from_numpy(labels).to(self.device))
        size = tuple(self.cfg.model.image_size)
        ds = CatalogueImages(self.train_cat, train_transform(size, self.model.mean_std), size)
        order = np.fromiter(PKSampler(labels, cfg.batch_size, cfg.num_instances, cfg.iters,
                                      seed=self.cfg.seed * 1000 + epoch), dtype=np.int64)
        batches = order[: order.size // cfg.batch_size * cfg.batch_size].reshape(-1, cfg.batch_size).tolist()
        loader = DataLoader(ds, batch_sampler=self.my_batches(batches), num_workers=cfg.workers,
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
            self.update_memory(f.detach(), idx)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach()
            steps += 1
            seen += imgs.size(0)
            if steps % LOSS_CHECK_EVERY == 0:
                self._finite_loss(total, steps, epoch)
        mean = self._finite_loss(total, steps, epoch) / max(steps, 1)
        dt = time.perf_counter() - t0
        self.scheduler.step()
        return {"train/loss": mean, "train/images_per_s": seen / dt, "train/lr": self.optimizer.param_groups[0]["lr"]}

    @staticmethod
    def _finite_loss(total: torch.Tensor, steps: int, epoch: int) -> float:
        value = total.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} within the {LOSS_CHECK_EVERY} steps up to step {steps} "
                                     f"of epoch {epoch}; lower train.lr")
        return value

    def evaluate(self, step: int) -> dict:
        if step == 0 and (self.cfg.model.weights or self.cfg.model.pretrained):
            # The untrained backbone with fixed weights is the one the experiment's features
            # came from: its evaluation needs no new pass over the images.
            feats = self.exp.features
        else:
            part = self.extract(self.eval_cat)
            feats = np.zeros((len(self.exp.data.cat), part.shape[1]), dtype=np.float32)
            feats[self.eval_rows] = part
        m = evaluate_split(feats, self.exp.data.identities, self.exp.split)
        asked = len(self.store.annotations)
        row = {"step": step, **m, "utilised_budget": asked / total_pairs(len(self.train_cat)), "pairs": asked}
        self.state.evals = [e for e in self.state.evals if e["step"] != step] + [row]
        return {f"eval/{k}": v for k, v in m.items()} | {"eval/utilised_budget": row["utilised_budget"],
                                                        "eval/pairs": asked}

    def run(self) -> RunOutcome:
        """Train to the end, or to the next cycle waiting for a person's answers."""
        cfg = self.cfg
        self.flush_metrics()
        if self.state.epoch_done < 0 and not any(e["step"] == 0 for e in self.state.evals):
            self.log_step(self.evaluate(0), step=0)  # zero-shot, budget 0
        for epoch in range(self.state.epoch_done + 1, cfg.train.epochs):
            got = self.epoch_labels(epoch)
            if isinstance(got, Pending):
                path = None
                if self.is_main:  # one writer of the run folder
                    path = self.person.hand_out(got, self.state)
                    self.save_state()
                return RunOutcome(False, self.state.evals[-1] if self.state.evals else {}, path)
            metrics = dict(got.metrics)
            metrics.update(self.train_epoch(got.labels, epoch))
            last = epoch == cfg.train.epochs - 1
            if (epoch + 1) % cfg.train.eval_every == 0 or last:
                metrics.update(self.evaluate(epoch + 1))
            self.state.epoch_done = epoch
            self.state.finished = last
            if self.is_main:
                self.state.unlogged.append({"step": epoch + 1, "metrics": metrics})
                self._checkpoint()
                self.flush_metrics()
            self.end_epoch(epoch, metrics)
            if self.is_main and self.on_epoch is not None:
                self.on_epoch(epoch, metrics, self.dir)
            log.info("epoch %d: loss %.4f, %s clusters, %s instances, train-label pair F1 %s%s", epoch,
                     metrics["train/loss"], metrics.get("views/clusters", "-"), metrics.get("views/instances", "-"),
                     f"{metrics['labels/train_f1']:.3f}" if "labels/train_f1" in metrics else "-",
                     f", mAP {metrics['eval/mAP']:.4f}" if "eval/mAP" in metrics else "")
        embeddings = self.final_embeddings()
        if self.is_main:
            self.export(*embeddings)
        return RunOutcome(True, self.state.evals[-1] if self.state.evals else {})

    def final_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The final model's embeddings of the training images and of the queries, in one pass
        (under DDP every worker embeds its share)."""
        split = self.exp.split
        feats = self.extract(self.exp.data.cat.subset(np.concatenate([split.train, split.query])))
        return feats[:split.train.size], feats[split.train.size:]

    def export(self, train_embeddings: np.ndarray, query_embeddings: np.ndarray) -> None:
        """Tables, final weights, the individuals, their embeddings and the open-set threshold
        in the run folder (the tracker uploads them)."""
        if self.state.cycles:
            pd.DataFrame(self.state.cycles).to_csv(self.dir / "cycles.csv", index=False)
        pd.DataFrame(self.state.evals).to_csv(self.dir / "evals.csv", index=False)
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.model.state_dict().items()},
                  str(self.dir / "weights.safetensors"))
        x = self.memory.features.detach().float().cpu().numpy()
        split = self.exp.split
        known = np.isin(self.exp.data.identities[split.query], split.known_identities)
        open_set = write_run_outputs(self.dir, self.train_cat, self.final_labels(x), x,
                                     self.store.ml_closure_labels() >= 0, train_embeddings, query_embeddings, known)
        log.info("new-individual threshold %.4f (Youden's J on %d known / %d unknown queries, AUC %.3f)",
                 open_set["threshold"], open_set["known_queries"], open_set["unknown_queries"], open_set["auc"])


def cycle_metrics(row: dict) -> dict:
    """A cycle row as ``oracle/*`` metrics (numbers only; the notes go to the log and cycles.csv)."""
    return {f"oracle/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
