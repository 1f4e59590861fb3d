"""Rebuild the DogFaceNet development set from a local git snapshot (fetches nothing).

DogFaceNet (Mougeot, Li & Jia, PRICAI 2019) is a set of aligned 224 x 224 dog-face crops of
1393 pet dogs (8363 JPEGs, 2+ per dog) collected from the web. The authors publish it
as a release asset of github.com/GuillaumeMougeot/DogFaceNet (``DogFaceNet_Dataset_224_1.zip``)
and on Zenodo. A git copy of that release sits in the public repository
``fcernafukuzaki/DogFaceNet-Dataset`` at ``data/dogfacenet/aligned/after_4_bis/<dog>/<dog>.<k>.jpg``.
Its commit ``3456b2b1`` ("Imágenes") added exactly the released 8363 images in 1393 folders;
later commits add, rename and delete photos, so this script reads that commit only and
checks its tree hash.

Output layout, one folder per dog, files copied byte for byte (no re-encoding)::

    OUT/<dog id>/<dog id>.<k>.jpg

By default only dogs with at least 6 images are kept (592 dogs, 4995 images). Use
``--min-images 2`` to get the whole release (1393 dogs, 8363 images).

Usage (GIT_DIR is a clone of that repository, e.g. ``git clone --bare`` of it)::

    python benchmarks/data/prepare_dogfacenet.py \\
        DogFaceNet-Dataset.git ../shared/data/DogFaceNet

    # whole release, and decode every image with PIL as a check
    python benchmarks/data/prepare_dogfacenet.py GIT_DIR OUT --min-images 2 --verify

Needs the ``git`` command; Python standard library, plus PIL for ``--verify``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

COMMIT = "3456b2b1810ec9717e7f5d605c89e90c7438dafe"
SUBDIR = "data/dogfacenet/aligned/after_4_bis"
# git tree object of SUBDIR at COMMIT: 1393 folders, 8363 JPEGs (the released set).
TREE = "770320abf3d4b50827d03234c4e184035ca56c71"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LFS_MAGIC = b"version https://git-lfs"


def _git(git_dir: Path, *args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        input=data,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def list_images(git_dir: Path, commit: str, subdir: str) -> dict[str, list[tuple[str, str]]]:
    """identity -> [(file name, blob sha)], from ``git ls-tree`` of ``commit:subdir``."""
    out = _git(git_dir, "ls-tree", "-r", "-z", commit, "--", subdir + "/")
    by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)
    prefix = subdir.rstrip("/") + "/"
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        rel = path.decode()[len(prefix):]
        if kind != "blob" or not rel.lower().endswith(IMAGE_EXTS):
            continue
        parts = rel.split("/")
        if len(parts) != 2:
            raise SystemExit(f"unexpected path depth: {rel}")
        if mode == "120000":
            raise SystemExit(f"symlink in the image tree: {rel}")
        by_id[parts[0]].append((parts[1], sha))
    return by_id


def read_blobs(git_dir: Path, shas: list[str]) -> dict[str, bytes]:
    """Read many blobs at once with ``git cat-file --batch``."""
    out = _git(git_dir, "cat-file", "--batch", data=("\n".join(shas) + "\n").encode())
    blobs: dict[str, bytes] = {}
    pos = 0
    for sha in shas:
        end = out.index(b"\n", pos)
        header = out[pos:end].decode().split()
        if len(header) != 3 or header[1] != "blob" or header[0] != sha:
            raise SystemExit(f"object {sha} missing from the snapshot: {' '.join(header)}")
        size = int(header[2])
        blobs[sha] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1  # content is followed by a newline
    return blobs


def id_sort_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("git_dir", type=Path, help="git directory of the fcernafukuzaki/DogFaceNet-Dataset snapshot")
    ap.add_argument("out", type=Path, help="output folder (created; must be empty but for SOURCE.md)")
    ap.add_argument("--min-images", type=int, default=6, help="drop dogs with fewer images (default 6; 2 = all)")
    ap.add_argument("--commit", default=COMMIT, help=f"commit to read (default {COMMIT[:8]}, the released set)")
    ap.add_argument("--subdir", default=SUBDIR, help=f"image folder inside the commit (default {SUBDIR})")
    ap.add_argument("--any-tree", action="store_true", help="do not insist on the released set's tree hash")
    ap.add_argument("--verify", action="store_true", help="decode every kept image with PIL")
    args = ap.parse_args(argv)

    if shutil.which("git") is None:
        raise SystemExit("the git command is needed")
    git_dir = args.git_dir
    if not (git_dir / "objects").is_dir() and (git_dir / ".git" / "objects").is_dir():
        git_dir = git_dir / ".git"

    tree = _git(git_dir, "rev-parse", f"{args.commit}:{args.subdir}").decode().strip()
    if tree != TREE and not args.any_tree:
        raise SystemExit(f"{args.commit}:{args.subdir} is tree {tree}, expected {TREE} (use --any-tree to accept)")

    by_id = list_images(git_dir, args.commit, args.subdir)
    kept = {k: sorted(v) for k, v in by_id.items() if len(v) >= args.min_images}
    if not kept:
        raise SystemExit("no identity has enough images")

    out: Path = args.out
    if out.exists():
        extra = [p.name for p in out.iterdir() if p.name != "SOURCE.md"]
        if extra:
            raise SystemExit(f"{out} is not empty ({len(extra)} entries besides SOURCE.md); remove them first")
    out.mkdir(parents=True, exist_ok=True)

    if args.verify:
        from PIL import Image  # only needed for the check

    sizes: dict[tuple[int, int], int] = defaultdict(int)
    n_written = 0
    bytes_written = 0
    for ident in sorted(kept, key=id_sort_key):
        files = kept[ident]
        blobs = read_blobs(git_dir, [sha for _, sha in files])
        folder = out / ident
        folder.mkdir()
        for name, sha in files:
            data = blobs[sha]
            if data.startswith(LFS_MAGIC):
                raise SystemExit(f"{ident}/{name} is a Git LFS pointer, not an image")
            if args.verify:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    sizes[im.size] += 1
            (folder / name).write_bytes(data)
            n_written += 1
            bytes_written += len(data)

    counts = sorted(len(v) for v in kept.values())
    print(f"source: {git_dir} @ {args.commit} : {args.subdir} (tree {tree})")
    print(f"all:  {len(by_id)} identities, {sum(len(v) for v in by_id.values())} images")
    print(
        f"kept (>= {args.min_images} images): {len(kept)} identities, {n_written} images, "
        f"{bytes_written / 2**20:.1f} MiB; per identity min {counts[0]} / "
        f"median {statistics.median(counts):g} / max {counts[-1]}"
    )
    if sizes:
        common = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        print("decoded OK; sizes (w x h: n): " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in common))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
