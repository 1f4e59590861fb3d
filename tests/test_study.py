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
