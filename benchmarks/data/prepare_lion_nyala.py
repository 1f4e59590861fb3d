"""Lay out LionData and NyalaData (Dlamini & van Zyl, 2020) where ``data.root`` can read them.

Both sets are folders of one public repository, github.com/tvanzyl/wildlife_reidentification:
740 crops of 94 lions (about 120 x 130 px) and 1942 photos of 237 nyala (1 to 6 megapixels,
one animal's flank each). This script unpacks them into the layout the ``wildlife_datasets``
classes ``LionData`` / ``NyalaData`` and aas-ray's registry expect::

    OUT/wildlife_reidentification-main/Lion_Data_Zero/<train|val>/<lion>/<image>
    OUT/wildlife_reidentification-main/Nyala_Data_Zero/<train|test>/<nyala>/<image>

and checks the image and identity counts. One OUT serves both sets::

    python benchmarks/data/prepare_lion_nyala.py ~/data/wr                  # downloads (~500 MB)
    python benchmarks/data/prepare_lion_nyala.py ~/data/wr --source main.zip  # a zip you downloaded
    python benchmarks/data/prepare_lion_nyala.py ~/data/wr --source wildlife_reidentification.git
    aas-ray run --strategies none,aas,supervised --set data.name=NyalaData --set data.root=~/data/wr

``--source`` is the repository's zip archive (a file or a URL; default GitHub's archive of
``main``) or a git directory of a clone. The authors state no licence: use the images for
research and do not copy them into this project. Python standard library and, for a git
directory, the ``git`` command.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_URL = "https://github.com/tvanzyl/wildlife_reidentification/archive/refs/heads/main.zip"
TOP = "wildlife_reidentification-main"
# folder in the repository -> (images, identities) of the published set
EXPECTED = {"Lion_Data_Zero": (740, 94), "Nyala_Data_Zero": (1942, 237)}
SETS = {"LionData": "Lion_Data_Zero", "NyalaData": "Nyala_Data_Zero"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


class PrepareError(Exception):
    """A source or an output folder this script cannot use; the message names it."""


def count(folder: Path) -> tuple[int, int]:
    """(images, identities) below ``folder/<split>/<identity>/``."""
    images = [p for p in folder.glob("*/*/*") if p.suffix.lower() in IMAGE_SUFFIXES]
    return len(images), len({p.parent.name for p in images})


def _zip_from(source: str, tmp: Path) -> Path:
    """A zip file of the repository made from ``source`` (URL, zip file or git directory)."""
    if source.startswith(("https://", "http://")):
        dest = tmp / "archive.zip"
        print(f"downloading {source} ...", file=sys.stderr)
        try:
            urllib.request.urlretrieve(source, dest)
        except OSError as err:
            raise PrepareError(f"--source {source}: download failed ({err})") from err
        return dest
    path = Path(source).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise PrepareError(f"--source {path}: not a zip file")
        return path
    if path.is_dir():
        dest = tmp / "archive.zip"
        done = subprocess.run(["git", "--git-dir", str(_git_dir(path)), "archive", "--format=zip",
                               "-o", str(dest), "HEAD"], capture_output=True, text=True)
        if done.returncode != 0:
            raise PrepareError(f"--source {path}: not a git directory of the repository ({done.stderr.strip()})")
        return dest
    raise PrepareError(f"--source {source}: no such file or directory, and not an http(s) URL")


def _git_dir(path: Path) -> Path:
    return path / ".git" if (path / ".git").is_dir() else path


def extract(archive: Path, folder: str, out: Path) -> None:
    """Unpack ``*/folder/...`` of ``archive`` (whatever its top folder) into ``out/TOP/folder``."""
    target = out / TOP / folder
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            # the repository's own folder is either the archive's top level or one below it
            inner = parts[1:] if parts and parts[0] != folder else parts
            if info.is_dir() or len(inner) < 2 or inner[0] != folder or ".." in inner:
                continue
            members.append((info, Path(*inner[1:])))
        if not members:
            raise PrepareError(f"--source: the archive {archive.name} holds no {folder}/ folder")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for info, rel in members:
            dest = partial / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
    partial.rename(target)  # a folder that exists is complete


def prepare(out: Path, source: str, names: list[str]) -> list[str]:
    """Make ``out`` hold ``names`` (keys of SETS); returns one line per set."""
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise PrepareError(f"--sets: unknown {unknown}; known: {sorted(SETS)}")
    todo = []
    for name in names:
        target = out / TOP / SETS[name]
        if target.exists():
            check(name, target)
        else:
            todo.append(name)
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            archive = _zip_from(source, Path(tmp))
            for name in todo:
                extract(archive, SETS[name], out)
    return [check(name, out / TOP / SETS[name]) for name in names]


def check(name: str, folder: Path) -> str:
    images, identities = count(folder)
    want = EXPECTED[SETS[name]]
    if (images, identities) != want:
        raise PrepareError(
            f"{folder}: {images} images of {identities} identities, expected {want[0]} of {want[1]} "
            "(an incomplete or different copy: remove the folder and run again)"
        )
    return f"{name}: {images} images of {identities} identities in {folder}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to use as data.root (created)")
    ap.add_argument("--source", default=ARCHIVE_URL,
                    help="the repository's zip (file or URL) or a git directory of a clone (default: GitHub)")
    ap.add_argument("--sets", default="LionData,NyalaData", help="comma-separated (default LionData,NyalaData)")
    args = ap.parse_args(argv)
    try:
        lines = prepare(args.out.expanduser(), args.source, [s.strip() for s in args.sets.split(",") if s.strip()])
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"use: --set data.name=NyalaData --set data.root={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
