"""SpCL training with AL cycles (SPEC §10, Algorithm 1): one process, CPU or one GPU.

Every epoch: cluster the memory features (views A at eps and eps ± gap), refine with
NP3 under all constraints, apply the self-paced criteria (ML-held samples are never
demoted), train ``iters`` PK batches against the hybrid memory. Every ``al.every``
epochs, an AL cycle first builds view B, samples pairs, asks the oracle and journals
the answers. State is checkpointed at each epoch end, so a killed run resumes from
the last completed epoch with the same constraints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from aas_ray.al import ConstraintStore, SimulatedOracle, Views, np3, total_pairs
from aas_ray.al.constraints import Answer
from aas_ray.al.samplers import cosine_pair_sim
from aas_ray.checks import InputError
from aas_ray.cluster import jaccard_graph
from aas_ray.cluster.views import dbscan_view, finch_view, first_non_self_neighbour, resolve_eps
from aas_ray.config import Config, dump_config
from aas_ray.eval import clustering_metrics
from aas_ray.experiment.annotations import AnnotationJournal
from aas_ray.experiment.setup import make_split, prepare_data, save_split
from aas_ray.experiment.simulate import sampler_for
from aas_ray.experiment.spcl import HybridMemory, self_paced_labels, with_instance_classes
from aas_ray.experiment.tracking import NullTracker, Tracker
from aas_ray.experiment.zeroshot import dataset_features, evaluate_split
from aas_ray.data.images import CatalogueImages, PKSampler, to_tensor_batch, train_transform
from aas_ray.models import build_model, extract_features, resolve_device

log = logging.getLogger(__name__)


class AwaitingAnnotations(Exception):
    """A human-oracle cycle wrote its pairs out; the run resumes once they are answered."""

    def __init__(self, path: Path):
        super().__init__(f"pairs for annotation written to {path}: fill its 'answer' column "
                         "(same / different / unsure) and resume the run")
        self.path = path


@dataclass
class RunState:
    epoch_done: int = -1
    tracking_run_id: str | None = None
    indep_thres: float | None = None
    cycles: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    pending_cycle: int | None = None
    finished: bool = False

    @classmethod
    def load(cls, path: Path) -> "RunState":
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def epoch_views(x: np.ndarray, cluster_cfg: dict, need_b: bool):
    """One epoch's clusterings of the memory features (SPEC §2, §10): the Jaccard graph,
    view A at eps and at eps ± gap (self-paced criteria), and view B when a cycle needs it."""
    from aas_ray.config import ClusterConfig

    cc = ClusterConfig.model_validate(cluster_cfg)
    graph = jaccard_graph(x, cc.k1, cc.k2, min_sim=cc.jaccard_min_sim)
    eps = resolve_eps(graph, cc.eps, cc.min_samples)
    a = dbscan_view(graph, eps, cc.min_samples)
    tight = dbscan_view(graph, max(eps - cc.eps_gap, 1e-3), cc.min_samples)
    loose = dbscan_view(graph, min(eps + cc.eps_gap, 0.999), cc.min_samples)
    b = None
    if need_b:
        n_a = int(np.unique(a[a >= 0]).size)
        b = finch_view(x, cc.finch_partition, max(n_a, 1), first_non_self_neighbour(graph.knn_idx),
                       cc.finch_ann_threshold)
    return graph, a, tight, loose, b


def pool_yield(pools: np.ndarray, answers: np.ndarray) -> dict:
    """Per pool: pairs asked and must-links found (how many answers one must-link costs)."""
    out = {}
    for pool in ("os", "us", "random"):
        sel = pools == pool
        if sel.any():
            out[f"asked_{pool}"] = int(sel.sum())
            out[f"ml_{pool}"] = int((answers[sel] == int(Answer.MUST_LINK)).sum())
    return out


def label_diagnostics(view_a, store, refined, train_labels, truth) -> dict:
    """Pair precision / recall / F1 against the truth of each stage that answers pass through
    (docs/method.md §9): view A alone, the must-link closure alone, the NP3-refined view A,
    and the labels the trainer uses after the self-paced filter."""
    out = {}
    stages = {"view_a": view_a, "ml_closure": store.ml_closure_labels(), "refined": refined,
              "train": with_instance_classes(train_labels)}
    for name, lab in stages.items():
        q = clustering_metrics(lab, truth)
        out.update({f"labels/{name}_precision": q["pair_precision"], f"labels/{name}_recall": q["pair_recall"],
                    f"labels/{name}_f1": q["pair_f1"]})
    return out


class SpCLTrainer:
    """The AL training loop for one config in one run folder."""

    def __init__(self, cfg: Config, run_dir: Path, tracker: Tracker | None = None, progress: bool = True):
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tracker = tracker or NullTracker()
        self.progress = progress
        self.state = RunState.load(self.dir / "state.json")
        self.journal = AnnotationJournal(self.dir / "annotations.jsonl")
        self.device = resolve_device(cfg.model.device)
        self.rank, self.world = 0, 1  # the DDP subclass sets these
        # Where the per-epoch clustering runs: here, or a Ray actor (orchestration layer).
        self.clusterer = epoch_views

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module used for training steps (DDP wraps it; here it is the model itself)."""
        return model

    def extract(self, cat) -> np.ndarray:
        return extract_features(self.model, cat, self.cfg.model.image_size, self.cfg.model.batch_size,
                                self.cfg.model.workers, self.device, self.progress, desc="eval features")

    # ---- setup ---------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.data = prepare_data(cfg, self.progress)
        ref = dataset_features(cfg, self.data, self.progress)  # the untrained backbone: fixes the gallery
        self.split = make_split(cfg, self.data, ref)
        save_split(self.data.cat, self.split, self.dir / "split.csv")
        self.train_cat = self.data.cat.subset(self.split.train)
        self.truth = self.data.identities[self.split.train]
        self.eval_rows = np.union1d(self.split.query, self.split.gallery)
        n = len(self.train_cat)
        if n < 2:
            raise InputError("the training pool holds fewer than 2 images")
        self.model = build_model(cfg.model).to(self.device)
        if self.device.type == "cuda" and cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.batch_size % (cfg.train.num_instances * self.world):
            raise InputError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of num_instances x "
                             f"workers ({cfg.train.num_instances} x {self.world})")
        self.memory = HybridMemory(self.model.feat_dim, n, cfg.train.temp, cfg.train.momentum).to(self.device)
        self.memory.features.copy_(torch.from_numpy(ref[self.split.train]))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.train.step_size, cfg.train.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.train.amp)
        self.rng = np.random.default_rng(cfg.seed)
        self.store = self.journal.load_store(n)
        self.oracle = SimulatedOracle(self.truth, cfg.al.oracle_noise, cfg.seed)
        ckpt = self.dir / "checkpoint.pt"
        if ckpt.is_file():
            self._load_checkpoint(ckpt)
        self.train_module = self.wrap_model(self.model)
        if self.is_main:
            (self.dir / "config.yaml").write_text(dump_config(cfg))

    def _checkpoint(self) -> None:
        atomic_torch_save({
            "model": self.model.state_dict(), "memory": self.memory.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "oracle_rng": self.oracle.rng.bit_generator.state,
        }, self.dir / "checkpoint.pt")
        self.state.save(self.dir / "state.json")

    def _load_checkpoint(self, path: Path) -> None:
        ck = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.memory.load_state_dict(ck["memory"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.rng.bit_generator.state = ck["rng"]
        self.oracle.rng.bit_generator.state = ck["oracle_rng"]
        torch.set_rng_state(ck["torch_rng"].cpu())
        log.info("resumed from %s after epoch %d (%d answers on record)", path, self.state.epoch_done,
                 len(self.store.annotations))

    # ---- AL cycle --------------------------------------------------------------------
    def cycle_at(self, epoch: int) -> int | None:
        """1-based AL cycle that runs before ``epoch``, if any (epochs 0, every, 2*every, ...)."""
        al = self.cfg.al
        if al.strategy in ("none", "supervised") or epoch % al.every:
            return None
        c = epoch // al.every + 1
        return c if c <= al.cycles else None

    def _pending_path(self, c: int) -> Path:
        return self.dir / f"pending-cycle-{c}.csv"

    def _ask_human(self, c: int, pairs, draw) -> None:
        paths = self.train_cat.df["path"].to_numpy()
        pd.DataFrame({"u": pairs[:, 0], "v": pairs[:, 1], "image_u": paths[pairs[:, 0]],
                      "image_v": paths[pairs[:, 1]], "pool": draw.pool, "pair_type": draw.pair_type,
                      "answer": ""}).to_csv(self._pending_path(c), index=False)
        self.state.pending_cycle = c
        self.state.save(self.dir / "state.json")
        raise AwaitingAnnotations(self._pending_path(c))

    def import_answers(self, c: int) -> int:
        """Read a filled-in pending file into the journal; every row must be answered."""
        path = self._pending_path(c)
        df = pd.read_csv(path, dtype={"answer": str}, keep_default_na=False)
        missing = df.index[df["answer"].str.strip() == ""].tolist()
        if missing:
            raise InputError(f"{path}: rows {[i + 2 for i in missing[:10]]} have no answer yet "
                             "(same / different / unsure)")
        answers = [int(Answer.parse(a)) for a in df["answer"]]
        conflicts = self.journal.record(self.store, df[["u", "v"]].to_numpy(), answers, c, "human")
        for k in conflicts:
            log.warning("contradiction in human answers: %s", k)
        self.state.pending_cycle = None
        self.state.save(self.dir / "state.json")
        path.rename(path.with_suffix(".answered.csv"))
        return len(answers)

    def run_cycle(self, c: int, x: np.ndarray, graph, labels_a: np.ndarray, labels_b: np.ndarray) -> dict:
        cfg = self.cfg
        n = x.shape[0]
        sim = graph.pair_sim if cfg.cluster.similarity == "jaccard" else cosine_pair_sim(x)
        views = Views(x, labels_a, labels_b, sim)
        already = sum(1 for a in self.store.annotations if a.cycle == c)
        budget = max(cfg.al.cycle_budget(n) - already, 0)
        prop = sampler_for(cfg, cfg.al.strategy).propose(views, self.store, budget, self.rng)
        pairs = prop.draw.pairs
        if cfg.al.oracle == "human" and len(pairs):
            self._ask_human(c, pairs, prop.draw)
        answers = self.oracle.answer(pairs)
        self.journal.record(self.store, pairs, answers, c, f"simulated:{cfg.al.strategy}")
        pd.DataFrame({"cycle": c, "u": pairs[:, 0], "v": pairs[:, 1], "pool": prop.draw.pool,
                      "pair_type": prop.draw.pair_type, "probability": prop.draw.probability,
                      "answer": [Answer(int(a)).name for a in answers]}).to_csv(
            self.dir / "pairs.csv", mode="a", header=not (self.dir / "pairs.csv").exists(), index=False)
        counts = self.store.counts()
        row = {"cycle": c, "regions": prop.stats["regions"], "U_os": prop.stats["U_os"], "U_us": prop.stats["U_us"],
               **pool_yield(prop.draw.pool, answers),
               "pairs_asked": len(pairs) + already, "asked_total": counts["asked"],
               "ml_cl_ratio": counts["must_link"] / max(counts["cannot_link"], 1),
               "utilised_budget": counts["asked"] / total_pairs(n), "contradictions": counts["contradictions"]}
        self.state.cycles = [r for r in self.state.cycles if r["cycle"] != c] + [row]
        log.info("AL cycle %d (%s): %d pairs asked, %d regions, |U_os|=%d, |U_us|=%d, utilised %.4f%%", c,
                 cfg.al.strategy, row["pairs_asked"], row["regions"], row["U_os"], row["U_us"],
                 100 * row["utilised_budget"])
        return row

    # ---- epochs ----------------------------------------------------------------------
    def pseudo_labels(self, epoch: int) -> tuple[np.ndarray, dict]:
        cfg = self.cfg
        if cfg.al.strategy == "supervised":
            # The skyline: every training image labelled with its true identity, no clustering.
            return np.unique(self.truth, return_inverse=True)[1].astype(np.int64), {}
        x = self.memory.features.detach().float().cpu().numpy()
        c = self.cycle_at(epoch)
        need_b = c is not None and not any(r["cycle"] == c for r in self.state.cycles)
        graph, a, tight, loose, b = self.clusterer(x, cfg.cluster.model_dump(mode="json"), need_b)
        metrics: dict = {}
        if c is not None:
            if self.state.pending_cycle == c:
                self.import_answers(c)
            # A cycle cut short by a crash has no row yet: it runs again and asks only the rest.
            if not any(r["cycle"] == c for r in self.state.cycles):
                metrics.update({f"al/{k}": v for k, v in self.run_cycle(c, x, graph, a, b).items()})
        ml, cl = self.store.must_links(), self.store.cannot_links()
        refined = np3(a, ml, cl, x) if ml.size or cl.size else a
        protected = np.zeros(x.shape[0], dtype=bool)
        protected[ml.ravel()] = True
        labels, self.state.indep_thres, stats = self_paced_labels(refined, tight, loose, self.state.indep_thres,
                                                                   protected)
        q = clustering_metrics(refined, self.truth)
        metrics.update({"cluster/clusters": stats["clusters"], "cluster/instances": stats["instances"],
                        "cluster/demoted": stats["demoted"], "cluster/outliers": q["outliers"],
                        "cluster/nmi": q["nmi"], "cluster/ari": q["ari"], "cluster/pair_precision": q["pair_precision"],
                        "cluster/pair_recall": q["pair_recall"], "cluster/pair_f1": q["pair_f1"],
                        "al/constraints_ml": int(ml.shape[0]), "al/constraints_cl": int(cl.shape[0])})
        metrics.update(label_diagnostics(a, self.store, refined, labels, self.truth))
        return labels, metrics

    def train_epoch(self, labels: np.ndarray, epoch: int) -> dict:
        cfg = self.cfg.train
        self.memory.labels.copy_(torch.from_numpy(labels).to(self.device))
        ds = CatalogueImages(self.train_cat, train_transform(tuple(self.cfg.model.image_size), self.model.mean_std))
        # The same global PK batches on every worker; each trains on its slice of each batch.
        order = np.fromiter(PKSampler(labels, cfg.batch_size, cfg.num_instances, cfg.iters,
                                      seed=self.cfg.seed * 1000 + epoch), dtype=np.int64)
        per = cfg.batch_size // self.world
        batches = [b[self.rank * per:(self.rank + 1) * per].tolist()
                   for b in order[: order.size // cfg.batch_size * cfg.batch_size].reshape(-1, cfg.batch_size)]
        loader = DataLoader(ds, batch_sampler=batches, num_workers=cfg.workers, collate_fn=to_tensor_batch,
                            pin_memory=self.device.type == "cuda")
        self.train_module.train()
        losses, seen, t0 = [], 0, time.perf_counter()
        for imgs, idx in tqdm(loader, desc=f"epoch {epoch}", disable=not self.progress, leave=False):
            imgs = imgs.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and cfg.channels_last:
                imgs = imgs.to(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, enabled=self.scaler.is_enabled()):
                f = self.train_module(imgs)
            idx = idx.to(self.device)
            loss = self.memory(f.float(), idx)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.update_memory(f.detach(), idx)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; lower train.lr")
            losses.append(loss.item())
            seen += imgs.size(0)
        dt = time.perf_counter() - t0
        self.scheduler.step()
        return {"train/loss": float(np.mean(losses)), "train/images_per_s": seen / dt,
                "train/lr": self.optimizer.param_groups[0]["lr"]}

    def update_memory(self, feats: torch.Tensor, idx: torch.Tensor) -> None:
        self.memory.update(feats, idx)

    def evaluate(self, step: int) -> dict:
        # Only queries and gallery exemplars are compared; the other images need no features.
        part = self.extract(self.data.cat.subset(self.eval_rows))
        feats = np.zeros((len(self.data.cat), part.shape[1]), dtype=np.float32)
        feats[self.eval_rows] = part
        m = evaluate_split(feats, self.data.identities, self.split)
        asked = len(self.store.annotations)
        row = {"step": step, **m, "utilised_budget": asked / total_pairs(len(self.train_cat)), "pairs": asked}
        self.state.evals = [e for e in self.state.evals if e["step"] != step] + [row]
        return {f"eval/{k}": v for k, v in m.items()} | {"eval/utilised_budget": row["utilised_budget"]}

    def run(self) -> dict:
        """Train to the end (or to the next human-oracle pause); returns the final metrics."""
        cfg = self.cfg
        if not hasattr(self, "model"):
            self.setup()
        if self.state.epoch_done < 0 and not any(e["step"] == 0 for e in self.state.evals):
            m0 = self.evaluate(0)  # zero-shot, budget 0
            if self.is_main:
                self.tracker.log_metrics(m0, step=0)
                self.state.save(self.dir / "state.json")
        for epoch in range(self.state.epoch_done + 1, cfg.train.epochs):
            labels, metrics = self.epoch_labels(epoch)
            metrics.update(self.train_epoch(labels, epoch))
            last = epoch == cfg.train.epochs - 1
            if (epoch + 1) % cfg.train.eval_every == 0 or last:
                metrics.update(self.evaluate(epoch + 1))
            self.state.epoch_done = epoch
            self.state.finished = last
            if self.is_main:
                self._checkpoint()
                self.tracker.log_metrics(metrics, step=epoch + 1)
            self.end_epoch(epoch, metrics)
            log.info("epoch %d: loss %.4f, %s clusters, %s instances, train-label pair F1 %s%s", epoch,
                     metrics["train/loss"], metrics.get("cluster/clusters", "-"), metrics.get("cluster/instances", "-"),
                     f"{metrics['labels/train_f1']:.3f}" if "labels/train_f1" in metrics else "-",
                     f", mAP {metrics['eval/mAP']:.4f}" if "eval/mAP" in metrics else "")
        if self.is_main:
            self.export()
        return self.state.evals[-1] if self.state.evals else {}

    def epoch_labels(self, epoch: int) -> tuple[np.ndarray, dict]:
        """Pseudo-labels for this epoch (DDP: computed once on rank 0, then broadcast)."""
        return self.pseudo_labels(epoch)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """Called after each checkpoint (Ray Train reports it from here)."""

    def export(self) -> None:
        """Tables and final weights in the run folder (the tracker uploads them)."""
        if self.state.cycles:
            pd.DataFrame(self.state.cycles).to_csv(self.dir / "cycles.csv", index=False)
        pd.DataFrame(self.state.evals).to_csv(self.dir / "evals.csv", index=False)
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.model.state_dict().items()},
                  str(self.dir / "weights.safetensors"))
