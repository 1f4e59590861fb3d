"""The ``aas-ray`` command: evaluate, simulate, run, tune, report; annotate, individuals, match; datasets,
cache, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("aas_ray")

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "tune_configs"
DEMO_CONFIG = REPO_CONFIGS / "demo.yaml"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("faiss.loader", "urllib3", "alembic", "matplotlib", "PIL", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config(args):
    from aas_ray.config import load_config

    path = args.config
    if path is None and DEMO_CONFIG.is_file():
        path = DEMO_CONFIG
    return load_config(path, args.set)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help=f"YAML config (default: {DEMO_CONFIG.name}, the embedded demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. al.epsilon=0.5")


def cmd_datasets(args) -> int:
    from aas_ray.config import DataConfig
    from aas_ray.data import describe_datasets

    root = Path(args.data_root).expanduser() if args.data_root else None
    rows = describe_datasets(root, lambda name, r: DataConfig(name=name, root=r, cache_dir=args.cache_dir))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':26s} {'kind':10s} {'present':8s} {'images':>7s} {'ids':>5s}  root / description")
    for r in rows:
        present = "yes" if r["present"] is True else ("-" if r["present"] == "-" else "no")
        print(f"{r['name']:26s} {r['kind']:10s} {present:8s} {r['images'] or '':>7} {r['identities'] or '':>5}  "
              f"{r['root'] or r['description']}")
    return 0


def cmd_evaluate(args) -> int:
    from aas_ray.experiment.prepare import save_split
    from aas_ray.experiment.zeroshot import zero_shot

    cfg = _config(args)
    exp, metrics = zero_shot(cfg)
    out = Path(cfg.output_dir) / f"zeroshot-{cfg.data.name}"
    out.mkdir(parents=True, exist_ok=True)
    save_split(exp.data.cat, exp.split, out / "split.csv")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info("zero-shot %s on %s: %s", cfg.model.arch, cfg.data.name,
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    log.info("split and metrics written to %s", out)
    return 0


def cmd_simulate(args) -> int:
    import pandas as pd

    from aas_ray.checks import InputError
    from aas_ray.experiment.simulate import load_features, simulate

    cfg = _config(args)
    strategies = _strategies(args.strategies)
    if args.features:
        if not args.labels:
            raise InputError("--features needs --labels (the ground-truth identity of each row)")
        x, truth = load_features(args.features, args.labels)
        name = Path(args.features).stem
    else:
        from aas_ray.experiment.prepare import prepare_experiment

        exp = prepare_experiment(cfg)
        x, truth, name = exp.train_features, exp.truth, cfg.data.name
    out = Path(args.out) if args.out else Path(cfg.output_dir) / f"simulate-{name}"
    # makes ``out`` once the inputs pass
    table = simulate(x, truth, cfg, strategies, args.cycles, out, pairs_of=args.pairs_of)
    table.to_csv(out / "cycles.csv", index=False)
    cols = [c for c in ("strategy", "cycle", "pairs_asked", "ml_cl_ratio", "utilised_budget", "regions", "U_os",
                        "U_us", "nmi", "ari", "pair_f1", "clusters", "outliers") if c in table.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"dataset {name}: n={x.shape[0]}, budget {table.attrs['budget_per_cycle']} pairs per cycle"
              + (f"; at equal pairs asked: each strategy asks, per cycle, at most what {args.pairs_of} asked"
                 if args.pairs_of else ""))
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    log.info("cycle table, asked pairs and annotation journals written to %s", out)
    return 0


def _strategies(text: str) -> list[str]:
    """A comma-separated list of strategies, each checked before any work starts."""
    from typing import get_args

    from aas_ray.config import ConfigError, Strategy

    names = [s.strip() for s in text.split(",") if s.strip()]
    known = get_args(Strategy)
    bad = [s for s in names if s not in known]
    if bad or not names:
        raise ConfigError(f"unknown strategy {bad[0]!r} in --strategies; known: {', '.join(known)}" if bad
                          else "--strategies is empty")
    return names


def _seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers, in order."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds needs comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def cmd_run(args) -> int:
    from aas_ray.orchestration.run import run_cli

    cfg = _config(args)
    return run_cli(args, cfg, _strategies(args.strategies or cfg.al.strategy))


def cmd_annotate(args) -> int:
    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.orchestration.annotate.session import AnnotationSession
    from aas_ray.orchestration.annotate.server import serve
    from aas_ray.orchestration.run import find_run_dir
    from aas_ray.orchestration.runlock import RunLock

    run_dir = find_run_dir(args.run, args.output_dir)
    # The page is the run folder's single writer while it is up: a --resume waits for it.
    with RunLock(run_dir):
        session = AnnotationSession(RunFolder(run_dir))
        status = session.status()
        if not status["waiting"]:
            log.warning("run %s waits for no answers now (finished: %s); the review page still shows its answers",
                        run_dir, status["finished"])
        server, url = serve(session, args.host, args.port)
        print(f"annotate run {run_dir.name}: open {url}   (Ctrl-C to stop)", flush=True)
        server.run()
    return 0


def cmd_individuals(args) -> int:
    from aas_ray.orchestration.individuals import individuals_cli

    return individuals_cli(args)


def cmd_match(args) -> int:
    from aas_ray.orchestration.match import match_cli

    return match_cli(args)


def cmd_report(args) -> int:
    from aas_ray.orchestration.report import build_report
    from aas_ray.orchestration.mlflow_tracking import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, None)
    check_tracking_uri(uri)
    out = build_report(uri, args.study, args.experiment, Path(args.out) if args.out else None, args.run_id)
    print(f"report: {out / 'report.html'}")
    print((out / "table1.csv").read_text())
    return 0


def cmd_cache(args) -> int:
    import shutil

    from aas_ray.data.image_cache import cache_root, cache_usage

    root = Path(args.cache_dir).expanduser()
    if args.clear:
        targets = {"images": [cache_root(root)], "features": [root / "features"],
                   "all": [cache_root(root), root / "features"]}[args.clear]
        for t in targets:
            if t.exists():
                shutil.rmtree(t)
                log.info("removed %s", t)
    rows = cache_usage(root)
    feats = sorted((root / "features").glob("*.npy")) if (root / "features").is_dir() else []
    print(f"cache {root}:")
    for size, n, nbytes in rows:
        print(f"  images {size:>9s}: {n:7d} files, {nbytes / 2**20:9.1f} MiB")
    print(f"  features         : {len(feats):7d} files, {sum(f.stat().st_size for f in feats) / 2**20:9.1f} MiB")
    print("  (remove with: aas-ray cache --clear images | features | all)")
    return 0


def cmd_doctor(args) -> int:
    from aas_ray.orchestration.doctor import report

    r = report()
    print(r.text())
    return 1 if r.problems else 0


def cmd_tune(args) -> int:
    from aas_ray.orchestration.tune import tune_cli

    return tune_cli(args)


def _add_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address of the annotation page (default loopback; any other needs the printed access token)")
    p.add_argument("--port", type=int, default=8700)


def _add_storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="where run folders, Ray Train checkpoints and study state go on a Ray cluster: a "
                   "folder every node shares, or an s3:// / gs:// URI (default: env AAS_RAY_STORAGE; a study's "
                   "`storage:`); required on a cluster of several nodes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aas-ray", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    _add_experiment_commands(sub)
    _add_run_output_commands(sub)
    _add_machine_commands(sub)
    return p


def _add_experiment_commands(sub) -> None:
    """Experiments: evaluate, simulate, run, tune, and the report of a study."""
    e = sub.add_parser("evaluate", help="zero-shot evaluation of the backbone under the open-set protocol")
    _add_config_args(e)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("simulate", help="AL cycles on frozen features with the simulated oracle (aas vs random)")
    _add_config_args(s)
    s.add_argument("--features", help=".npy of features (n, d) instead of a backbone over a dataset")
    s.add_argument("--labels", help="ground-truth identities for --features (.npy or one label per line)")
    s.add_argument("--strategies", default="aas,random", help="comma-separated samplers to compare")
    s.add_argument("--cycles", type=int, help="AL cycles (default: al.cycles)")
    s.add_argument("--out", help="output folder (default: <output_dir>/simulate-<dataset>)")
    s.add_argument("--pairs-of", metavar="STRATEGY",
                   help="compare at equal pairs asked: every other strategy asks, per cycle, as many pairs as "
                        "STRATEGY did (e.g. aas, whose pools may run dry below the budget)")
    s.set_defaults(func=cmd_simulate)

    r = sub.add_parser("run", help="train SpCL with AL cycles (the main job), logged to MLflow")
    _add_config_args(r)
    r.add_argument("--strategies", help="comma-separated strategies run one after another on the same data, "
                   "split and seed, e.g. none,random,aas,supervised (default: al.strategy)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: env MLFLOW_TRACKING_URI or ./mlflow.db)")
    r.add_argument("--seeds", type=_seeds, metavar="LIST",
                   help="comma-separated seeds: every strategy on each seed, then paired differences with 95 %% "
                        "intervals (default: the config's seed)")
    r.add_argument("--resume", metavar="RUN", help="resume an interrupted run (MLflow run id or run folder)")
    r.add_argument("--workers", type=int, default=0, help="Ray Train DDP workers (0 = this process)")
    _add_storage_arg(r)
    r.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="train N of the --strategies at a time, each in its own process with cores/N threads "
                        "(simulated oracle only; default 1: one after another)")
    r.add_argument("--serve", action="store_true",
                   help="with al.oracle: human, serve the annotation page at each pause and go on by itself")
    _add_page_args(r)
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("tune", help="a Ray Tune study over datasets and config keys")
    t.add_argument("study", help="study YAML in tune_configs/")
    t.add_argument("--tracking-uri")
    t.add_argument("--address", help="Ray cluster address (default: local / RAY_ADDRESS)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study key")
    _add_storage_arg(t)
    t.add_argument("--resume", nargs="?", const="latest", metavar="STUDY_RUN",
                   help="continue a study: its finished trials are kept, the others run (again); give the study's "
                        "parent MLflow run id, or nothing for the newest run of this study")
    t.set_defaults(func=cmd_tune)

    rp = sub.add_parser("report", help="Table 1 and budget curves of a study, rebuilt from the tracking store")
    rp.add_argument("study", help="the study's name (its `study:` key)")
    rp.add_argument("--tracking-uri")
    rp.add_argument("--experiment", default="aas-ray")
    rp.add_argument("--run-id", help="a parent run id (default: the study's newest)")
    rp.add_argument("--out", help="folder for report.html and the PNGs (default: report-<study>)")
    rp.set_defaults(func=cmd_report)


def _add_run_output_commands(sub) -> None:
    """What a run gives a person: its annotation page, its individuals, matching new photos."""
    a = sub.add_parser("annotate", help="the pair annotation page of a run waiting for a person's answers")
    a.add_argument("run", help="run folder or MLflow run id")
    a.add_argument("--output-dir", default="runs", help="where run folders are (for a run id)")
    _add_page_args(a)
    a.set_defaults(func=cmd_annotate)

    i = sub.add_parser("individuals", help="a finished run's individuals: summary and an HTML contact sheet")
    i.add_argument("run", help="run folder or MLflow run id")
    i.add_argument("--output-dir", default="runs", help="where run folders are (for a run id)")
    i.add_argument("--per-row", type=int, default=12, help="thumbnails per individual (nearest its medoid first)")
    i.add_argument("--max-rows", type=int, default=500, help="individuals on the page (largest first)")
    i.set_defaults(func=cmd_individuals)

    m = sub.add_parser("match", help="rank new photos against a finished run's individuals (CSV + HTML)")
    m.add_argument("run", help="run folder or MLflow run id")
    m.add_argument("photos", help="a folder of images (searched recursively) or a CSV with a 'path' column")
    m.add_argument("--output-dir", default="runs", help="where run folders are (for a run id)")
    m.add_argument("--out", help="output folder (default: <run>/match-<photos name>)")
    m.add_argument("--top-k", type=int, default=5, help="individuals listed per photo")
    m.add_argument("--device", help="auto | cpu | cuda (default: the run's model.device)")
    m.set_defaults(func=cmd_match)


def _add_machine_commands(sub) -> None:
    """This machine: its datasets, caches, GPUs and FAISS build."""
    d = sub.add_parser("datasets", help="list registered datasets and which are present locally")
    d.add_argument("--data-root", default=os.environ.get("AAS_RAY_DATA_ROOT"),
                   help="folder holding <name>/ per dataset (env AAS_RAY_DATA_ROOT)")
    d.add_argument("--cache-dir", default="~/.cache/aas-ray")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)

    c = sub.add_parser("cache", help="what the image and feature caches hold; --clear removes them")
    c.add_argument("--cache-dir", default="~/.cache/aas-ray")
    c.add_argument("--clear", choices=["images", "features", "all"])
    c.set_defaults(func=cmd_cache)

    dr = sub.add_parser("doctor", help="torch, CUDA and GPUs, the FAISS build in use, and where kNN and training run")
    dr.set_defaults(func=cmd_doctor)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from aas_ray.errors import AasRayError

    # A kill (SIGTERM: a scheduler's time limit, `kill`, a stopped container) ends a command as
    # Ctrl-C does: runs are marked KILLED with their resume command, child processes stopped.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except (AasRayError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
