"""Study files and study summaries (no Ray needed): every value checked before Ray starts,
gap closed and mean ± sd over seeds in the summary."""

import numpy as np
import pandas as pd
import pytest
import yaml

from aas_ray.config import ConfigError
from aas_ray.orchestration.study import load_study
from aas_ray.orchestration.tune import aggregate, format_aggregate, summarise

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "tune_configs"


def write(tmp_path, **study):
    body = {"study": "t", "base": str(REPO_CONFIGS / "demo.yaml"), **study}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_every_grid_value_and_dataset_is_checked_before_ray(tmp_path):
    with pytest.raises(ConfigError, match=r"search.al.epsilon value 5.0.*'al.epsilon'"):
        load_study(write(tmp_path, search={"al.epsilon": {"grid": [0.2, 5.0]}}))
    with pytest.raises(ConfigError, match="search.al.strategy value 'bogus'"):
        load_study(write(tmp_path, search={"al.strategy": {"grid": ["aas", "bogus"]}}))
    with pytest.raises(ConfigError, match="unknown key 'al.epsilonn'"):
        load_study(write(tmp_path, search={"al.epsilonn": {"grid": [0.2]}}))
    with pytest.raises(ConfigError, match=r"search.al.s_min value 2.0: 'al.s_min': Input should be less than"):
        load_study(write(tmp_path, search={"al.s_min": {"uniform": [0.1, 2.0]}}))
    with pytest.raises(ConfigError, match=r"loguniform needs \[lo, hi\] with lo < hi and lo > 0"):
        load_study(write(tmp_path, search={"al.s_min": {"loguniform": [0.0, 0.5]}}))
    with pytest.raises(ConfigError, match="cannot be simulated"):
        load_study(write(tmp_path, kind="simulate", search={"al.strategy": {"grid": ["aas", "supervised"]}}))
    with pytest.raises(ConfigError, match="search.seed: Input should be a valid dictionary"):
        load_study(write(tmp_path, search={"seed": [0, 1]}))
    study, base = load_study(write(tmp_path, search={"al.strategy": {"grid": ["none", "aas"]}}),
                             ["max_concurrent_trials=2", "overrides.al.cycles=2"])
    assert study.max_concurrent_trials == 2 and base["al"]["cycles"] == 2


def test_summary_reports_gap_closed_per_seed_and_mean_sd(tmp_path):
    from aas_ray.orchestration.study import StudyConfig

    study = StudyConfig(study="t", kind="train", datasets=["synthetic"],
                        search={"al.strategy": {"grid": ["none", "aas", "supervised"]}, "seed": {"grid": [0, 1]}})
    rows = []
    maps = {("none", 0): 0.20, ("aas", 0): 0.30, ("supervised", 0): 0.40,
            ("none", 1): 0.10, ("aas", 1): 0.25, ("supervised", 1): 0.40}
    for (s, seed), m in maps.items():
        rows.append({"config/data.name": "synthetic", "config/al.strategy": s, "config/seed": seed, "mAP": m,
                     "top1": m, "auc_roc": 0.6, "utilised_budget": 0.004 if s == "aas" else 0.0, "pairs": 10})
    files = summarise(pd.DataFrame(rows), study, tmp_path)
    table = pd.read_csv(tmp_path / "summary.csv")
    aas = table[table["al.strategy"] == "aas"].set_index("seed")["gap_closed"]
    assert aas[0] == pytest.approx(0.5) and aas[1] == pytest.approx(0.5)
    agg = pd.read_csv(tmp_path / "aggregate.csv").set_index("al.strategy")
    assert agg.loc["aas", "mAP_mean"] == pytest.approx(0.275)
    assert agg.loc["aas", "mAP_sd"] == pytest.approx(np.std([0.30, 0.25], ddof=1))
    assert agg.loc["aas", "gap_closed_mean"] == pytest.approx(0.5) and agg.loc["aas", "repeats"] == 2
    text = (tmp_path / "aggregate.txt").read_text()
    assert "| synthetic | aas | 27.5 ± 3.5 |" in text
    assert {f.name for f in files} >= {"summary.csv", "summary.html", "aggregate.csv", "aggregate.txt", "paired.csv",
                                       "paired.txt"}
    paired = pd.read_csv(tmp_path / "paired.csv").set_index("contrast")
    # aas - none per seed: +0.10 and +0.15; mean 0.125, t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.0354 / 1.414
    assert paired.loc["aas − none", "mean"] == pytest.approx(0.125)
    assert paired.loc["aas − none", "high"] - 0.125 == pytest.approx(12.7062 * np.std([0.1, 0.15], ddof=1) / 2 ** 0.5,
                                                                     rel=1e-3)
    assert paired.loc["aas − none", "verdict"] == "not separable"  # two seeds: the interval spans 0
    assert "| synthetic | aas − none | 2 | +10.0 +15.0 | +12.5 [-19.3, +44.3] | not separable |" in \
        (tmp_path / "paired.txt").read_text()


