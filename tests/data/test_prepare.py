"""prepare, fed through download (local source) and extract: the real sample in its three layouts,
bad inputs counted by reason, the bad-fraction limit, the R2Gen split."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxrgen.data.download import run_download
from cxrgen.data.extract import extract
from cxrgen.data.prepare import prepare
from cxrgen.data.vocab import Vocab
from cxrgen.errors import CxrgenError

PROJECT_PARAMS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
SIZE = 32


def _params(**overrides) -> dict:
    params = json.loads(json.dumps(PROJECT_PARAMS))
    params["image"]["size"] = SIZE
    params["vocab"]["min_count"] = 1
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    return params


def _chain(folder: Path, tmp_path: Path, **overrides):
    raw = tmp_path / "raw"
    run_download({"sources": ["local"], "local": {"path": str(folder)},
                  "cache_dir": str(tmp_path / "downloads")}, raw)
    reports, images, skipped, record = extract(raw)
    return reports, images, prepare(reports, images, raw, _params(**overrides), skipped.counts())


def _tiny_png(path: Path, value: int = 128, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (20, 30), value if mode == "L" else (value,) * len(mode)).save(path)


def test_the_five_real_images_go_through_prepare(shared_sample: Path, tmp_path: Path):
    folder = tmp_path / "nlmcxr"
    shutil.copytree(shared_sample / "ecgen-radiology", folder / "ecgen-radiology")
    shutil.copytree(shared_sample / "images", folder / "images")
    reports, images, result = _chain(folder, tmp_path, **{"text.target": "both", "prepare.max_bad_fraction": 1.0})
    assert len(reports) == 63
    assert sorted(images["image_id"]) == sorted(p.stem for p in (shared_sample / "images").glob("*.png"))
    studies = result.studies.set_index("report_id")
    assert sorted(studies.index) == ["CXR1900", "CXR3", "CXR7"]
    assert studies.loc["CXR7", "first_image"] == "CXR7_IM-2263-1001"
    assert studies.loc["CXR7", "second_image"] == "CXR7_IM-2263-2001"
    assert studies.loc["CXR3", "single_view"]  # its lateral is not among the 5 images
    arrays = np.concatenate([a for a in result.arrays.values()])
    assert arrays.shape == (3, 2, SIZE, SIZE) and arrays.dtype == np.uint8 and arrays.mean() > 10
    # the 112 images listed by the sample but absent from it are counted, by name, never silently
    assert result.counts.dropped["image: id listed in report but no file"] == 117 - 5


def test_kaggle_and_r2gen_layouts_land_in_the_same_tables(shared_sample: Path, tmp_path: Path):
    kaggle = tmp_path / "kaggle"
    (kaggle / "images").mkdir(parents=True)
    shutil.copy(shared_sample / "indiana_reports_sample.csv", kaggle / "indiana_reports.csv")
    shutil.copy(shared_sample / "indiana_projections_sample.csv", kaggle / "indiana_projections.csv")
    for row in csv.DictReader(open(shared_sample / "indiana_projections_sample.csv")):
        real = shared_sample / "images" / ("CXR" + row["filename"].replace(".dcm.png", ".png"))
        target = kaggle / "images" / row["filename"]
        shutil.copy(real, target) if real.exists() else _tiny_png(target)
    reports, images, result = _chain(kaggle, tmp_path / "k", **{"text.target": "both"})
    xml = {r["report_id"]: r for r in extract_sample_xml(shared_sample)}
    assert len(reports) == 60
    for row in reports.itertuples():
        assert _value(row.findings) == xml[row.report_id]["findings"]
        assert _value(row.impression) == xml[row.report_id]["impression"]
        assert sorted(row.image_ids) == sorted(xml[row.report_id]["image_ids"])
    assert set(images["projection_source"]) == {"projections_file"}
    assert len(result.studies) > 50

    r2gen = tmp_path / "r2gen"
    annotation = json.loads((shared_sample / "annotation_sample.json").read_text())
    r2gen.mkdir()
    (r2gen / "annotation.json").write_text(json.dumps(annotation))
    for split in ("train", "val", "test"):
        for entry in annotation[split]:
            for path in entry["image_path"]:
                _tiny_png(r2gen / "images" / path, value=60 + len(path))
    reports, images, result = _chain(r2gen, tmp_path / "r", **{"split.method": "r2gen",
                                                              "split.annotation": str(r2gen / "annotation.json")})
    assert len(reports) == 44 and len(images) == 88
    counts = result.split_info["reports"]
    assert counts == {s: len(annotation[s]) for s in ("train", "val", "test")}
    for split in ("train", "val", "test"):
        expected = {e["id"].split("_")[0] for e in annotation[split]}
        assert set(result.studies.loc[result.studies["split"] == split, "report_id"]) == expected


def _value(cell):
    """A table cell with pandas' missing marker read as None."""
    return None if pd.isna(cell) else cell


