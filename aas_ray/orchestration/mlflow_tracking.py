"""MLflow as the trainer's tracker: resolve and check the store, open or resume runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aas_ray.errors import AasRayError

log = logging.getLogger(__name__)


EXPERIMENT_KIND = "mlflow.experimentKind"


class TrackingError(AasRayError, RuntimeError):
    pass


def resolve_tracking_uri(explicit: str | None, configured: str | None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then the config, then ./mlflow.db (sqlite)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or configured
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered HTTP {r.status}")
        except (URLError, OSError) as err:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({err}); start it or pass "
                                "--tracking-uri (default: a local sqlite file)") from None
    elif uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif not uri.startswith(("file:", "/", "databricks", "postgresql", "mysql", "mssql")):
        raise TrackingError(f"tracking URI {uri!r} is not one MLflow can use: give http(s)://host:port, "
                            "sqlite:///path/to/mlflow.db or a folder")


class MlflowTracker:
    """One MLflow run; every call goes through the client so several runs can coexist."""

    def __init__(self, uri: str, run_id: str):
        self.client = MlflowClient(uri)
        self.run_id = run_id

    @classmethod
    def create(cls, uri: str, experiment: str, run_name: str, tags: dict | None = None,
               parent_run_id: str | None = None) -> "MlflowTracker":
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        if (exp.tags if exp else {}).get(EXPERIMENT_KIND) != "custom_model_development":
            # MLflow 3 otherwise opens an experiment on its GenAI overview (traces, sessions),
            # not on the training runs.
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND, "custom_model_development")
        tags = {k: str(v) for k, v in (tags or {}).items()}  # a tracking server takes strings only
        tags["mlflow.runName"] = run_name
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=tags)
        return cls(uri, run.info.run_id)

    @classmethod
    def find(cls, uri: str, experiment: str, tag: str, value: str) -> "MlflowTracker | None":
        """The run of ``experiment`` tagged ``tag`` = ``value``, if there is one."""
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], f"tags.`{tag}` = '{value}'", max_results=1) if exp else []
        return cls(uri, runs[0].info.run_id) if runs else None

    def log_params(self, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_metrics_once(self, metrics: dict[str, float], step: int) -> None:
        # One key is enough: a step's metrics (dozens, batches hold 500) go out in one batch, all or none.
        key = next((k for k, v in metrics.items() if v is not None), None)
        if key is None or any(m.step == step for m in self.client.get_metric_history(self.run_id, key)):
            return
        self.log_metrics(metrics, step)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        if Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def run(self):
        """The MLflow run, or None when this store does not hold it."""
        try:
            return self.client.get_run(self.run_id)
        except MlflowException:
            return None

    def reopen(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")

