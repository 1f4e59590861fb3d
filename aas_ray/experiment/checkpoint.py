"""A run folder's durable state: ``state.json`` (progress, per-cycle rows, evaluations,
pending annotations, how many answers the journal held) and ``checkpoint.pt`` (model,
memory, optimiser, RNGs), both replaced atomically.

Checkpoints hold tensors and plain containers only and load with ``weights_only=True``:
a run folder from elsewhere must never be able to run code (a pickled object could).

A write that fails (a full disk, a read-only folder) removes its partial file and leaves
the previous version in place, with a one-line error naming the file.
"""

from __future__ import annotations

import errno
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


class NoSpaceLeft(InputError):
    """The disk filled up while a run's state was written; the previous version is kept."""


def mount_point(path: Path) -> Path:
    """The file system ``path`` lies on, by where it is mounted (what a person sees in ``df``)."""
    p = Path(path).resolve()
    while not os.path.ismount(p):
        p = p.parent
    return p


class _Recording:
    """The file a writer writes to, keeping the OS error of a failed write: the zip writer of
    ``torch.save`` reports a full disk only as "unexpected pos"."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_write(path: Path, write) -> None:
    """``write(f)`` into ``<path>.tmp`` (a binary file), fsynced, then moved over ``path``.
    On any failure the partial file is removed and ``path`` stays as it was."""
    tmp = path.with_name(path.name + ".tmp")
    sink = None
    try:
        with open(tmp, "wb") as f:
            sink = _Recording(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = sink.error if sink is not None and sink.error is not None else err
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceLeft(f"no space left on {mount_point(path.parent)} while writing {path}; the previous "
                              f"{path.name} is kept: free some space, then resume") from None
        if isinstance(cause, OSError):
            raise InputError(f"cannot write {path}: {cause.strerror or cause}") from None
        raise
    os.replace(tmp, path)


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
        text = json.dumps(asdict(self), indent=1).encode()
        atomic_write(path, lambda f: f.write(text))


def save_checkpoint(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


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
