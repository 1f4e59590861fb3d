"""The one typed configuration of aas-ray. Every hyperparameter lives here once.

Loaded from YAML (``tune_configs/*.yaml``) with unknown keys rejected, then optionally
overridden by dotted ``key=value`` pairs (``--set al.epsilon=0.5``) that go through the
same validation.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aas_ray.al import list_strategies, strategy_entry, strategy_params
from aas_ray.cluster import build_views, check_view_params
from aas_ray.errors import AasRayError

# The library holds the defaults (its signatures); the configuration refers to them.
VIEW_DEFAULTS = {k: p.default for k, p in inspect.signature(build_views).parameters.items()
                 if p.default is not inspect.Parameter.empty}


class ConfigError(AasRayError, ValueError):
    """A configuration that cannot be used, with the offending key named."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Strict):
    """The embedded default dataset: procedurally generated individual animals."""

    identities: int = Field(100, ge=2)
    families: int = Field(25, ge=1, description="look-alike groups sharing a base coat")
    min_images: int = Field(4, ge=2)
    max_images: int = Field(30, ge=2)
    tail: float = Field(1.3, gt=0, description="Pareto shape of images per identity (long tail)")
    image_size: int = Field(112, ge=32)
    clutter: float = Field(
        0.3, ge=0.0, le=1.0,
        description="scene nuisance: background colour spread, clutter and occluders (1 = the hard v2 set)")
    seed: int = 0


class DataConfig(_Strict):
    name: str = Field("synthetic", description="registered dataset name (aas-ray datasets)")
    root: str | None = Field(None, description="where the dataset lives on disk")
    members: list[str] = Field(default_factory=list, description="WildlifeReID-10k member datasets")
    csv: str | None = Field(None, description="catalogue CSV for the 'csv' source")
    cache_dir: str = Field("~/.cache/aas-ray", description="synthetic images and feature cache")
    skip_bad_images: bool = Field(False, description="skip missing/corrupt images with a warning")
    image_cache: bool = Field(
        True, description="decode each photo once per input size into <cache_dir>/images (aas-ray cache shows it)")
    use_split: bool = Field(True, description="use the catalogue's split column when it has one")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="per-identity test share without a split column")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


class ModelConfig(_Strict):
    arch: str = Field("resnet50", description="any timm model name, hf-hub:... included")
    pretrained: bool = Field(False, description="timm hub weights (needs network)")
    weights: str | None = Field(None, description="local checkpoint path, or builtin:efficientnet_lite0")
    image_size: tuple[Annotated[int, Field(ge=16)], Annotated[int, Field(ge=16)]] = Field(
        (224, 224), description="network input (height, width), at least 16 px each")
    batch_size: int = Field(64, ge=1, description="feature-extraction batch size")
    workers: int = Field(2, ge=0)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")


