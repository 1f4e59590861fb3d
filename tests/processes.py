"""The processes a test started, found through /proc, so that it ends them and only them."""

import os
import signal
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parent_of[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        one = todo.pop()
        kids = [p for p, parent in parent_of.items() if parent == one]
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def end(pids: list[int], grace: float = 30.0) -> None:
    """Wait up to ``grace`` seconds for ``pids`` to end, then SIGKILL those left."""
    deadline = time.time() + grace
    while any(map(alive, pids)) and time.time() < deadline:
        time.sleep(0.5)
    for pid in filter(alive, pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
