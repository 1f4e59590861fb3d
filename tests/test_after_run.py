"""What a user takes home from a run: the model as an MLflow model, the individuals of the
training photos (CSV, summary, contact sheet), and new photos matched against them."""

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from aas_ray.checks import InputError
from aas_ray.cli import main
from aas_ray.eval.individuals import medoid_distances, name_individuals, new_individual_threshold, rank_individuals
from aas_ray.orchestration.match import photo_catalogue

# A small synthetic set, one short epoch: the model stays near the zero-shot backbone, so the
# run's evaluation has rates worth comparing against (two epochs of 4 iterations degrade it).
SMALL = [
    "data.synthetic.identities=24", "data.synthetic.families=6", "data.synthetic.min_images=4",
    "data.synthetic.max_images=10", "data.synthetic.image_size=48", "model.image_size=[64,64]",
    "cluster.k1=10", "cluster.k2=3", "al.budget_fraction=0.01", "al.cycles=1", "al.every=1",
    "train.iters=1", "train.batch_size=16", "train.eval_every=1", "train.epochs=1",
]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---- algorithms -----------------------------------------------------------------------

def test_individuals_are_numbered_by_size_with_singletons_last():
    labels = np.array([5, -1, 2, 2, 5, 2, -1, 7])
    ind = name_individuals(labels)
    # cluster 2 (3 images) is #1, cluster 5 (2) #2, then the singletons in image order: the two
    # unclustered images and cluster 7
    assert ind.tolist() == [2, 3, 1, 1, 2, 1, 4, 5]


def test_medoid_is_the_member_most_similar_to_the_others():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(60, 8)))
    ind = rng.integers(0, 7, 60)
    medoid, dist = medoid_distances(ind, x)
    for g in np.unique(ind):
        members = np.flatnonzero(ind == g)
        sims = x[members] @ x[members].T
        want = members[np.argmax(sims.sum(axis=1))]
        assert (medoid[members] == want).all()
        assert np.allclose(dist[members], 1 - x[members] @ x[want], atol=1e-6)


def test_ranking_scores_each_individual_by_its_most_similar_image():
    rng = np.random.default_rng(1)
    gallery, queries = unit(rng.normal(size=(50, 6))), unit(rng.normal(size=(9, 6)))
    ind = rng.integers(1, 12, 50)
    r = rank_individuals(queries, gallery, ind, k=4, chunk=4)  # several chunks
    sim = queries @ gallery.T
    for q in range(9):
        per = {i: sim[q, ind == i].max() for i in np.unique(ind)}
        want = sorted(per, key=lambda i: -per[i])[:4]
        assert r.individual[q].tolist() == want
        assert np.allclose(r.score[q], [per[i] for i in want], atol=1e-6)
        for c, i in enumerate(want):
            assert ind[r.best_image[q, c]] == i and np.isclose(sim[q, r.best_image[q, c]], per[i], atol=1e-6)
    assert rank_individuals(queries, gallery, np.zeros(50, int), k=5).individual.shape == (9, 1)


def test_new_individual_threshold_is_youdens_j_between_two_scores():
    best = np.array([0.9, 0.8, 0.75, 0.6, 0.7, 0.5, 0.4, 0.3])
    known = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    t = new_individual_threshold(best, known)
    # best cut: keep >= 0.75 (TPR 3/4, FPR 0) or >= 0.6 (TPR 1, FPR 1/4): J = 0.75 both; the first
    # (the higher threshold) is taken, halfway to the next lower score 0.7
    assert t["threshold"] == pytest.approx(0.725)
    assert t["known_accepted"] == 0.75 and t["unknown_flagged"] == 1.0
    assert t["auc"] == pytest.approx(15 / 16)
    assert np.isnan(new_individual_threshold(best, np.ones(8, bool))["threshold"])  # no unknown query
    worse = new_individual_threshold(best, ~known)  # unknown score higher: no threshold beats chance
    assert np.isnan(worse["threshold"]) and worse["auc"] < 0.5


