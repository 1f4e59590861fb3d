"""Study files (``tune_configs/<study>.yaml``): which config keys to sweep, over which datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aas_ray.config import Config, ConfigError, build_config, deep_merge, parse_overrides, read_yaml, set_dotted

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class Asha(BaseModel):
    """Ray Tune's ASHA: at epochs grace_period x reduction_factor^k, a trial below the best
    1/reduction_factor of those that reached that epoch stops."""

    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(1, ge=1, description="epochs every trial trains before it may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="1/reduction_factor of the trials go on at each rung")


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    asha: Asha | None = None


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study: str
    kind: Literal["simulate", "train"] = "simulate"
    base: str = Field("demo.yaml", description="run config the trials start from (relative to the study)")
    overrides: dict = Field(default_factory=dict, description="dotted keys applied to every trial")
    datasets: list[str] = Field(default_factory=lambda: ["synthetic"])
    data_roots: dict[str, str] = Field(default_factory=dict, description="data.root per dataset")
    search: dict[str, dict] = Field(default_factory=dict, description="dotted key -> {grid|choice|uniform|loguniform: ...}")
    num_samples: int = Field(1, ge=1, description="repeats of the grid (random spaces draw anew)")
    max_concurrent_trials: int = Field(1, ge=1)
    resources_per_trial: Resources = Field(default_factory=Resources)
    cycles: int | None = Field(None, description="simulate: AL cycles (default al.cycles)")
    metric: str = Field("pair_f1", description="metric Tune ranks trials by")
    mode: Literal["max", "min"] = "max"
    storage: str | None = Field(None, description="shared folder or URI for run folders, checkpoints and the study's "
                                "state (aas_ray.orchestration.storage; --storage and AAS_RAY_STORAGE also set it)")
    max_failures: int = Field(1, ge=0, description="times a failed trial is retried, from its last checkpoint")
    scheduler: Scheduler = Field(default_factory=Scheduler, description="kind: train: stop hopeless trials early "
                                 "({asha: {grace_period, reduction_factor}}); none by default")
    register_model: str | None = Field(
        None, description="kind: train: register the best trial's MLflow model under this name (off by default)")


def _first_value(space: dict):
    kind, values = next(iter(space.items()))
    return values[0]


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[StudyConfig, dict]:
    """The study and the raw base config dict, both validated (every swept key must exist)."""
    path = Path(path)
    raw = read_yaml(path)
    if "study" not in raw:
        raise ConfigError(f"{path} is a run config, not a study (no 'study:' key); use `aas-ray run -c {path}`")
    raw = deep_merge(raw, parse_overrides(overrides))
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as err:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid study {path}: {bad}") from None
    base_path = (path.parent / study.base).resolve()
    base_raw = read_yaml(base_path) if base_path.is_file() else None
    if base_raw is None:
        raise ConfigError(f"study {path}: base config {base_path} not found")
    base_raw = deep_merge(base_raw, _nested(study.overrides))
    for key, space in study.search.items():
        if len(space) != 1 or next(iter(space)) not in SPACE_KINDS:
            raise ConfigError(f"study {path}: search.{key} must be one of {SPACE_KINDS}, e.g. {{grid: [0.2, 0.6]}}")
        kind, values = next(iter(space.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"study {path}: search.{key} needs a non-empty list")
        if kind in ("uniform", "loguniform"):
            ok = len(values) == 2 and all(isinstance(v, (int, float)) for v in values) and values[0] < values[1]
            if not ok or (kind == "loguniform" and values[0] <= 0):
                raise ConfigError(f"study {path}: search.{key} {kind} needs [lo, hi] with lo < hi"
                                  f"{' and lo > 0' if kind == 'loguniform' else ''}; got {values}")
    # Every value a trial will use is validated now, before Ray starts: each value of each
    # grid / choice and both ends of each range, with the first value of the other keys,
    # on every dataset.
    first = {k: _first_value(sp) for k, sp in study.search.items()}
    for ds in study.datasets:
        trial_config(base_raw, {"data.name": ds, **first}, study, source=f"{path} (dataset {ds})")
    for key, space in study.search.items():
        for value in next(iter(space.values())):
            trial_config(base_raw, {"data.name": study.datasets[0], **first, key: value}, study,
                         source=f"{path}: search.{key} value {value!r}")
    if study.kind == "simulate" and study.scheduler.asha is not None:
        raise ConfigError(f"{path}: scheduler: a simulation reports once, at its end, so no scheduler can stop it "
                          "early; scheduler needs kind: train")
    logs_model = trial_config(base_raw, {"data.name": study.datasets[0]}, study).tracking.log_model
    if study.register_model and (study.kind != "train" or not logs_model):
        raise ConfigError(f"{path}: register_model needs kind: train with tracking.log_model: true (a simulation "
                          "trains no model)")
    if study.kind == "simulate":
        strategies = next(iter(study.search["al.strategy"].values())) if "al.strategy" in study.search else \
            [trial_config(base_raw, {"data.name": study.datasets[0]}, study).al.strategy]
        from aas_ray.experiment.cycle import SAMPLED

        bad = [s for s in strategies if s not in (*SAMPLED, "none")]
        if bad:
            raise ConfigError(f"{path}: strategy {bad[0]!r} cannot be simulated on frozen features (kind: simulate); "
                              "use kind: train for the supervised skyline")
    return study, base_raw


def _nested(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        set_dotted(out, k, v)
    return out


def trial_config(base_raw: dict, params: dict, study: StudyConfig, source: str = "<study>") -> Config:
    extra = dict(params)
    ds = extra.get("data.name")
    if ds in study.data_roots:
        extra.setdefault("data.root", study.data_roots[ds])
    return build_config(base_raw, _nested(extra), source=source)