class ClusterConfig(_Strict):
    k1: int = Field(VIEW_DEFAULTS["k1"], ge=2)
    k2: int = Field(VIEW_DEFAULTS["k2"], ge=1)
    jaccard_min_sim: float = Field(
        VIEW_DEFAULTS["jaccard_min_sim"], ge=0.0, lt=1.0, description="drop Jaccard pairs below this sim (0 = keep all, as SpCL)"
    )
    eps: float | Literal["auto"] = Field(
        VIEW_DEFAULTS["eps"], description="DBSCAN radius on d_J, in (0, 1); 'auto' = the radius giving the most clusters "
        "(SpCL and the paper: 0.6)")
    eps_gap: float = Field(VIEW_DEFAULTS["eps_gap"], ge=0.0, description="self-paced criterion: DBSCAN at eps ± gap")
    min_samples: int = Field(VIEW_DEFAULTS["min_samples"], ge=1)
    view_a: Literal["dbscan", "hdbscan"] = Field(
        VIEW_DEFAULTS["view_a"], description="view A's clustering of d_J: DBSCAN at cluster.eps (SpCL, the paper), or HDBSCAN "
        "(no radius; groups of every density, docs/method.md §2)")
    hdbscan_min_cluster_size: int = Field(VIEW_DEFAULTS["hdbscan_min_cluster_size"], ge=2, description="view_a: hdbscan: fewest images in a cluster")
    hdbscan_min_samples: int = Field(VIEW_DEFAULTS["hdbscan_min_samples"], ge=1, description="view_a: hdbscan: neighbours (self included) of a core image")
    finch_partition: Literal["auto"] | int = Field(
        VIEW_DEFAULTS["finch_partition"], description="FINCH level of view B: 0 = finest; 'auto' = the level whose cluster count is closest "
        "to view A's")
    knn: Literal["auto", "exact", "ivf", "hnsw"] = Field(
        VIEW_DEFAULTS["knn"], description="kNN search: exact, IVF, HNSW, or auto (exact up to knn_exact_up_to images; above, IVF, "
        "or HNSW when the IVF would scan over 1/32 of the images)")
    knn_exact_up_to: int = Field(VIEW_DEFAULTS["knn_exact_up_to"], ge=2, description="auto: exact search up to this many images")
    knn_recall: float = Field(
        VIEW_DEFAULTS["knn_recall"], gt=0.0, le=1.0, description="IVF/HNSW: recall@k1 to reach, measured on sampled queries "
        "(0.99 let a DBSCAN view drift to ARI 0.986 against exact kNN)")
    similarity: Literal["jaccard", "cosine"] = "jaccard"

    def view_params(self) -> dict:
        """Keyword arguments of :func:`aas_ray.cluster.build_views` (the pair similarity is
        not a property of the views)."""
        return self.model_dump(exclude={"similarity"})

    @model_validator(mode="after")
    def _library_accepts(self):
        """The library's own check (:func:`aas_ray.cluster.check_view_params`), at load time: a
        configuration cannot pass here and fail in the middle of a run."""
        check_view_params("", **self.view_params())
        return self


# Strategies besides the registered samplers: plain SpCL, and the skyline (the ground-truth
# identities of the training images as labels).
TRAINING_ONLY = {"none": "plain SpCL", "supervised": "the skyline: the true identities as labels"}
STRATEGIES = ("none", *list_strategies(), "supervised")
Strategy = Literal[STRATEGIES]
_AAS, _NIS = strategy_params("aas"), strategy_params("nis")
DEFAULT_BUDGET_FRACTION = 0.0002


class ALConfig(_Strict):
    strategy: Strategy = Field(
        "aas", description=" | ".join(f"{s}: {TRAINING_ONLY[s] if s in TRAINING_ONLY else strategy_entry(s).description}"
                                      for s in STRATEGIES) + " (docs/method.md §14-15); `aas-ray run --strategies` "
        "and studies run several side by side")
    epsilon: float = Field(_AAS["epsilon"], ge=0.0, le=1.0, description="Eq. 6 mixture weight of U_os")
    k_max: int = Field(_AAS["k_max"], ge=1)
    s_min: float = Field(_AAS["s_min"], ge=0.0, le=1.0)
    pi: tuple[float, float, float] | None = Field(_AAS["pi"], description="type prior (β1, β2, β3); None = uniform")
    budget_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description=f"pairs per cycle / all pairs (default {DEFAULT_BUDGET_FRACTION})")
    budget_pairs: int | None = Field(None, ge=0, description="pairs per cycle, instead of budget_fraction")
    budget_per: Literal["cycle", "run"] = Field(
        "cycle", description="the budget is per AL cycle (the paper), or for the whole run: each cycle may then "
        "ask what earlier cycles left")
    cycles: int = Field(5, ge=0)
    every: int = Field(10, ge=1, description="epochs between AL cycles")
    nis_tau: float = Field(_NIS["tau"], gt=0.0, description="NIS: temperature of the neighbour softmax (Perez et al.: 0.5)")
    nis_neighbours: int | None = Field(
        _NIS["neighbours"], ge=1, description="NIS: neighbours drawn per sampled vertex; null = the reference's allocation, "
        "round(sqrt(B)) - 1 for a budget of B pairs (docs/method.md §14)")
    oracle: Literal["simulated", "human"] = "simulated"
    oracle_noise: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_budget(self):
        if self.budget_fraction is not None and self.budget_pairs is not None:
            raise ValueError(
                f"set only one of budget_fraction ({self.budget_fraction}) and budget_pairs ({self.budget_pairs}); "
                "to switch on top of a file that sets the other, also set it to null "
                "(e.g. --set al.budget_fraction=null)")
        return self

    def cycle_budget(self, n: int) -> int:
        """Pairs one AL cycle may ask of ``n`` images, or with ``budget_per: run`` all cycles
        together (docs/method.md §7)."""
        from aas_ray.al.sampling import cycle_budget

        if self.budget_pairs is not None:
            return int(self.budget_pairs)
        return cycle_budget(n, DEFAULT_BUDGET_FRACTION if self.budget_fraction is None else self.budget_fraction)


