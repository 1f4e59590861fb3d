"""SpCL training with AL cycles (docs/method.md §10, Algorithm 1): the loop of one run, in
one run folder, over two parts it is given or builds:

* the :class:`~aas_ray.experiment.label_stage.LabelStage` (clusterer, AL cycle, NP3,
  self-paced filter): the labels of each epoch, or a cycle's pairs waiting for a person
  (they go out to ``pending-cycle-<k>.csv`` and the run pauses, :class:`RunOutcome` says so;
  ``--resume`` imports the answers and goes on);
* the :class:`~aas_ray.experiment.learner.Learner` (model, hybrid memory, optimiser): one
  epoch on those labels, and the features of the evaluation images.

The loop (:meth:`SpCLTrainer.run`): an evaluation at budget 0, then per epoch its labels, one
epoch of training, an evaluation every ``train.eval_every`` epochs, the checkpoint and the
metrics; at the end (:meth:`SpCLTrainer.export`) tables, final weights, and what the run
leaves its user: the individuals of the training images, their embeddings and the "new
individual" threshold (docs/method.md §16). The run folder
(:class:`~aas_ray.experiment.run_folder.RunFolder`) holds everything durable.

Distribution is an object passed in (``dist``; one process by default): Ray Train DDP gives
:mod:`aas_ray.orchestration.ddp`'s. Whoever needs to hear of each finished epoch (a Ray Tune
trial reporting to its scheduler) passes ``on_epoch``: the main process calls it after the
epoch's checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aas_ray.al import total_pairs
from aas_ray.checks import InputError
from aas_ray.config import Config, dump_config
from aas_ray.experiment.checkpoint import load_checkpoint, save_checkpoint
from aas_ray.experiment.cycle import Pending
from aas_ray.experiment.distribution import SingleProcess
from aas_ray.experiment.individuals import write_run_outputs
from aas_ray.experiment.label_stage import EpochLabels, LabelStage, build_views_local  # noqa: F401 (offered here)
from aas_ray.experiment.learner import Learner
from aas_ray.experiment.prepare import Experiment, prepare_experiment, save_split
from aas_ray.experiment.run_folder import CONFIG, CYCLES, EVALS, SPLIT, WEIGHTS, RunFolder
from aas_ray.experiment.tracker import NullTracker, Tracker
from aas_ray.experiment.zeroshot import evaluate_split
from aas_ray.models import build_model, resolve_device

log = logging.getLogger(__name__)

# ``on_epoch(epoch, metrics, folder)``: an epoch is done, its state checkpointed in the run
# folder and its metrics (``eval/*`` on evaluated epochs) logged.
EpochListener = Callable[[int, dict, RunFolder], None]


@dataclass
class RunOutcome:
    """How :meth:`SpCLTrainer.run` ended: finished, or paused for a person's answers."""

    finished: bool
    final: dict
    pending_file: Path | None = None