# ---- contact sheet and inputs (no training) --------------------------------------------

def fake_run(tmp_path):
    """A finished run folder as far as `individuals` reads it, with hostile names and a big photo."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"finished": True}))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    paths = []
    for i, size in enumerate([(3000, 2000), (64, 48), (80, 80), (50, 90), (60, 60)]):
        p = imgs / f"p{i}.jpg"
        Image.new("RGB", size, (40 * i, 90, 160)).save(p, quality=95)
        paths.append(str(p))
    paths[4] = str(imgs / "gone.jpg")  # deleted since the run
    df = pd.DataFrame({
        "image_id": ["<script>alert(1)</script>", "b", "c", "d", "e\"onmouseover=\"x"],
        "path": paths, "individual": [1, 1, 1, 2, 3], "cluster_size": [3, 3, 3, 1, 1],
        "singleton": [False, False, False, True, True], "confirmed_by_person": [True, True, False, False, False],
        "distance_to_medoid": [0.0, 0.2, 0.1, 0.0, 0.0], "medoid": [True, False, False, True, True]})
    df.to_csv(run / "individuals.csv", index=False)
    (run / "open_set.json").write_text(json.dumps({"threshold": 0.5}))
    (run / "annotations.jsonl").write_text(
        '{"u": 0, "v": 1, "answer": "MUST_LINK", "cycle": 1, "source": "oracle"}\n'
        '{"u": 0, "v": 3, "answer": "CANNOT_LINK", "cycle": 1, "source": "oracle"}\n')
    return run


def test_contact_sheet_escapes_names_and_scales_photos_down(tmp_path, capsys):
    run = fake_run(tmp_path)
    assert main(["individuals", str(run)]) == 0
    out = capsys.readouterr().out
    assert "5 training images" in out
    assert "1 with 2 or more images (3 images), 2 singletons" in out
    assert "1: 2 | 2-3: 1" in out
    assert "links confirmed ('same' answers): 1 (and 1 'different', 0 'unsure'); they touch 2 images in 1" in out
    page = (run / "individuals.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '"onmouseover' not in page and "&quot;onmouseover" in page
    assert page.count("<tr>") == 1 and "Singletons (2)" in page
    thumbs = sorted((run / "individuals_files").glob("*.jpg"))
    assert len(thumbs) == 4  # the deleted photo has none: the page shows it as unreadable
    assert "unreadable" in page
    for t in thumbs:
        with Image.open(t) as im:
            assert max(im.size) <= 192
    assert max(t.stat().st_size for t in thumbs) < 20_000 and len(page) < 20_000


def test_photos_to_match_bad_inputs_are_named(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    with pytest.raises(InputError, match=r"no photos in .*empty: no file under it ends in \.jpg"):
        photo_catalogue(tmp_path / "empty")
    (tmp_path / "list.csv").write_text("file\na.jpg\n")
    with pytest.raises(InputError, match=r"list.csv has no 'path' column \(its columns: \['file'\]\)"):
        photo_catalogue(tmp_path / "list.csv")
    with pytest.raises(InputError, match="no photos to match at"):
        photo_catalogue(tmp_path / "nowhere")
    (tmp_path / "ok.csv").write_text("path\nsub/a.jpg\n/abs/b.png\n")
    cat = photo_catalogue(tmp_path / "ok.csv")
    assert [str(p) for p in cat.abs_paths()] == [str(tmp_path / "sub" / "a.jpg"), "/abs/b.png"]
    assert main(["match", "nope", str(tmp_path / "ok.csv"), "--output-dir", str(tmp_path / "runs")]) == 2
    assert f"no run 'nope': {tmp_path / 'runs' / 'nope'} holds no state.json" in caplog.text
    unfinished = tmp_path / "runs" / "half"
    unfinished.mkdir(parents=True)
    (unfinished / "state.json").write_text("{}")
    assert main(["match", str(unfinished), str(tmp_path / "ok.csv")]) == 2
    assert "has no individuals.csv: a run writes its individuals when it finishes" in caplog.text


def test_a_study_registers_a_model_only_when_its_trials_log_one(tmp_path):
    import yaml

    from aas_ray.config import ConfigError
    from aas_ray.orchestration.study import load_study

    base = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tune_configs" / "demo.yaml")

    def study(**extra):
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"study": "s", "base": base, "register_model": "lynx-embedder", **extra}))
        return load_study(path)[0]

    with pytest.raises(ConfigError, match="register_model needs kind: train"):
        study(kind="simulate")
    with pytest.raises(ConfigError, match="register_model needs kind: train with tracking.log_model: true"):
        study(kind="train", overrides={"tracking.log_model": False})
    assert study(kind="train").register_model == "lynx-embedder"


# ---- a finished run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("after")
    args = ["run", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--strategies", "aas"]
    for s in SMALL + [f"data.cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'runs'}"]:
        args += ["--set", s]
    assert main(args) == 0
    (run_dir,) = [p.parent for p in (tmp / "runs").glob("*/state.json")]
    return tmp, run_dir


def queries_csv(tmp, run_dir):
    """The run's evaluation queries (held-out images of known and of unknown individuals) as a CSV."""
    from aas_ray.config import load_config
    from aas_ray.data import load_catalogue

    root = load_catalogue(load_config(run_dir / "config.yaml").data, progress=False).root
    split = pd.read_csv(run_dir / "split.csv")
    q = split[split["role"] == "query"].copy()
    q["path"] = [str(root / p) for p in q["path"]]
    q[["path", "identity", "known"]].to_csv(tmp / "queries.csv", index=False)
    return q, split