def test_no_aggregate_without_repeats():
    from aas_ray.orchestration.study import StudyConfig

    study = StudyConfig(study="t", search={"al.epsilon": {"grid": [0.2, 0.6]}})
    assert aggregate(pd.DataFrame({"data.name": ["s"], "al.epsilon": [0.2], "mAP": [0.1]}), study) is None
    agg = pd.DataFrame({"data.name": ["s"], "mAP_mean": [0.5], "mAP_sd": [np.nan], "repeats": [1]})
    assert "50.0 ± 0.0" in format_aggregate(agg)


def test_report_rebuilds_table_one_and_curves_from_the_store(tmp_path):
    from mlflow.tracking import MlflowClient

    from aas_ray.orchestration.report import build_report
    from aas_ray.orchestration.mlflow_tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    parent = MlflowTracker.create(uri, "aas-ray", "study-cmp", {"study": "cmp", "kind": "train"})
    final = {("none", 0): 0.20, ("aas", 0): 0.30, ("supervised", 0): 0.40,
             ("none", 1): 0.10, ("aas", 1): 0.25, ("supervised", 1): 0.40, ("random", 0): 0.22, ("random", 1): 0.12}
    for (s, seed), m in final.items():
        t = MlflowTracker.create(uri, "aas-ray", f"{s}-{seed}", {"study": "cmp", "dataset": "synthetic", "strategy": s},
                                 parent.run_id)
        t.log_params({"seed": seed})
        for step, frac in ((0, 0.0), (2, 0.5), (4, 1.0)):
            pairs = 0 if s in ("none", "supervised") else 100 * step
            t.log_metrics({"eval/mAP": 0.15 + frac * (m - 0.15), "eval/pairs": pairs, "eval/top1": m,
                           "eval/utilised_budget": pairs / 1e5}, step=step)
        t.finish()
    out = build_report(uri, "cmp", out=tmp_path / "rep")
    table = pd.read_csv(out / "table1.csv")
    aas = table[(table["dataset"] == "synthetic") & (table["strategy"] == "aas")].iloc[0]
    assert aas["mAP"] == "27.5 ± 3.5" and aas["gap_closed"] == "50.0 ± 0.0" and aas["n"] == 2
    rnd = table[(table["dataset"] == "synthetic") & (table["strategy"] == "random")].iloc[0]
    assert rnd["gap_closed"] == "8.3 ± 2.4"  # (22-20)/(40-20) = 10 % and (12-10)/(40-10) = 6.7 %
    assert list(table["strategy"][:4]) == ["none", "random", "aas", "supervised"]
    assert (out / "curve-synthetic.png").stat().st_size > 10_000 and "Table 1" in (out / "report.html").read_text()
    arts = {a.path for a in MlflowClient(uri).list_artifacts(parent.run_id, "report")}
    assert {"report/report.html", "report/table1.csv", "report/curve-synthetic.png", "report/paired.csv"} <= arts
    paired = pd.read_csv(out / "paired.csv").set_index("contrast")
    assert paired.loc["aas − random", "differences"] == "+0.0800 +0.1300" and paired.loc["aas − random", "n"] == 2
    assert "Paired differences" in (out / "report.html").read_text()


