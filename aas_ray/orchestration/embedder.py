"""A finished run's network as an MLflow model (PyTorch flavour): images in (float32,
N x 3 x H x W, prepared as the model's metadata says), L2-normalised embeddings out.

It is saved with ``torch.export`` (MLflow's ``pt2`` format), so the model holds no pickled
code: ``mlflow.pytorch.load_model("runs:/<id>/model")`` needs neither aas-ray nor permission
to unpickle, and MLflow refuses pickled PyTorch models by default.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from aas_ray.config import Config
from aas_ray.data.images import load_rgb, test_transform
from aas_ray.experiment.individuals import read_run_outputs
from aas_ray.experiment.run_folder import WEIGHTS, RunFolder
from aas_ray.models import ReIDNet, load_trained

log = logging.getLogger(__name__)

MODEL = "model"


@contextmanager
def tracking_uri(uri: str):
    """MLflow's fluent API (which model logging and registration use) pointed at ``uri`` for
    the block; the previous URI comes back afterwards."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def preprocessing(cfg: Config, model: ReIDNet) -> dict:
    """How images must be prepared for the model (``aas_ray.data.images.test_transform``)."""
    mean, std = model.mean_std
    return {"image_size": list(cfg.model.image_size), "resize": "bicubic", "mean": list(mean), "std": list(std),
            "transform": "RGB -> Resize((height, width), bicubic) -> ToTensor (0..1) -> Normalize(mean, std)",
            "output": f"L2-normalised embedding, {model.feat_dim} dimensions; cosine similarity = dot product"}


def input_example(cfg: Config, model: ReIDNet, individuals: pd.DataFrame) -> np.ndarray:
    """Two of the run's training images as the model takes them (rounded to 3 decimals to keep
    the stored example small). Two, not one: ``torch.export`` fixes a batch dimension it sees
    as 1."""
    size = tuple(cfg.model.image_size)
    tf = test_transform(size, model.mean_std)
    rows = individuals.head(2)
    boxes = rows["bbox"] if "bbox" in rows else [None] * len(rows)
    x = torch.stack([tf(load_rgb(Path(p), b, size)) for p, b in zip(rows["path"], boxes)])
    return np.round(x.numpy(), 3).astype(np.float32)


def logged_model_uri(uri: str, run_id: str) -> str | None:
    """The model this run has logged already, if any (a finished run resumed trains nothing new)."""
    client = mlflow.MlflowClient(uri)
    found = client.search_logged_models([client.get_run(run_id).info.experiment_id],
                                        filter_string=f"name = '{MODEL}' AND source_run_id = '{run_id}'")
    return f"models:/{found[0].model_id}" if found else None


def log_embedder(uri: str, run_id: str, cfg: Config, run_dir: Path) -> str | None:
    """Log the run's final network on its MLflow run, once; returns the model's URI, or None
    (with a warning and the run tagged ``model_error``) when it cannot be exported."""
    from mlflow.models import infer_signature

    if (known := logged_model_uri(uri, run_id)) is not None:
        return known
    weights = RunFolder(run_dir).file(WEIGHTS)
    model = load_trained(cfg.model, weights)
    example = input_example(cfg, model, read_run_outputs(run_dir, with_embeddings=False).individuals)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    metadata = {"aas_ray": {"preprocessing": preprocessing(cfg, model), "model": cfg.model.model_dump(mode="json"),
                            "run_folder": Path(run_dir).name}}
    with tracking_uri(uri), mlflow.start_run(run_id=run_id):
        try:
            info = mlflow.pytorch.log_model(
                model, name=MODEL, signature=infer_signature(example, out), input_example=example,
                serialization_format="pt2", metadata=metadata, pip_requirements=[f"torch=={version('torch')}"])
        except Exception as err:  # torch.export cannot trace every architecture
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log.warning("the trained model was not logged to MLflow (%s: %s); its weights are in %s",
                        type(err).__name__, first, weights)
            mlflow.set_tag("model_error", f"{type(err).__name__}: {first}"[:500])
            return None
    log.info("model logged to MLflow: runs:/%s/%s", run_id, MODEL)
    return info.model_uri


def register_model(uri: str, run_id: str, name: str) -> str:
    """Register a run's logged model in the MLflow Model Registry under ``name``; returns the version."""
    with tracking_uri(uri):
        return str(mlflow.register_model(f"runs:/{run_id}/{MODEL}", name).version)
