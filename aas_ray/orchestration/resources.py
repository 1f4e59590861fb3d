"""What each process of a job computes with: its share of the CPUs, and the GPUs Ray reserved
for it (or that ``--parallel`` gave it), never whatever GPUs its node happens to have.

Ray sets ``CUDA_VISIBLE_DEVICES`` for a task, actor or Tune trial that reserved GPUs; one that
reserved none keeps its node's setting and would see, and use, every GPU. Such a process hides
them here before anything touches CUDA.
"""

from __future__ import annotations

import math
import os

from aas_ray.checks import InputError


def use_threads(threads: int) -> None:
    """Size every thread pool of this process (torch, FAISS's OpenMP, numba) to ``threads``."""
    import faiss
    import numba
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def use_ray_gpus() -> list[str]:
    """In a Ray task, actor or Tune trial, before any CUDA call: hide every GPU unless Ray
    reserved some for it (then ``CUDA_VISIBLE_DEVICES`` already lists them). Returns the GPU
    ids Ray reserved."""
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    if not ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return ids


def visible_gpus(environ=os.environ) -> list[str]:
    """The GPUs this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries: its own list
    when the variable is set (empty or "-1": none), else one per device torch counts."""
    env = environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        return [] if ids[:1] == ["-1"] else ids
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def child_gpus(visible: list[str], children: int) -> list[str | None]:
    """One GPU per child process, round-robin over ``visible`` (None for each without GPUs)."""
    return [visible[i % len(visible)] if visible else None for i in range(children)]


def worker_cpus(nodes: list[dict], workers: int, use_gpu: bool) -> int:
    """The most whole CPUs each of ``workers`` DDP workers can reserve with all of them placed:
    ``nodes`` are the alive nodes' resources (``ray.nodes()[i]["Resources"]``); with GPUs each
    worker also takes one GPU of its node. 0 when the workers do not fit even at one CPU each."""
    best = 0
    for c in range(1, int(max((n.get("CPU", 0) for n in nodes), default=0)) + 1):
        fit = sum(min(math.floor(n.get("CPU", 0) / c), math.floor(n.get("GPU", 0)) if use_gpu else workers)
                  for n in nodes)
        if fit >= workers:
            best = c
    return best


def plan_ddp(workers: int, nodes: list[dict], use_gpu: bool | None = None) -> tuple[bool, int]:
    """``(use_gpu, cpus per worker)`` for ``--workers N`` on a Ray cluster of ``nodes``: GPUs
    whenever the cluster has any (the driver's own devices do not matter: a CPU-only head with
    GPU workers trains on the GPUs); N workers that cannot all be placed are an error now,
    where Ray Train would wait for them without end."""
    gpus = sum(math.floor(n.get("GPU", 0)) for n in nodes)
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if use_gpu is None:
        use_gpu = gpus > 0
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if use_gpu and workers > gpus:
        raise InputError(f"--workers {workers} needs {workers} GPUs (one per worker) but the Ray cluster has {gpus}"
                         + (f": use --workers {gpus} or fewer" if gpus else ""))
    per = worker_cpus(nodes, workers, use_gpu)
    if per < 1:
        raise InputError(f"--workers {workers} needs a CPU per worker{' beside its GPU' if use_gpu else ''}, but the "
                         f"Ray cluster's {cpus:g} CPUs cannot hold them")
    return use_gpu, per


def alive_nodes() -> list[dict]:
    """The resources of each alive node of the Ray cluster (``ray.init`` first)."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n["Alive"]]


def check_fits_a_node(cpu: float, gpu: float, nodes: list[dict], what: str) -> None:
    """Ray places a trial (or an actor) on one node: one that fits on none would wait without end."""
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no alive node"
    raise InputError(f"{what} asks for {cpu:g} CPU(s) and {gpu:g} GPU(s) on one node, but no node of the Ray cluster "
                     f"has them (its nodes: {have})")


def study_resources(study, nodes: list[dict] | None = None) -> tuple[dict, float]:
    """A Tune study's ``(resources of a trial, GPUs of each dataset actor)``. A ``train`` trial
    trains in its own process with its share; a ``simulate`` trial waits while its dataset's
    actor does the work, so the GPU share is the actor's and the trial keeps the CPUs.
    ``nodes``: the cluster's nodes' resources (default: the connected cluster's). Resources
    no node holds, or GPUs the cluster cannot hold at once, are an error here, where Ray
    would wait for them without end."""
    nodes = alive_nodes() if nodes is None else nodes
    res = study.resources_per_trial
    if study.kind == "simulate":
        check_fits_a_node(res.cpu, 0, nodes, f"resources_per_trial (cpu {res.cpu:g})")
        if res.gpu:
            n = len(study.datasets)
            check_fits_a_node(0, res.gpu, nodes, f"a dataset actor (resources_per_trial.gpu {res.gpu:g})")
            have = sum(node.get("GPU", 0) for node in nodes)
            if res.gpu * n > have:
                raise InputError(f"resources_per_trial.gpu {res.gpu:g} for each of {n} dataset actor(s) needs "
                                 f"{res.gpu * n:g} GPU(s) at once but the Ray cluster has {have:g}")
        return {"cpu": res.cpu}, res.gpu
    check_fits_a_node(res.cpu, res.gpu, nodes, f"resources_per_trial (cpu {res.cpu:g}, gpu {res.gpu:g})")
    return res.model_dump(), 0.0