class SpCLTrainer:
    """The AL training loop of one config in one run folder (a :class:`RunFolder` or its path).

    Code written against the trainer as one class (a benchmark or a smoke script that
    subclasses it to time each phase) keeps working: the loop's steps are methods to wrap
    (:meth:`epoch_labels`, :meth:`train_epoch`, :meth:`evaluate`); ``model``, ``memory``,
    ``optimizer``, ``scaler``, ``device`` and ``train_cat`` read the learner's parts and
    ``clusterer`` (settable) the label stage's; this module still offers
    ``build_views_local``, the default clusterer. These only delegate."""

    def __init__(self, cfg: Config, folder: RunFolder | str | Path, tracker: Tracker | None = None,
                 progress: bool = True, experiment: Experiment | None = None, device: torch.device | None = None,
                 dist=None, on_epoch: EpochListener | None = None):
        self.cfg = cfg
        folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
        self.folder = folder
        folder.dir.mkdir(parents=True, exist_ok=True)
        self.tracker = tracker or NullTracker()
        self.dist = dist or SingleProcess()
        self.on_epoch = on_epoch
        device = device or resolve_device(cfg.model.device)
        self.state = folder.load_state()
        self.exp = experiment or prepare_experiment(cfg, progress)
        # Seeded after the experiment is ready: preparing it may build a backbone to fill the
        # feature cache (drawing from torch's generator) or find the cache full, and a run must
        # not depend on which (a fresh machine and a second run of the same seed train alike).
        torch.manual_seed(cfg.seed)
        train_cat = self.exp.train_cat
        if len(train_cat) < 2:
            raise InputError("the training pool holds fewer than 2 images")
        self.eval_rows = np.union1d(self.exp.split.query, self.exp.split.gallery)
        # Only queries and gallery exemplars are compared; the other images need no features.
        self.eval_cat = self.exp.data.cat.subset(self.eval_rows)
        self.learner = Learner(cfg, build_model(cfg.model), train_cat, self.exp.train_features, device, progress,
                               self.dist)
        store = folder.constraints(len(train_cat), state=self.state)
        self.labels = LabelStage.build(cfg, self.exp.truth, train_cat, folder, store)
        if folder.checkpoint_file.is_file():
            self._load_checkpoint()
        self.learner.wrap()
        if self.dist.is_main:
            folder.file(CONFIG).write_text(dump_config(cfg))
            save_split(self.exp.data.cat, self.exp.split, folder.file(SPLIT))
            if cfg.al.oracle == "human":
                folder.write_image_table(train_cat)

    # ---- the parts, read through the trainer (see the class docstring) ---------------
    @property
    def clusterer(self):
        """The label stage's clustering function ``(x, cfg, need_b) -> ClusterViews``."""
        return self.labels.clusterer

    @clusterer.setter
    def clusterer(self, fn) -> None:
        self.labels.clusterer = fn

    @property
    def model(self) -> torch.nn.Module:
        return self.learner.model

    @property
    def memory(self):
        return self.learner.memory

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.learner.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.learner.scaler

    @property
    def device(self) -> torch.device:
        return self.learner.device

    @property
    def train_cat(self):
        return self.learner.train_cat

    # ---- durable state --------------------------------------------------------------
    def _checkpoint(self) -> None:
        save_checkpoint({**self.learner.state_dict(), **self.labels.state_dict(), "torch_rng": torch.get_rng_state()},
                        self.folder.checkpoint_file)
        self.folder.save_state(self.state)

    def _load_checkpoint(self) -> None:
        path = self.folder.checkpoint_file
        ck = load_checkpoint(path, self.learner.device)
        self.learner.load_state_dict(ck)
        self.labels.load_state_dict(ck)
        torch.set_rng_state(ck["torch_rng"].cpu())
        log.info("resumed from %s after epoch %d (%d answers on record)", path, self.state.epoch_done,
                 len(self.labels.store.annotations))

    def log_step(self, metrics: dict, step: int) -> None:
        """Metrics of a finished step: saved in the state first, then logged, then marked
        logged, so a kill in between never loses them (the next run logs what is left)."""
        if not self.dist.is_main:
            return
        self.state.unlogged.append({"step": step, "metrics": metrics})
        self.folder.save_state(self.state)
        self.flush_metrics()

    def flush_metrics(self) -> None:
        while self.state.unlogged:
            item = self.state.unlogged[0]
            self.tracker.log_metrics_once(item["metrics"], step=item["step"])
            self.state.unlogged.pop(0)
            self.folder.save_state(self.state)

    # ---- the loop -------------------------------------------------------------------
    def epoch_labels(self, epoch: int) -> EpochLabels | Pending:
        """This epoch's labels, computed by the main process and the same on every process."""
        got = self.labels.for_epoch(epoch, self.learner.features(), self.state) if self.dist.is_main else None
        got, self.state.indep_thres, self.state.cycles = self.dist.broadcast(
            (got, self.state.indep_thres, self.state.cycles))
        return got

    def train_epoch(self, labels: np.ndarray, epoch: int) -> dict:
        """One epoch of the learner on ``labels``: its ``train/*`` metrics."""
        return self.learner.train_epoch(labels, epoch)

    def evaluate(self, step: int) -> dict:
        if step == 0 and (self.cfg.model.weights or self.cfg.model.pretrained):
            # The untrained backbone with fixed weights is the one the experiment's features
            # came from: its evaluation needs no new pass over the images.
            feats = self.exp.features
        else:
            part = self.learner.extract(self.eval_cat)
            feats = np.zeros((len(self.exp.data.cat), part.shape[1]), dtype=np.float32)
            feats[self.eval_rows] = part
        m = evaluate_split(feats, self.exp.data.identities, self.exp.split)
        asked = len(self.labels.store.annotations)
        row = {"step": step, **m, "utilised_budget": asked / total_pairs(len(self.exp.train_cat)), "pairs": asked}
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
                # one writer of the run folder
                path = self.labels.person.hand_out(got, self.state) if self.dist.is_main else None
                return RunOutcome(False, self.state.evals[-1] if self.state.evals else {}, path)
            metrics = dict(got.metrics)
            metrics.update(self.train_epoch(got.labels, epoch))
            last = epoch == cfg.train.epochs - 1
            if (epoch + 1) % cfg.train.eval_every == 0 or last:
                metrics.update(self.evaluate(epoch + 1))
            self.state.epoch_done = epoch
            self.state.finished = last
            if self.dist.is_main:
                self.state.unlogged.append({"step": epoch + 1, "metrics": metrics})
                self._checkpoint()
                self.flush_metrics()
            self.dist.checkpointed(epoch, metrics, self.folder)
            if self.dist.is_main and self.on_epoch is not None:
                self.on_epoch(epoch, metrics, self.folder)
            log.info("epoch %d: loss %.4f, %s clusters, %s instances, train-label pair F1 %s%s", epoch,
                     metrics["train/loss"], metrics.get("views/clusters", "-"), metrics.get("views/instances", "-"),
                     f"{metrics['labels/train_f1']:.3f}" if "labels/train_f1" in metrics else "-",
                     f", mAP {metrics['eval/mAP']:.4f}" if "eval/mAP" in metrics else "")
        embeddings = self.final_embeddings()
        if self.dist.is_main:
            self.export(*embeddings)
        return RunOutcome(True, self.state.evals[-1] if self.state.evals else {})

    # ---- the end --------------------------------------------------------------------
    def final_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The final model's embeddings of the training images and of the queries, in one pass
        (under DDP every worker embeds its share)."""
        split = self.exp.split
        feats = self.learner.extract(self.exp.data.cat.subset(np.concatenate([split.train, split.query])))
        return feats[:split.train.size], feats[split.train.size:]

    def export(self, train_embeddings: np.ndarray, query_embeddings: np.ndarray) -> None:
        """Tables, final weights, the individuals, their embeddings and the open-set threshold
        in the run folder (the tracker uploads them)."""
        if self.state.cycles:
            pd.DataFrame(self.state.cycles).to_csv(self.folder.file(CYCLES), index=False)
        pd.DataFrame(self.state.evals).to_csv(self.folder.file(EVALS), index=False)
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.learner.model.state_dict().items()},
                  str(self.folder.file(WEIGHTS)))
        x = self.learner.features()
        split = self.exp.split
        known = np.isin(self.exp.data.identities[split.query], split.known_identities)
        open_set = write_run_outputs(self.folder.dir, self.exp.train_cat, self.labels.final_labels(x), x,
                                     self.labels.store.ml_closure_labels() >= 0, train_embeddings, query_embeddings,
                                     known)
        log.info("new-individual threshold %.4f (Youden's J on %d known / %d unknown queries, AUC %.3f)",
                 open_set["threshold"], open_set["known_queries"], open_set["unknown_queries"], open_set["auc"])
