"""Trainer throughput: SpCL steps (hybrid-memory loss and momentum update) against plain
supervised training (linear classifier + cross-entropy) of the same backbone, same batch
size, same images, measured in one run with the two interleaved.

    python benchmarks/bench_train.py                      # demo backbone on the synthetic default
    python benchmarks/bench_train.py --set model.arch=resnet50 --set model.weights=null \
        --set model.image_size=[256,256] --batch 64 --steps 20   # the paper's backbone
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from aas_ray.cli import DEMO_CONFIG
from aas_ray.config import load_config
from aas_ray.data.images import CatalogueImages, PKSampler, to_tensor_batch, train_transform
from aas_ray.experiment.prepare import prepare_data
from aas_ray.experiment.spcl import HybridMemory
from aas_ray.models import build_model, resolve_device
from saving import save_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed steps per method per round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, args.set)
    torch.manual_seed(0)
    device = resolve_device(cfg.model.device)
    data = prepare_data(cfg, progress=False)
    n = len(data.cat)
    labels = np.unique(data.identities, return_inverse=True)[1]
    ds = CatalogueImages(data.cat, train_transform(tuple(cfg.model.image_size)))
    loader = DataLoader(ds, batch_size=args.batch, sampler=PKSampler(labels, args.batch, 4, 10_000),
                        num_workers=cfg.train.workers, collate_fn=to_tensor_batch, drop_last=True)
    batches = iter(loader)
    # Pre-load the batches both methods will see, so image decoding is not timed.
    pool = [next(batches) for _ in range(args.steps)]

    spcl_model = build_model(cfg.model).to(device)
    memory = HybridMemory(spcl_model.feat_dim, n).to(device)
    memory.features.copy_(nn.functional.normalize(torch.randn(n, spcl_model.feat_dim), dim=1))
    memory.labels.copy_(torch.from_numpy(labels))
    sup_model = build_model(cfg.model).to(device)
    head = nn.Linear(sup_model.feat_dim, int(labels.max()) + 1).to(device)
    opt_a = torch.optim.Adam(spcl_model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    opt_b = torch.optim.Adam(list(sup_model.parameters()) + list(head.parameters()), lr=3.5e-4, weight_decay=5e-4)
    y = torch.from_numpy(labels).to(device)

    def spcl_step(imgs, idx):
        loss = memory(spcl_model(imgs.to(device)), idx.to(device))
        opt_a.zero_grad()
        loss.backward()
        opt_a.step()

    def sup_step(imgs, idx):
        loss = nn.functional.cross_entropy(head(sup_model.backbone(imgs.to(device))), y[idx.to(device)])
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()

    spcl_step(*pool[0])
    sup_step(*pool[0])  # warm-up
    totals = {"spcl": 0.0, "supervised": 0.0}
    for _ in range(args.rounds):
        for name, step in (("spcl", spcl_step), ("supervised", sup_step)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for imgs, idx in pool:
                step(imgs, idx)
            if device.type == "cuda":
                torch.cuda.synchronize()
            totals[name] += time.perf_counter() - t
    imgs_total = args.rounds * args.steps * args.batch
    res = {k: imgs_total / v for k, v in totals.items()}
    res["ratio_spcl_over_supervised"] = res["spcl"] / res["supervised"]
    res.update(arch=cfg.model.arch, image_size=list(cfg.model.image_size), batch=args.batch, n_memory=n,
               device=str(device), threads=torch.get_num_threads())
    print(f"{cfg.model.arch} {tuple(cfg.model.image_size)} batch {args.batch} on {device} "
          f"({torch.get_num_threads()} threads), memory of {n} instances:")
    print(f"  SpCL trainer step : {res['spcl']:8.1f} images/s")
    print(f"  supervised step   : {res['supervised']:8.1f} images/s")
    print(f"  ratio             : {res['ratio_spcl_over_supervised']:8.3f}")
    save_results("train", data=res)


if __name__ == "__main__":
    main()
