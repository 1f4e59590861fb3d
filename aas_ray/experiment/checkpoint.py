"""A run folder's durable state: ``state.json`` (progress, per-cycle rows, evaluations,
pending annotations, how many answers the journal held) and ``checkpoint.pt`` (model,
memory, optimiser, RNGs), both replaced atomically.

Checkpoints hold tensors and plain containers only and load with ``weights_only=True``:
a run folder from elsewhere must never be able to run code (a pickled object could).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from aas_ray.checks import InputError

log = logging.getLogger(__name__)

# Optimiser settings that say how a step is computed, not what it computes: a checkpoint
# written on another device holds that device's (fused Adam on CUDA, not on a CPU).
IMPLEMENTATION_KEYS = ("foreach", "fused", "capturable", "differentiable")


@dataclass
class RunState:
    epoch_done: int = -1
    tracking_run_id: str | None = None
    indep_thres: float | None = None
    cycles: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    # The cycle whose pairs wait for a person (pairs, pools, what the sampler saw), if any.
    pending: dict | None = None
    finished: bool = False
    # Answers the journal held at the last save: fewer on resume means answers were lost.
    answers: int = 0
    # Metrics of a finished step saved before they reach the tracker (logged on resume).
    unlogged: list = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "RunState":
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"{path} is not a run state this version can read: {err}") from None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)


def save_checkpoint(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device) -> dict:
    """Tensors and plain containers only; anything else is refused before it can run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # the unpickler's refusal comes as several exception types
        raise InputError(f"{path} holds more than tensors and plain values (or is damaged), so it is not "
                         f"loaded: a checkpoint that unpickles objects could run code ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimiser's implementation settings and
    each ``step`` counter where that implementation keeps it (on the parameter's device when
    fused or capturable, else on the CPU): a run resumes on a GPU or a CPU, whichever it was
    saved on."""
    own = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, own):
        group.update(keep)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(dtype=torch.float32, device=p.device if on_device else "cpu")


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """The checkpoint's AMP loss scale, when both runs use one. A run saved without mixed
    precision (on a CPU, or ``train.amp: false``) has none: resumed with AMP, the scale starts
    at its initial value; a saved scale is ignored by a run without AMP."""
    if not scaler.is_enabled():
        return
    if state:
        scaler.load_state_dict(state)
    else:
        log.info("the checkpoint was written without mixed precision: the loss scale starts at %g",
                 scaler.get_scale())
