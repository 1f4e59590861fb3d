"""Per-stage wall time and peak resident memory, sampled from /proc (covers FAISS/BLAS too)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class StageTimer:
    def __init__(self, interval: float = 0.005):
        self.rows: list[dict] = []
        self.interval = interval

    @contextmanager
    def stage(self, name: str):
        base = rss_bytes()
        peak = [base]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(self.interval)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            stop.set()
            t.join()
            peak[0] = max(peak[0], rss_bytes())
            self.rows.append({"stage": name, "seconds": dt, "peak_rss_gib": peak[0] / 2**30,
                              "stage_extra_gib": (peak[0] - base) / 2**30})
