"""Study files (``tune_configs/<study>.yaml``): which config keys to sweep, over which datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aas_ray.config import Config, ConfigError, build_config, deep_merge, read_yaml, set_dotted

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


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


def _first_value(space: dict):
    kind, values = next(iter(space.items()))
    return values[0]


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[StudyConfig, dict]:
    """The study and the raw base config dict, both validated (every swept key must exist)."""
    path = Path(path)
    raw = read_yaml(path)
    if "study" not in raw:
        raise ConfigError(f"{path} is a run config, not a study (no 'study:' key); use `aas-ray run -c {path}`")
    for item in overrides or []:
        k, _, v = item.partition("=")
        import yaml

        set_dotted(raw, k.strip(), yaml.safe_load(v))
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
        values = next(iter(space.values()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"study {path}: search.{key} needs a non-empty list")
    # Validate every key (and the first value of each) against the run config now,
    # so a typo fails before any trial starts.
    trial_config(base_raw, {"data.name": study.datasets[0], **{k: _first_value(s) for k, s in study.search.items()}},
                 study, source=str(path))
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