def extract_sample_xml(shared_sample: Path) -> list[dict]:
    from cxrgen.data.extract import parse_report_xml

    return [parse_report_xml(p.read_bytes(), p.name) for p in (shared_sample / "ecgen-radiology").glob("*.xml")]


def _report_xml(number: int, findings: str | None, image_ids: list[str]) -> str:
    findings_xml = f'<AbstractText Label="FINDINGS">{findings}</AbstractText>' if findings else ""
    images = "".join(f'<parentImage id="{i}"><caption>x</caption></parentImage>' for i in image_ids)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{number}"/><MedlineCitation>'
            f'<Article><Abstract>{findings_xml}<AbstractText Label="IMPRESSION">Normal.</AbstractText>'
            f"</Abstract></Article></MedlineCitation><MeSH><major>normal</major></MeSH>{images}</eCitation>")


@pytest.fixture
def damaged_collection(tmp_path: Path) -> Path:
    """20 studies of two views, then one of each kind of bad input."""
    folder = tmp_path / "collection"
    (folder / "ecgen-radiology").mkdir(parents=True)
    for n in range(1, 21):
        ids = [f"CXR{n}_IM-{n:04d}-1001", f"CXR{n}_IM-{n:04d}-2001"]
        (folder / "ecgen-radiology" / f"{n}.xml").write_text(
            _report_xml(n, f"The heart is normal. Finding number {n % 4}.", ids))
        for k, image_id in enumerate(ids):
            _tiny_png(folder / "images" / f"{image_id}.png", value=40 + 10 * k + n)
    (folder / "ecgen-radiology" / "21.xml").write_text("<eCitation><uId id='CXR21'>")  # malformed
    (folder / "ecgen-radiology" / "22.xml").write_text(_report_xml(22, "No images here.", []))
    (folder / "ecgen-radiology" / "23.xml").write_text(_report_xml(23, "Missing file.", ["CXR23_IM-0023-1001"]))
    (folder / "images" / "CXR5_IM-0005-2001.png").write_bytes(b"")                    # zero-byte
    good = (folder / "images" / "CXR6_IM-0006-2001.png").read_bytes()
    (folder / "images" / "CXR6_IM-0006-2001.png").write_bytes(good[: len(good) // 2])  # corrupt
    return folder


def test_bad_inputs_are_skipped_counted_and_named(damaged_collection: Path, tmp_path: Path, capsys):
    reports, images, result = _chain(damaged_collection, tmp_path, **{"prepare.max_bad_fraction": 0.2})
    dropped = result.counts.dropped
    assert dropped["report: truncated XML"] == 1
    assert dropped["no usable image"] == 2  # CXR22 has no image; CXR23's only image has no file
    assert dropped["image: id listed in report but no file"] == 1
    assert dropped["image: zero-byte image file"] == 1
    assert dropped["image: truncated"] == 1
    studies = result.studies.set_index("report_id")
    assert len(studies) == 20
    assert studies.loc["CXR5", "single_view"] and studies.loc["CXR6", "single_view"]
    err = capsys.readouterr().err
    assert "21.xml" in err and "CXR5_IM-0005-2001.png" in err and "CXR6_IM-0006-2001.png" in err


def test_too_many_bad_inputs_stop_the_stage_with_a_summary(damaged_collection: Path, tmp_path: Path):
    with pytest.raises(CxrgenError, match=r"inputs are bad .* > prepare.max_bad_fraction.*zero-byte"):
        _chain(damaged_collection, tmp_path, **{"prepare.max_bad_fraction": 0.01})


def test_vocabulary_comes_from_the_train_split_only(damaged_collection: Path, tmp_path: Path):
    *_, result = _chain(damaged_collection, tmp_path, **{"prepare.max_bad_fraction": 0.2})
    train_words = {w for t in result.studies.query("split == 'train'")["text"] for w in t.split()}
    assert set(result.vocab.counts) == train_words
    path = tmp_path / "vocab.json"
    result.vocab.save(path)
    assert Vocab.load(path).words == result.vocab.words