def test_report_orders_the_baselines_and_names_the_reconstructions():
    from aas_ray.orchestration.report import table_one

    rows = [{"dataset": "synthetic", "strategy": s, "seed": seed, "pair F1": f, "ARI": f, "NMI": f, "must-links": 3,
             "budget": 0.001}
            for seed in (0, 1) for s, f in (("aas", 0.3), ("lbas", 0.2), ("none", 0.1), ("gbas", 0.15), ("nis", 0.12))]
    table = table_one(pd.DataFrame(rows), "simulate")
    per = table[table["dataset"] == "synthetic"]
    assert list(per["strategy"]) == ["none", "nis", "gbas (reconstruction)", "lbas (reconstruction)", "aas"]
    assert per.iloc[3]["pair F1"] == "20.0 ± 0.0" and per.iloc[3]["n"] == 2


def test_gap_closed_uses_bounds_from_the_same_command_or_the_store(tmp_path):
    from mlflow.tracking import MlflowClient

    from aas_ray.config import load_config
    from aas_ray.experiment.checkpoint import RunState
    from aas_ray.orchestration.compare import config_key
    from aas_ray.orchestration.run import log_gap_closed
    from aas_ray.orchestration.mlflow_tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    key = config_key(cfg)
    other = config_key(load_config(None, [f"output_dir={tmp_path}", "seed=1"]))
    assert key == config_key(load_config(None, [f"output_dir={tmp_path / 'x'}", "al.strategy=none"])) != other
    for strategy, m, k in (("none", 0.2, key), ("supervised", 0.4, key), ("supervised", 0.9, other)):
        t = MlflowTracker.create(uri, "aas-ray", strategy, {"strategy": strategy, "config_key": k})
        t.log_metrics({"eval/mAP": m}, step=6)
        t.finish()
    run = MlflowTracker.create(uri, "aas-ray", "aas", {"strategy": "aas", "config_key": key})
    (tmp_path / run.run_id).mkdir()
    RunState(evals=[{"step": 0}, {"step": 6}]).save(tmp_path / run.run_id / "state.json")
    assert log_gap_closed(uri, cfg, run.run_id, {"mAP": 0.35}, {}) == pytest.approx(0.75)  # from the store
    assert log_gap_closed(uri, cfg, run.run_id, {"mAP": 0.35}, {"none": 0.3, "supervised": 0.5}) == pytest.approx(0.25)
    hist = MlflowClient(uri).get_metric_history(run.run_id, "eval/gap_closed")
    assert [(h.step, round(h.value, 4)) for h in hist] == [(6, 0.75), (6, 0.25)]


