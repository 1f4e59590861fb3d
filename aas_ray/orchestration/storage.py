"""Where a job keeps what must outlive a node: one setting, ``storage``.

``--storage`` (``aas-ray run`` and ``aas-ray tune``), else a study file's ``storage:``, else
the environment variable ``AAS_RAY_STORAGE``. It is

* a **path** every node of the Ray cluster can write at the same place (a shared file
  system): run folders go there (it takes the place of ``output_dir``), with Ray Train's
  checkpoints in ``<storage>/ray_train`` and the studies' Tune state in ``<storage>/tune``;
* or a **URI** that ``pyarrow`` reads (``s3://``, ``gs://``, ``hdfs://``, ``file://``):
  Ray Train's checkpoints and the Tune state go there, as Ray's ``storage_path`` takes them.
  Run folders are plain files with locks and stay in ``output_dir``; a trial restarted on a
  node without its folder rebuilds it from its last Tune checkpoint.

Unset, everything stays under ``output_dir`` on the machine that runs the command, which is
right on one node and an error (before anything starts) on a cluster of several: what a
worker on another node writes there would be lost. The image and feature caches
(``data.cache_dir``) are not storage: each node keeps its own and fills what it lacks.

A run folder's durable files (:data:`~aas_ray.experiment.run_folder.DURABLE`: state,
checkpoint, journal, pairs asked) are also what Ray checkpoints hold: :func:`folder_checkpoint`
makes one, :func:`restore_folder` brings the newer of a checkpoint and the folder into the
folder.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aas_ray.checks import InputError
from aas_ray.experiment.run_folder import RunFolder

STORAGE_ENV = "AAS_RAY_STORAGE"
WHERE = f"--storage, a study's `storage:` or {STORAGE_ENV}"
# URI schemes pyarrow opens (Ray's storage_path goes through pyarrow.fs)
URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
# Ray's copies of a run folder's checkpoint: the last and the one before (a restart needs
# only the last; about 0.4 GB each for ResNet-50)
CHECKPOINTS_KEPT = 2


@dataclass(frozen=True)
class Storage:
    """The resolved ``storage`` setting: ``root`` is None (unset), an absolute path, or a URI."""

    root: str | None = None

    @classmethod
    def resolve(cls, explicit: str | None, configured: str | None = None) -> "Storage":
        value = explicit or configured or os.environ.get(STORAGE_ENV) or None
        if value is None:
            return cls(None)
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in URI_SCHEMES:
                raise InputError(f"storage {value!r} ({WHERE}): unknown scheme {scheme!r}; give a folder every node "
                                 f"shares or a URI of {', '.join(s + '://' for s in URI_SCHEMES)}")
            return cls(value.rstrip("/"))
        path = Path(value).expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"storage {value!r} ({WHERE}) cannot be created: {err.strerror}") from None
        if not os.access(path, os.W_OK):
            raise InputError(f"storage {value!r} ({WHERE}) is not writable")
        return cls(str(path))

    @property
    def is_uri(self) -> bool:
        return self.root is not None and "://" in self.root

    def output_dir(self, configured: str) -> str:
        """Where run folders go: the storage when it is a path, else ``configured``."""
        return self.root if self.root is not None and not self.is_uri else configured

    def ray_train(self, output_dir: str) -> str:
        """Ray Train's ``storage_path`` for DDP runs."""
        return f"{self.root}/ray_train" if self.root else str(Path(output_dir) / "ray_train")

    def tune(self, output_dir: str) -> str:
        """Ray Tune's ``storage_path`` for studies."""
        return f"{self.root}/tune" if self.root else str(Path(output_dir) / "tune")

    def require_for_cluster(self, what: str) -> None:
        """On a Ray cluster of several nodes (``ray.init`` first) the storage must be set."""
        import ray

        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        if self.root is None and nodes > 1:
            raise InputError(f"{what} runs on a Ray cluster of {nodes} nodes but no storage is set: give {WHERE} a "
                             "folder every node shares or an s3:// / gs:// URI (run folders, checkpoints and study "
                             "state go there)")


@contextmanager
def folder_checkpoint(folder: RunFolder, checkpoint_class):
    """A Ray checkpoint of the run folder's durable files, valid inside the block where
    ``ray.tune.report`` (``checkpoint_class``: ``ray.tune.Checkpoint``) or
    ``ray.train.report`` (``ray.train.Checkpoint``) uploads it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder.copy_durable(Path(tmp))
        yield checkpoint_class.from_directory(tmp)


def restore_folder(checkpoint, folder: RunFolder) -> bool:
    """Bring ``checkpoint`` (a Ray checkpoint of a run folder, or None) into ``folder`` when
    the folder lacks a checkpoint or holds fewer trained epochs; True when it did."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as d:
        theirs = RunFolder(d)
        behind = folder.load_state().epoch_done < theirs.load_state().epoch_done
        if folder.checkpoint_file.exists() and not behind:
            return False
        folder.dir.mkdir(parents=True, exist_ok=True)
        theirs.copy_durable(folder.dir)
    return True