@pytest.mark.slow
def test_model_is_logged_and_loads_in_a_fresh_process(finished):
    import mlflow

    from aas_ray.orchestration.embedder import register_model, tracking_uri

    tmp, run_dir = finished
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_id = run_dir.name
    with tracking_uri(uri):
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    (images,), (embeddings,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert images.type == np.dtype("float32") and images.shape == (-1, 3, 64, 64)
    assert embeddings.type == np.dtype("float32") and embeddings.shape == (-1, 1280)
    prep = info.metadata["aas_ray"]["preprocessing"]
    assert prep["image_size"] == [64, 64] and prep["mean"] == [0.5, 0.5, 0.5] and prep["std"] == [0.5, 0.5, 0.5]
    assert info.metadata["aas_ray"]["model"]["arch"] == "tf_efficientnet_lite0"
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"

    # the images as a user would prepare them from the model's metadata alone
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(tuple(prep["image_size"]), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize(prep["mean"], prep["std"])])
    ind = pd.read_csv(run_dir / "individuals.csv")
    x = np.stack([tf(Image.open(p).convert("RGB")).numpy() for p in ind["path"][:5]])
    np.save(tmp / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["aas_ray"] = None  # the model must need none of this package's code
        import mlflow, mlflow.pytorch, numpy as np, torch
        mlflow.set_tracking_uri({uri!r})
        x = np.load({str(tmp / 'x.npy')!r})
        model = mlflow.pytorch.load_model("runs:/{run_id}/model")
        with torch.no_grad():
            np.save({str(tmp / 'y.npy')!r}, model(torch.from_numpy(x)).numpy())
        np.save({str(tmp / 'y_pyfunc.npy')!r}, mlflow.pyfunc.load_model("runs:/{run_id}/model").predict(x))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trainer = np.load(run_dir / "embeddings.npy")[:5]  # the trainer's final model on the same images
    for name in ("y.npy", "y_pyfunc.npy"):
        y = np.load(tmp / name)
        assert y.shape == (5, 1280)
        assert np.abs(y - trainer).max() < 1e-5, name  # float noise of another batch size only
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)

    assert register_model(uri, run_id, "aas-ray-embedder") == "1"
    assert MlflowClient(uri).get_registered_model("aas-ray-embedder").latest_versions[0].run_id == run_id