def test_a_study_with_a_missing_dataset_fails_before_ray_starts(tmp_path, caplog):
    import time

    import ray

    from aas_ray.cli import main

    path = write(tmp_path, datasets=["synthetic", "Unicorns"], search={"al.strategy": {"grid": ["aas"]}},
                 overrides={"data.cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "runs"),
                            "data.synthetic.identities": 6, "data.synthetic.image_size": 40,
                            "model.image_size": [32, 32]})
    t = time.time()
    assert main(["tune", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "unknown dataset 'Unicorns'" in caplog.text
    assert not ray.is_initialized() and time.time() - t < 60


def test_scheduler_retries_and_storage_are_study_keys(tmp_path):
    study, _ = load_study(write(tmp_path, kind="train"))
    assert study.max_failures == 1 and study.scheduler.asha is None and study.storage is None
    study, _ = load_study(write(tmp_path, kind="train", max_failures=3, storage=str(tmp_path / "shared"),
                                scheduler={"asha": {"grace_period": 2, "reduction_factor": 3}}))
    assert study.max_failures == 3 and study.scheduler.asha.grace_period == 2
    assert study.scheduler.asha.reduction_factor == 3
    with pytest.raises(ConfigError, match=r"scheduler.asha.grace: Extra inputs are not permitted"):
        load_study(write(tmp_path, kind="train", scheduler={"asha": {"grace": 2}}))
    with pytest.raises(ConfigError, match=r"scheduler.hyperband: Extra inputs are not permitted"):
        load_study(write(tmp_path, kind="train", scheduler={"hyperband": {}}))
    with pytest.raises(ConfigError, match=r"scheduler.asha.reduction_factor: Input should be greater than 1"):
        load_study(write(tmp_path, kind="train", scheduler={"asha": {"reduction_factor": 1}}))
    with pytest.raises(ConfigError, match=r"max_failures: Input should be greater than or equal to 0"):
        load_study(write(tmp_path, max_failures=-1))
    with pytest.raises(ConfigError, match=r"scheduler needs kind: train"):
        load_study(write(tmp_path, kind="simulate", scheduler={"asha": {}}))


def test_storage_is_one_setting_for_run_folders_checkpoints_and_study_state(tmp_path, monkeypatch):
    from aas_ray.checks import InputError
    from aas_ray.orchestration.storage import STORAGE_ENV, Storage

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    unset = Storage.resolve(None, None)
    assert unset.root is None
    assert unset.output_dir("/runs") == "/runs"
    assert unset.ray_train("/runs") == "/runs/ray_train" and unset.tune("/runs") == "/runs/tune"
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "from-env"))
    shared = Storage.resolve(None, None)
    assert shared.root == str(tmp_path / "from-env") and (tmp_path / "from-env").is_dir()
    assert shared.output_dir("/runs") == shared.root  # run folders on the shared path
    assert shared.ray_train("/runs") == f"{shared.root}/ray_train" and shared.tune("/runs") == f"{shared.root}/tune"
    # the command line, then the study file, then the environment
    assert Storage.resolve(None, str(tmp_path / "study")).root == str(tmp_path / "study")
    assert Storage.resolve(str(tmp_path / "cli"), str(tmp_path / "study")).root == str(tmp_path / "cli")
    bucket = Storage.resolve("s3://bucket/aas/", None)
    assert bucket.is_uri and bucket.root == "s3://bucket/aas"
    assert bucket.output_dir("/runs") == "/runs"  # run folders are files with locks: not in an object store
    assert bucket.ray_train("/runs") == "s3://bucket/aas/ray_train" and bucket.tune("/runs") == "s3://bucket/aas/tune"
    with pytest.raises(InputError, match=r"^storage 'ftp://host/x' \(--storage, a study's `storage:` or "
                                         r"AAS_RAY_STORAGE\): unknown scheme 'ftp'"):
        Storage.resolve("ftp://host/x")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=r"^storage '.*file/runs' \(--storage.*\) cannot be created: Not a directory$"):
        Storage.resolve(str(tmp_path / "file" / "runs"))


def test_a_run_folder_comes_back_from_a_checkpoint_only_when_newer(tmp_path):
    from ray.train import Checkpoint

    from aas_ray.experiment.checkpoint import RunState
    from aas_ray.experiment.run_folder import DURABLE, RunFolder
    from aas_ray.orchestration.storage import folder_checkpoint, restore_folder

    src = tmp_path / "src"
    src.mkdir()
    RunState(epoch_done=3, tracking_run_id="r").save(src / "state.json")
    for name in ("checkpoint.pt", "annotations.jsonl", "pairs.csv"):
        (src / name).write_text(f"{name} at 3")
    (src / "weights.safetensors").write_text("not a checkpoint file")
    kept = tmp_path / "kept"
    with folder_checkpoint(RunFolder(src), Checkpoint) as ckpt:
        import shutil

        shutil.copytree(ckpt.path, kept)
    assert sorted(p.name for p in kept.iterdir()) == sorted(DURABLE)
    ckpt = Checkpoint.from_directory(str(kept))
    fresh = tmp_path / "fresh"  # a node that never saw the run
    assert restore_folder(ckpt, RunFolder(fresh)) and RunState.load(fresh / "state.json").epoch_done == 3
    assert (fresh / "checkpoint.pt").read_text() == "checkpoint.pt at 3"
    ahead = tmp_path / "ahead"  # a folder that trained further than the checkpoint: kept as it is
    ahead.mkdir()
    RunState(epoch_done=5).save(ahead / "state.json")
    (ahead / "checkpoint.pt").write_text("checkpoint.pt at 5")
    assert not restore_folder(ckpt, RunFolder(ahead)) and (ahead / "checkpoint.pt").read_text() == "checkpoint.pt at 5"
    behind = tmp_path / "behind"
    behind.mkdir()
    RunState(epoch_done=1).save(behind / "state.json")
    (behind / "checkpoint.pt").write_text("checkpoint.pt at 1")
    assert restore_folder(ckpt, RunFolder(behind)) and (behind / "checkpoint.pt").read_text() == "checkpoint.pt at 3"
    assert not restore_folder(None, RunFolder(tmp_path / "none")) and not (tmp_path / "none").exists()


