"""One writer per run folder: an OS lock (``flock``) that dies with its process.

Two processes on one run would ask the same pairs twice and write one checkpoint over the
other; the second one gets an error naming the run and the process that holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from aas_ray.checks import InputError


class RunLocked(InputError):
    pass


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` exclusively, or raises :class:`RunLocked`.
    ``acquire()`` / ``release()`` do the same by hand (a lock taken while a run folder is made
    and handed on to the code that trains in it)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(errno.EACCES, "the folder is read-only")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise InputError(f"run folder {folder} cannot be written ({err.strerror}); a run writes its state "
                             "there: make it writable, or move it somewhere writable and resume it there") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(fd)
            who = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
                   if holder else "another process")
            raise RunLocked(f"run {self.path.parent} is in use by {who}; wait for it to finish or stop it "
                            "before resuming") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def __enter__(self) -> "RunLock":
        return self if self.fd is not None else self.acquire()

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def is_held(run_dir: Path) -> bool:
        """Whether a live process holds ``run_dir`` (without taking it)."""
        path = Path(run_dir) / ".lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)  # a lock needs no write access: a read-only folder is checked too
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
