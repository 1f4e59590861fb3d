"""``aas-ray doctor``: what this machine computes with. torch and its CUDA, the GPUs, which FAISS
build is installed and whether it sees them, and where kNN, training and Ray work would run;
each problem in one line with what to do about it."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, value) -> None:
        self.rows.append((name, str(value)))

    def text(self) -> str:
        w = max(len(n) for n, _ in self.rows)
        lines = [f"{n:<{w}}  {v}" for n, v in self.rows]
        lines += [f"PROBLEM: {p}" for p in self.problems] or ["no problem found"]
        return "\n".join(lines)


def faiss_distributions() -> list[str]:
    """The installed distributions that provide the ``faiss`` module, with their versions."""
    names = importlib.metadata.packages_distributions().get("faiss", [])
    return sorted(f"{n} {importlib.metadata.version(n)}" for n in set(names))


def nvidia_smi() -> str | None:
    """``nvidia-smi``'s GPUs and driver, one line each; None without the tool."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"failed: {err}"
    return "; ".join(out.stdout.strip().splitlines()) or f"failed: {out.stderr.strip()[:200]}"


def report() -> Report:
    import torch

    from aas_ray.cluster import knn
    from aas_ray.models.devices import cuda_problem, gpus_hidden, nvidia_gpu_entries, resolve_device

    r = Report()
    r.add("python", platform.python_version())
    r.add("torch", f"{torch.__version__}, built for CUDA {torch.version.cuda or '-'}, cuDNN "
                   f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}")
    smi = nvidia_smi()
    r.add("nvidia-smi", smi if smi is not None else "not installed")
    r.add("driver GPU entries", ", ".join(nvidia_gpu_entries()) or "none")
    problem = cuda_problem()
    if problem is None:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            r.add(f"cuda:{i}", f"{p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        r.add("CUDA", f"not usable: {problem}")
        if not gpus_hidden() and (nvidia_gpu_entries() or smi):
            r.problems.append(f"this machine has NVIDIA GPUs but torch cannot use them: {problem}")
    r.add("model.device auto", resolve_device("auto"))
    builds = faiss_distributions()
    r.add("FAISS", f"{knn.faiss.__version__} from {', '.join(builds) or 'an unknown build'}; GPU support: "
                   f"{'yes' if hasattr(knn.faiss, 'StandardGpuResources') else 'no'}, "
                   f"GPUs seen: {knn.faiss_gpu_count()}")
    if len(builds) > 1:
        r.problems.append(f"{' and '.join(builds)} are installed together: both write the module faiss, so one "
                          "overwrites the other's files; pip uninstall -y faiss-cpu faiss-gpu, then pip install -r "
                          "requirements-gpu.txt (or requirements.txt on a CPU machine)")
    device = knn.gpu_device()
    if device is None:
        where = "CPU (FAISS; IVF or HNSW above cluster.knn_exact_up_to images)"
    elif knn.faiss_gpu_count() > 0:
        where = f"cuda:{device} (FAISS GPU index)"
    else:
        where = f"cuda:{device} (torch matrix product and top-k: the installed FAISS has no GPU support; " \
                "requirements-gpu.txt installs one that has)"
    r.add("kNN", where)
    try:
        import ray

        r.add("Ray", ray.__version__)
    except ImportError as err:
        r.problems.append(f"Ray cannot be imported: {err}")
    return r
