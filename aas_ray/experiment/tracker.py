"""What the trainer reports to: an interface the orchestration layer implements (MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_metrics_once(self, metrics: dict[str, float], step: int) -> None:
        """Log unless these metrics are already recorded at ``step`` (a resumed run re-sends
        what it saved before a kill, and must not record a step twice)."""

    def log_artifact(self, path: Path, subdir: str | None = None) -> None: ...


class NullTracker:
    """Keeps metrics in memory; used by tests and when no tracking is wanted."""

    def __init__(self):
        self.params: dict = {}
        self.metrics: list[tuple[int, dict]] = []
        self.artifacts: list[Path] = []

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_metrics_once(self, metrics: dict[str, float], step: int) -> None:
        if not any(s == step and set(m) == set(metrics) for s, m in self.metrics):
            self.log_metrics(metrics, step)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.artifacts.append(Path(path))