@pytest.mark.slow
def test_individuals_csv_summary_and_mlflow_record(finished, capsys):
    from aas_ray.experiment.annotations import AnnotationJournal

    tmp, run_dir = finished
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    arts = {a.path for a in client.list_artifacts(run_dir.name)}
    assert {"individuals.csv", "open_set.json", "weights.safetensors"} <= arts
    ind = pd.read_csv(run_dir / "individuals.csv")
    split = pd.read_csv(run_dir / "split.csv")
    assert ind["image_id"].tolist() == split.loc[split["role"] == "train", "image_id"].tolist()
    assert ind["path"].map(lambda p: p.startswith("/")).all()
    sizes = ind.groupby("individual")["image_id"].transform("size")
    assert (ind["cluster_size"] == sizes).all() and (ind["singleton"] == (sizes == 1)).all()
    assert ind.groupby("individual")["medoid"].sum().eq(1).all()
    assert ((ind["distance_to_medoid"] >= 0) & (ind["distance_to_medoid"] <= 2)).all()
    assert (ind.loc[ind["medoid"], "distance_to_medoid"] == 0).all()
    # confirmed: exactly the images a 'same' answer links, and those share an individual (NP3)
    store = AnnotationJournal(run_dir / "annotations.jsonl").load_store(len(ind))
    ml = store.must_links()
    assert ml.shape[0] > 0
    assert set(np.flatnonzero(ind["confirmed_by_person"])) == set(ml.ravel().tolist())
    assert (ind["individual"].to_numpy()[ml[:, 0]] == ind["individual"].to_numpy()[ml[:, 1]]).all()

    metrics = client.get_run(run_dir.name).data.metrics
    open_set = json.loads((run_dir / "open_set.json").read_text())
    assert metrics["eval/new_individual_threshold"] == pytest.approx(open_set["threshold"])
    assert metrics["labels/individuals"] == int((ind.groupby("individual").size() > 1).sum())

    assert main(["individuals", run_dir.name, "--output-dir", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out
    n_multi = int((ind.groupby("individual").size() > 1).sum())
    assert f"{len(ind)} training images" in out and f"individuals: {n_multi} with 2 or more images" in out
    assert f"links confirmed ('same' answers): {ml.shape[0]} (and" in out
    page = (run_dir / "individuals.html").read_text()
    assert page.count("<tr>") == n_multi


@pytest.mark.slow
def test_held_out_photos_are_matched_at_the_rates_of_the_runs_evaluation(finished, capsys):
    tmp, run_dir = finished
    q, split = queries_csv(tmp, run_dir)
    assert main(["match", str(run_dir), str(tmp / "queries.csv")]) == 0
    out = capsys.readouterr().out
    assert "new individual: best score below" in out
    m = pd.read_csv(run_dir / "match-queries" / "matches.csv")
    assert (m.groupby("photo")["rank"].max() == 5).all()
    top = m[m["rank"] == 1].merge(q, left_on="photo", right_on="path", validate="one_to_one")
    assert len(top) == len(q)
    open_set = json.loads((run_dir / "open_set.json").read_text())
    final = pd.read_csv(run_dir / "evals.csv").iloc[-1]
    known, unknown = top[top["known"]], top[~top["known"]]
    assert len(known) == final["known_queries"] and len(unknown) == final["unknown_queries"] > 0

    # The threshold was chosen on these very images: match must reproduce the run's operating
    # point exactly (same network, preprocessing and scores) ...
    from sklearn.metrics import roc_auc_score

    assert (~known["new_individual"]).mean() == pytest.approx(open_set["known_accepted"])
    assert unknown["new_individual"].mean() == pytest.approx(open_set["unknown_flagged"])
    auc = roc_auc_score(top["known"], top["score"])
    assert auc == pytest.approx(open_set["auc"], abs=1e-9)
    # ... and tell known from unknown about as well as the evaluation's AUC-ROC says (the
    # evaluation compares with 5 exemplars per identity, match with every training image)
    assert abs(auc - final["auc_roc"]) <= 0.1
    # held-out images of known individuals: the top individual is theirs (the identity most of
    # its images have) about as often as the evaluation's top-1; one query is 1/len(known)
    truth = split.set_index("image_id")["identity"]
    ind = pd.read_csv(run_dir / "individuals.csv")
    majority = ind.assign(identity=ind["image_id"].map(truth)).groupby("individual")["identity"].agg(
        lambda v: v.value_counts().index[0])
    top1 = (known["individual"].map(majority) == known["identity"]).mean()
    assert abs(top1 - final["top1"]) <= 0.15, (top1, final["top1"])


@pytest.mark.slow
def test_match_a_folder_skips_unreadable_photos_and_keeps_the_rest(finished, tmp_path, caplog, capsys):
    _, run_dir = finished
    ind = pd.read_csv(run_dir / "individuals.csv")
    photos = tmp_path / "week 12"
    (photos / "cam<2>").mkdir(parents=True)
    Image.open(ind["path"][0]).save(photos / "a.png")
    Image.open(ind["path"][1]).convert("RGB").resize((2400, 1800)).save(photos / "cam<2>" / "b.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["match", str(run_dir), str(photos), "--out", str(out), "--top-k", "3"]) == 0
    assert "skipped 1 unreadable photo(s)" in caplog.text and "broken.jpg" in caplog.text
    m = pd.read_csv(out / "matches.csv")
    assert sorted(m["photo"].unique()) == ["a.png", "cam<2>/b.jpg"] and len(m) == 6
    a = m[(m["photo"] == "a.png") & (m["rank"] == 1)].iloc[0]
    # a training photo itself: its own individual, through its own image, at similarity 1
    assert a["individual"] == ind["individual"][0] and a["best_image"] == ind["image_id"][0]
    assert a["score"] == pytest.approx(1.0, abs=1e-4) and not a["new_individual"]
    assert pd.read_csv(out / "skipped.csv")["photo"].tolist() == ["broken.jpg"]
    page = (out / "matches.html").read_text()
    assert "cam&lt;2&gt;/b.jpg" in page and "cam<2>" not in page and "broken.jpg" in page
    for t in (out / "matches_files").glob("*.jpg"):
        with Image.open(t) as im:
            assert max(im.size) <= 192
    assert "skipped (unreadable): 1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_model_that_cannot_be_exported_is_reported_and_a_resumed_run_logs_none_twice(finished, monkeypatch, caplog):
    import mlflow

    from aas_ray.config import load_config
    from aas_ray.orchestration.embedder import log_embedder, logged_model_uri
    from aas_ray.orchestration.tracking import MlflowTracker

    tmp, run_dir = finished
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    first = logged_model_uri(uri, run_dir.name)
    assert first is not None
    assert main(["run", "--tracking-uri", uri, "--resume", str(run_dir)]) == 0
    assert logged_model_uri(uri, run_dir.name) == first
    client = MlflowClient(uri)
    exp = client.get_run(run_dir.name).info.experiment_id
    assert len(client.search_logged_models([exp], filter_string=f"source_run_id = '{run_dir.name}'")) == 1

    other = MlflowTracker.create(uri, "aas-ray", "export-fails")

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot trace this architecture\nmore detail")

    monkeypatch.setattr(mlflow.pytorch, "log_model", refuse)
    with caplog.at_level(logging.WARNING):
        assert log_embedder(uri, other.run_id, load_config(run_dir / "config.yaml"), run_dir) is None
    assert "the trained model was not logged to MLflow (RuntimeError: cannot trace this architecture)" in caplog.text
    assert client.get_run(other.run_id).data.tags["model_error"] == "RuntimeError: cannot trace this architecture"