def test_a_trial_that_fits_on_no_node_is_an_error_before_it_waits_forever():
    from aas_ray.checks import InputError
    from aas_ray.orchestration.resources import study_resources
    from aas_ray.orchestration.study import StudyConfig

    train = StudyConfig(study="t", kind="train", resources_per_trial={"cpu": 8, "gpu": 1})
    gpu_nodes = [{"CPU": 4.0}, {"CPU": 16.0, "GPU": 2.0}]
    assert study_resources(train, gpu_nodes) == ({"cpu": 8.0, "gpu": 1.0}, 0.0)
    # 8 CPUs and a GPU in all, but never on one node
    with pytest.raises(InputError, match=r"^resources_per_trial \(cpu 8, gpu 1\) asks for 8 CPU\(s\) and 1 GPU\(s\) "
                                         r"on one node, but no node of the Ray cluster has them \(its nodes: 4 CPUs, "
                                         r"1 GPUs; 4 CPUs, 0 GPUs\)$"):
        study_resources(train, [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0}])
    sim = StudyConfig(study="s", kind="simulate", datasets=["a", "b"], resources_per_trial={"cpu": 2, "gpu": 0.5})
    assert study_resources(sim, gpu_nodes) == ({"cpu": 2.0}, 0.5)
    with pytest.raises(InputError, match="needs 1 GPU"):
        study_resources(sim, [{"CPU": 4.0, "GPU": 0.5}, {"CPU": 4.0}])


def test_summary_lists_stopped_trials_but_reads_only_finished_ones(tmp_path):
    from aas_ray.orchestration.study import StudyConfig

    study = StudyConfig(study="t", kind="train", search={"al.strategy": {"grid": ["none", "aas", "supervised"]},
                                                         "seed": {"grid": [0, 1]}})
    rows = []
    for seed in (0, 1):
        for s, m, status in (("none", 0.2, "finished"), ("aas", 0.3, "finished"), ("supervised", 0.4, "finished")):
            rows.append({"config/data.name": "synthetic", "config/al.strategy": s, "config/seed": seed, "mAP": m,
                         "status": status, "epoch": 6})
    rows[4].update(mAP=0.05, status="stopped early", epoch=2)  # aas, seed 1, stopped at epoch 2
    summarise(pd.DataFrame(rows), study, tmp_path)
    table = pd.read_csv(tmp_path / "summary.csv")
    assert list(table["status"]) == ["finished"] * 4 + ["stopped early", "finished"]
    assert np.isnan(table.loc[4, "gap_closed"]) and table.loc[1, "gap_closed"] == pytest.approx(0.5)
    agg = pd.read_csv(tmp_path / "aggregate.csv").set_index("al.strategy")
    assert agg.loc["aas", "repeats"] == 1 and agg.loc["aas", "mAP_mean"] == pytest.approx(0.3)


def test_a_study_counts_every_trial_tune_will_make():
    from aas_ray.orchestration.study import StudyConfig
    from aas_ray.orchestration.tune import study_size

    assert study_size(StudyConfig(study="t", datasets=["a", "b"], search={"al.strategy": {"grid": ["aas", "random"]},
                                                                          "al.epsilon": {"grid": [0.2, 0.6, 1.0]}})) == 12
    assert study_size(StudyConfig(study="t", num_samples=5, search={"al.s_min": {"uniform": [0.1, 0.5]},
                                                                    "seed": {"grid": [0, 1]}})) == 10
    assert study_size(StudyConfig(study="t")) == 1
