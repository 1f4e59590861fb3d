"""benchmarks/data/prepare_lion_nyala.py: the archive laid out where the registry reads it."""

import importlib.util
import zipfile
from pathlib import Path

import pytest

from aas_ray.config import DataConfig
from aas_ray.data import load_catalogue

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "prepare_lion_nyala.py"


@pytest.fixture
def prep():
    spec = importlib.util.spec_from_file_location("prepare_lion_nyala", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def archive(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("wildlife_reidentification-main/README.md", "x")
        for name in members:
            zf.writestr(f"wildlife_reidentification-main/{name}", b"\xff\xd8 not decoded here")
    return path


NYALA = ["Nyala_Data_Zero/train/1/14_left.jpg", "Nyala_Data_Zero/train/1/14_right.jpg", "Nyala_Data_Zero/test/2/9.jpg"]
LION = ["Lion_Data_Zero/train/a/1.png", "Lion_Data_Zero/val/b/2.png"]


def test_the_archive_is_laid_out_for_the_registry_and_counted(tmp_path, prep, monkeypatch, capsys):
    zip_path = archive(tmp_path / "main.zip", NYALA + LION)
    out = tmp_path / "wr"
    # the published counts: a different copy is refused, naming the folder and both counts
    assert prep.main([str(out), "--source", str(zip_path), "--sets", "NyalaData"]) == 2
    err = capsys.readouterr().err
    assert "Nyala_Data_Zero: 3 images of 2 identities, expected 1942 of 237" in err

    monkeypatch.setitem(prep.EXPECTED, "Nyala_Data_Zero", (3, 2))
    monkeypatch.setitem(prep.EXPECTED, "Lion_Data_Zero", (2, 2))
    # the Nyala folder extracted above is kept and counted again; Lion is extracted now
    assert prep.main([str(out), "--source", str(zip_path)]) == 0
    assert "NyalaData: 3 images of 2 identities" in capsys.readouterr().out
    cat = load_catalogue(DataConfig(name="NyalaData", root=str(out)), progress=False)
    assert len(cat) == 3 and cat.n_identities == 2
    assert "split" not in cat.df.columns  # the folder split has disjoint identities: aas-ray splits itself
    assert all((cat.root / p).is_file() for p in cat.df["path"])
    assert len(load_catalogue(DataConfig(name="LionData", root=str(out)), progress=False)) == 2


def test_sources_it_cannot_use_are_named(tmp_path, prep, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert prep.main([str(tmp_path / "o1"), "--source", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: not a zip file" in capsys.readouterr().err
    assert prep.main([str(tmp_path / "o2"), "--source", str(tmp_path / "missing.zip")]) == 2
    assert "missing.zip: no such file or directory" in capsys.readouterr().err
    lion_only = archive(tmp_path / "lion.zip", LION)
    assert prep.main([str(tmp_path / "o3"), "--source", str(lion_only), "--sets", "NyalaData"]) == 2
    assert "holds no Nyala_Data_Zero/ folder" in capsys.readouterr().err
    assert not (tmp_path / "o3" / "wildlife_reidentification-main" / "Nyala_Data_Zero").exists()