class TrainConfig(_Strict):
    epochs: int = Field(50, ge=1)
    iters: int = Field(400, ge=1)
    batch_size: int = Field(64, ge=2)
    num_instances: int = Field(4, ge=1, description="K of the PK sampler")
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = Field(20, ge=1)
    gamma: float = 0.1
    momentum: float = Field(0.2, ge=0.0, le=1.0, description="hybrid memory update")
    temp: float = Field(0.05, gt=0.0)
    amp: bool = Field(True, description="mixed precision on GPU")
    channels_last: bool = True
    workers: int = Field(2, ge=0)
    eval_every: int = Field(10, ge=1)


class EvalConfig(_Strict):
    unknown_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    gallery_size: int = Field(5, ge=1)


class TrackingConfig(_Strict):
    tracking_uri: str | None = Field(None, description="default: sqlite file mlflow.db in the working dir")
    experiment: str = "aas-ray"
    run_name: str | None = None
    log_model: bool = Field(
        True, description="log the trained network as an MLflow model at the end of a run (ResNet-50: ~100 MB a run)")


class Config(_Strict):
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    al: ALConfig = Field(default_factory=ALConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("output_dir")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("output_dir must not be empty")
        return v

    def flat(self) -> dict[str, object]:
        """Dotted keys -> values, as logged to MLflow params."""
        return flatten(self.model_dump(mode="json"))


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        elif e["type"] == "value_error":  # a check across keys: its message names them
            lines.append(f"'{loc}': {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"invalid configuration in {source}: " + "; ".join(lines)


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["al.epsilon=0.5", "data.name=LionData"]`` -> nested dict, values parsed as YAML."""
    out: dict = {}
    for item in pairs or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})") from None
        set_dotted(out, k.strip(), value)
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_config(raw: dict | None = None, overrides: dict | None = None, source: str = "<config>") -> Config:
    data = deep_merge(raw or {}, overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of config sections, not {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config (or the defaults), apply overrides, validate everything."""
    raw = read_yaml(path) if path else {}
    source = str(path) if path else "<defaults>"
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    if not extra:
        return build_config(raw, source=source)
    # The file on its own first, so that an error is blamed on whichever holds it.
    build_config(raw, source=source)
    if not isinstance(overrides, list):
        return build_config(raw, extra, source="the overrides")
    try:
        return build_config(raw, extra, source="the overrides")
    except ConfigError:
        # Blame the override at fault: the first one that makes the config invalid, given
        # those before it (a check across keys blames the override that completes it).
        for k in range(1, len(overrides)):
            build_config(raw, parse_overrides(overrides[:k]), source=f"--set {overrides[k - 1]}")
        return build_config(raw, extra, source=f"--set {overrides[-1]}")  # raises: the last one is at fault


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
