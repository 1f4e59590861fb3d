import json

import numpy as np
import pandas as pd
import pytest

from aas_ray.cli import main


def tiny_sets(tmp_path):
    out = []
    for s in [f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
              "data.synthetic.identities=10", "data.synthetic.families=4", "data.synthetic.max_images=8",
              "data.synthetic.image_size=48", "model.image_size=[64,64]", "cluster.k1=10", "cluster.k2=3",
              "al.budget_fraction=0.01", "al.cycles=2"]:
        out += ["--set", s]
    return out


def test_datasets_lists_registry(tmp_path, capsys):
    assert main(["datasets", "--cache-dir", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    from aas_ray.config import SyntheticConfig

    assert rows["synthetic"]["present"] is True and rows["synthetic"]["identities"] == SyntheticConfig().identities
    assert rows["ZakynthosTurtles"]["present"] is False
    assert "LionData" in rows and "folder" in rows


def test_datasets_finds_liondata(tmp_path, capsys, lion_root):
    assert main(["datasets", "--data-root", str(lion_root.parent), "--cache-dir", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["LionData"]["present"] is True
    assert rows["LionData"]["images"] == 740 and rows["LionData"]["identities"] == 94


def test_evaluate_writes_split_and_metrics(tmp_path):
    assert main(["evaluate", *tiny_sets(tmp_path)]) == 0
    out = tmp_path / "runs" / "zeroshot-synthetic"
    m = json.loads((out / "metrics.json").read_text())
    split = pd.read_csv(out / "split.csv")
    assert set(split["role"]) <= {"train", "query", "held_out"}
    assert split["gallery"].sum() > 0 and (split.loc[split["gallery"], "role"] == "train").all()
    # The figures are those of the split it wrote: recomputed from the cached features.
    from aas_ray.cli import DEMO_CONFIG
    from aas_ray.config import load_config
    from aas_ray.eval import retrieval_metrics
    from aas_ray.experiment.prepare import prepare_experiment

    cfg = load_config(DEMO_CONFIG, [a for a in tiny_sets(tmp_path) if a != "--set"])
    x = prepare_experiment(cfg, progress=False).features
    q, g = np.flatnonzero(split["role"] == "query"), np.flatnonzero(split["gallery"])
    ids = split["identity"].to_numpy()
    want = retrieval_metrics(x[q] @ x[g].T, ids[q], ids[g])
    assert m == pytest.approx(want)
    assert m["known_queries"] == split.loc[q, "known"].sum() and m["unknown_queries"] == (~split.loc[q, "known"]).sum()
    # Same seed, same split: the protocol is auditable and deterministic.
    assert main(["evaluate", *tiny_sets(tmp_path)]) == 0
    assert pd.read_csv(out / "split.csv").equals(split)


def test_simulate_on_dataset_and_on_npy(tmp_path, capsys):
    assert main(["simulate", *tiny_sets(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "runs" / "simulate-synthetic" / "cycles.csv")
    assert set(table["strategy"]) == {"aas", "random"} and table["cycle"].max() == 2
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 16))
    y = np.repeat(np.arange(30), 8)
    x = centres[y] + 0.8 * rng.normal(size=(240, 16))
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "sim"
    assert main(["simulate", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--out", str(out), "--cycles", "3", "--set", "cluster.k1=15", "--set", "cluster.k2=4",
                 "--set", "al.budget_fraction=0.002"]) == 0
    t = pd.read_csv(out / "cycles.csv")
    aas = t[t["strategy"] == "aas"].set_index("cycle")
    assert (aas["utilised_budget"].diff().dropna() >= 0).all()
    assert (aas.loc[1:, "pairs_asked"] <= int(np.ceil(0.002 * 240 * 239 / 2))).all()
    pairs = pd.read_csv(out / "pairs-aas.csv")
    assert pairs[["u", "v"]].duplicated().sum() == 0
    assert "dataset f: n=240" in capsys.readouterr().out


def test_simulate_bad_inputs(tmp_path, caplog):
    np.save(tmp_path / "f.npy", np.full((10, 4), np.nan))
    np.save(tmp_path / "y.npy", np.arange(10))
    assert main(["simulate", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "NaN" in caplog.text
    assert not (tmp_path / "o").exists()  # refused before anything is written: no empty output folder
    np.save(tmp_path / "g.npy", np.random.default_rng(0).normal(size=(10, 4)))
    np.save(tmp_path / "one.npy", np.zeros(10))
    assert main(["simulate", "--features", str(tmp_path / "g.npy"), "--labels", str(tmp_path / "one.npy"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 identities" in caplog.text


def test_a_faulty_override_is_named_alone(tmp_path, caplog):
    assert main(["evaluate", *tiny_sets(tmp_path), "--set", "model.image_size=[0,0]", "--set", "al.epsilon=0.5"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("invalid configuration in --set model.image_size=[0,0]: 'model.image_size.0'")
    assert "output_dir" not in line and "al.epsilon" not in line
    caplog.clear()
    # a check across two keys blames the override that completes the conflict
    assert main(["evaluate", "--set", "al.budget_fraction=0.1", "--set", "al.budget_pairs=5"]) == 2
    assert "invalid configuration in --set al.budget_pairs=5: 'al': set only one of" in caplog.text
    assert "--set al.budget_fraction=0.1" not in caplog.text


def test_a_csv_catalogue_lacking_a_column_is_named(tmp_path, caplog):
    csv = tmp_path / "catalogue.csv"
    pd.DataFrame({"image_id": ["a", "b"], "path": ["a.jpg", "b.jpg"]}).to_csv(csv, index=False)
    assert main(["evaluate", *tiny_sets(tmp_path), "--set", "data.name=csv", "--set", f"data.csv={csv}"]) == 2
    assert f"catalogue CSV {csv} lacks column(s) ['identity']" in caplog.text
    assert not (tmp_path / "runs").exists()


def test_every_user_facing_error_has_the_one_base_the_cli_catches(tmp_path, caplog):
    from aas_ray.al import ContradictionError
    from aas_ray.checks import InputError
    from aas_ray.config import ConfigError
    from aas_ray.data import DatasetError
    from aas_ray.data.images import ImageLoadError
    from aas_ray.errors import AasRayError
    from aas_ray.experiment.checkpoint import NoSpaceLeft
    from aas_ray.models import ModelError
    from aas_ray.orchestration.mlflow_tracking import TrackingError
    from aas_ray.orchestration.runlock import RunLocked

    for cls in (InputError, ConfigError, DatasetError, ImageLoadError, ModelError, TrackingError, RunLocked,
                NoSpaceLeft, ContradictionError):
        assert issubclass(cls, AasRayError), cls
    bad = tmp_path / "bad.yaml"
    bad.write_text("al:\n  epsilon: 7\n")
    assert main(["simulate", "--config", str(bad)]) == 2
    assert "'al.epsilon'" in caplog.text
