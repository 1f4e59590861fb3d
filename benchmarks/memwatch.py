"""Per-stage wall time and peak resident memory (covers FAISS/BLAS allocations too).

The peak comes from the kernel's high-water mark (VmHWM), reset before each stage by
writing 5 to /proc/self/clear_refs: exact, and no sampling thread competing with the
stage for the GIL. Where that reset is not allowed, a thread samples /proc every 5 ms.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM missing from /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageTimer:
    def __init__(self, interval: float = 0.005):
        self.rows: list[dict] = []
        self.interval = interval

    @contextmanager
    def stage(self, name: str):
        base = rss_bytes()
        exact = _reset_hwm()
        peak = [base]
        stop = threading.Event()
        watcher = None
        if not exact:
            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_bytes())
                    time.sleep(self.interval)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            if watcher is not None:
                stop.set()
                watcher.join()
            peak[0] = max(peak[0], _hwm_bytes() if exact else rss_bytes())
            self.rows.append({"stage": name, "seconds": dt, "peak_rss_gib": peak[0] / 2**30,
                              "stage_extra_gib": (peak[0] - base) / 2**30, "peak_method": "VmHWM" if exact else "sampled"})
