"""Zero-shot mAP / Top-1 / AUC-ROC of the offline backbone under the docs/method.md §11 protocol,
on the synthetic default and on LionData (when ../shared/data/LionData exists).

    python benchmarks/bench_zeroshot.py [--lion-root PATH]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from aas_ray.cli import DEMO_CONFIG
from aas_ray.config import load_config
from aas_ray.experiment.zeroshot import zero_shot
from saving import save_results

DEFAULT_LION = Path(__file__).resolve().parents[2] / "shared" / "data" / "LionData"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lion-root", default=str(DEFAULT_LION))
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    targets = [("synthetic", [], (128, 128))]
    if (Path(args.lion_root) / "wildlife_reidentification-main").is_dir():
        targets.append(("LionData", [f"data.root={args.lion_root}"], (224, 224)))
    rows = []
    for name, extra, size in targets:
        for seed in map(int, args.seeds.split(",")):
            cfg = load_config(DEMO_CONFIG, [f"data.name={name}", f"seed={seed}", f"model.image_size=[{size[0]},{size[1]}]",
                                            *extra])
            t = time.time()
            m = zero_shot(cfg, progress=False)[1]
            rows.append({"dataset": name, "seed": seed, "image_size": size[0], "seconds": time.time() - t, **m})
    print(f"{'dataset':10s} {'seed':>4s} {'mAP':>7s} {'mINP':>7s} {'Top-1':>7s} {'Top-5':>7s} {'BAKS':>7s} "
          f"{'AUC-ROC':>7s} {'known q':>7s} {'unkn q':>6s}")
    for r in rows:
        print(f"{r['dataset']:10s} {r['seed']:4d} {r['mAP']:7.4f} {r['mINP']:7.4f} {r['top1']:7.4f} {r['top5']:7.4f} "
              f"{r['BAKS']:7.4f} {r['auc_roc']:7.4f} {int(r['known_queries']):7d} {int(r['unknown_queries']):6d}")
    save_results("zeroshot", data=rows)


if __name__ == "__main__":
    main()
