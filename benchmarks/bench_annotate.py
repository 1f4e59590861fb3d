"""How fast a person can go on the annotation page: 100 pairs answered by keyboard in headless
Chromium (Playwright) against a real `aas-ray annotate` server, on multi-megapixel JPEGs.

The run folder is made directly (a paused cycle of 100 pairs over generated camera-sized
photos), so the figures are the page's and the server's alone. Prints the time to answer
all pairs and, per answer, the delay from the key press to the next pair on screen with
its images decoded.

    .venv/bin/python benchmarks/bench_annotate.py [--pairs 100] [--megapixels 6] [--look-ms 500]

``--look-ms`` waits that long on each pair before the key press, as a (very fast) person would;
with 0 the key comes the moment the pair is shown, before the next pair's prefetch can finish.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from saving import save_results

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def identity(image: int) -> int:
    return image // 4  # 4 photos per individual


def make_run(root: Path, n_images: int, n_pairs: int, megapixels: float) -> Path:
    rng = np.random.default_rng(0)
    w = int(np.sqrt(megapixels * 1e6 * 3 / 2))
    h = int(w * 2 / 3)
    photos = root / "photos"
    photos.mkdir(parents=True)
    rows = []
    for i in range(n_images):
        # a smooth random scene, upsampled: JPEG sizes close to real camera photos
        small = rng.integers(0, 255, (h // 64, w // 64, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        img.save(photos / f"{i:03d}.jpg", quality=90)
        rows.append({"index": i, "image_id": f"img{i:03d}", "path": f"{i:03d}.jpg",
                     "bbox": f"[{w // 4}, {h // 4}, {w // 2}, {h // 2}]"})
    run = root / "runs" / "bench"
    run.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame(rows).to_csv(run / "images.csv", index=False)
    (run / "catalogue.json").write_text(json.dumps({"name": "bench", "root": str(photos)}))
    iu = np.array([(i, j) for i in range(n_images) for j in range(i + 1, n_images)])
    pairs = iu[rng.choice(len(iu), n_pairs, replace=False)]
    state = {"epoch_done": -1, "pending": {"cycle": 1, "pairs": pairs.tolist(), "pool": ["us"] * n_pairs,
                                            "pair_type": [""] * n_pairs, "probability": [1.0] * n_pairs, "stats": {}}}
    (run / "state.json").write_text(json.dumps(state))
    (run / "config.yaml").write_text(yaml.safe_dump({"al": {"oracle": "human"}}))
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--megapixels", type=float, default=6.0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--look-ms", type=int, default=0,
                   help="time spent looking at each pair before answering (0: answer the moment it is shown)")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    run = make_run(tmp, args.images, args.pairs, args.megapixels)
    made = time.perf_counter() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "aas_ray.cli", "annotate", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#pair-index:not(:has-text('–'))")
            shown = ("() => { const a = document.getElementById('img-u'), b = document.getElementById('img-v');"
                     " return a.complete && b.complete && a.naturalWidth > 0 && b.naturalWidth > 0; }")
            page.wait_for_function(shown)
            delays = []
            start = time.perf_counter()
            for k in range(args.pairs):
                before = page.inner_text("#progress")
                # answers a person would give (consistent: no contradiction dialog to stop at)
                u, v = int(page.inner_text("#u")), int(page.inner_text("#v"))
                if args.look_ms:
                    time.sleep(args.look_ms / 1000)  # a person looks; the page prefetches meanwhile
                t = time.perf_counter()
                page.keyboard.press("s" if identity(u) == identity(v) else "d")
                page.wait_for_function("(b) => document.getElementById('progress').textContent !== b", arg=before)
                if k < args.pairs - 1:
                    page.wait_for_function(shown)
                delays.append(time.perf_counter() - t)
            total = time.perf_counter() - start
            page.wait_for_selector("#done:not([hidden])")
            browser.close()
    finally:
        server.kill()
    lines = (run / "annotations.jsonl").read_text().splitlines()
    d = np.array(delays) * 1000
    report = (f"annotation page, {args.pairs} pairs by keyboard ({args.look_ms} ms looking at each), "
              f"{args.images} JPEGs of {args.megapixels:g} MP "
              f"(bbox crop, scaled for the screen; made in {made:.1f} s)\n"
              f"  total {total:.2f} s ({total / args.pairs * 1000:.0f} ms per pair, Playwright's own overhead included)\n"
              f"  key press -> next pair on screen, images decoded: median {np.median(d):.0f} ms, "
              f"p90 {np.percentile(d, 90):.0f} ms, max {d.max():.0f} ms\n"
              f"  journal lines written: {len(lines)} (every answer fsynced before the page moved on)\n")
    print(report)
    save_results("annotate", report, out=args.out)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if len(lines) == args.pairs else 1


if __name__ == "__main__":
    sys.exit(main())
