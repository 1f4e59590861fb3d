"""The device a process computes on (``model.device``), and in one line why CUDA cannot be used
when NVIDIA GPUs are there but torch cannot use them (no driver for its CUDA, a GPU it was not
built for)."""

from __future__ import annotations

import glob
import logging
import os

import torch

from aas_ray.models.backbone import ModelError

log = logging.getLogger(__name__)

# Where the NVIDIA kernel driver shows its GPUs, whatever torch makes of them.
NVIDIA_GPU_ENTRIES = ("/proc/driver/nvidia/gpus/*", "/dev/nvidia[0-9]*")


def gpus_hidden() -> bool:
    """This process was given no GPU on purpose (``CUDA_VISIBLE_DEVICES`` set empty, as Ray's
    GPU-less workers here are)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")


def nvidia_gpu_entries() -> list[str]:
    """The kernel driver's entries for NVIDIA GPUs on this machine (empty without any)."""
    return sorted({p for pattern in NVIDIA_GPU_ENTRIES for p in glob.glob(pattern)})


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether code built for ``arch_list`` (``torch.cuda.get_arch_list()``) runs on a GPU of
    compute ``capability``: a binary ``sm_XY`` on X.Z for Z >= Y (``sm_XYa``: on X.Y only), PTX
    ``compute_XY`` on any capability from X.Y on (compiled when loaded)."""
    major, minor = capability
    for arch in arch_list:
        kind, _, version = arch.partition("_")
        specific = version.endswith(("a", "f"))
        v = int(version.rstrip("af"))
        if kind == "compute" and (major, minor) >= divmod(v, 10):
            return True
        if kind == "sm" and divmod(v, 10)[0] == major and (v % 10 == minor if specific else v % 10 <= minor):
            return True
    return False


def cuda_problem() -> str | None:
    """None when torch can compute on CUDA in this process; else why not, in one line."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if gpus_hidden():
        return f"CUDA_VISIBLE_DEVICES is {os.environ['CUDA_VISIBLE_DEVICES']!r}: this process was given no GPU"
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()
            reason = "it finds no CUDA device"
        except Exception as err:  # the driver's own words: too old for this CUDA, not loaded, ...
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) cannot use the GPU: {reason}"
    arch = torch.cuda.get_arch_list()
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        if arch and not arch_supported(cap, arch):
            return (f"GPU {i} ({torch.cuda.get_device_name(i)}) has compute capability {cap[0]}.{cap[1]}, which "
                    f"torch {torch.__version__} was not built for ({' '.join(arch)})")
    return None


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device. ``auto``: CUDA when torch can use it, else the CPU,
    with a warning naming the cause when NVIDIA GPUs are there all the same. ``cuda`` /
    ``cuda:N`` without a usable GPU is an error."""
    if name == "auto":
        if torch.cuda.is_available() or (not gpus_hidden() and nvidia_gpu_entries()):
            problem = cuda_problem()
            if problem is None:
                return torch.device("cuda")
            log.warning("model.device auto computes on the CPU although this machine has NVIDIA GPUs: %s", problem)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise ModelError(f"model.device {name!r} needs CUDA, which torch cannot use here: {problem}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"model.device {name!r}: this process sees {torch.cuda.device_count()} GPU(s)")
    return dev
