"""The DVC pipeline end to end on a synthetic MIMIC-CXR-JPG collection, through the local source.

A small collection in MIMIC's layout (cxrgen.data.sources.synthetic_mimic: files/pXX/pS/sT/*.jpg,
reports as .txt, the split / metadata / chexpert tables gzipped) is pointed at with
download.local.path, split.method official, in a scratch copy of the project (as tests/test_pipeline.py
makes it), with the smallest sizes that run every stage. Checked: the images stay where they are (not
in data/raw), views come from the metadata, the official split is honoured study by study and no
patient is in two splits, and the evaluation writes its metrics.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from test_pipeline import _copy_project, _dvc, _link_environment, _set_params

from cxrgen.data import mimic
from cxrgen.data.sources import synthetic_mimic

pytestmark = pytest.mark.pipeline

PATIENTS = 40
# The smallest settings that run every stage: 64 px (DenseNet's 2 x 2 map), tiny models, 2 epochs,
# few candidates and resamples. What is checked is the data path, not the models' quality.
SETTINGS = {
    "download.sources": ["local"],
    "split.method": "official",
    "image.size": 64,
    "vocab.min_count": 1,
    "features.batch_size": 32,
    "model.baseline.embedding_dim": 16, "model.baseline.units": 32, "model.baseline.finding_folds": 2,
    "model.attention.embedding_dim": 16, "model.attention.units": 32, "model.attention.projection_dim": 16,
    "model.attention.attention_dim": 16, "model.attention.finding_folds": 2,
    "train.epochs": 2, "train.batch_size": 16, "train.patience": 1,
    "decode.beam_width": 2, "decode.rerank_samples": 2, "decode.max_len": 40,
    "evaluate.n_resamples": 20,
}


def _table(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def mimic_repo(project_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    collection = tmp_path_factory.mktemp("mimic-cxr-jpg")
    synthetic_mimic.generate(collection, n_patients=PATIENTS, seed=3, image_width=128, progress=False)
    repo = _copy_project(project_root, tmp_path_factory.mktemp("pipeline-mimic"))
    _link_environment(repo)
    _set_params(repo, {**SETTINGS, "download.local.path": str(collection)})
    result = _dvc("repro", cwd=repo, timeout=1500)
    (repo / "repro.log").write_text(result.stdout + result.stderr)
    return repo, collection


def test_the_images_stay_in_the_users_folder(mimic_repo):
    repo, collection = mimic_repo
    raw = repo / "data" / "raw"
    record = json.loads((raw / "source.json").read_text())
    assert record["source"] == "local" and record["layout"] == "mimic"
    assert record["files"] == {"bundle": mimic.TABLES_BUNDLE, "manifest": mimic.IMAGES_MANIFEST}
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [mimic.TABLES_BUNDLE, mimic.IMAGES_MANIFEST, "source.json", *(f"{n}.json" for n in record["files"].values())])
    manifest = pd.read_parquet(raw / mimic.IMAGES_MANIFEST)
    jpgs = sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*.jpg"))
    assert sorted(manifest["path"]) == jpgs
    assert record["metadata_images_missing"] == 0


def test_views_come_from_the_metadata(mimic_repo):
    repo, collection = mimic_repo
    metadata = {row["dicom_id"]: row["ViewPosition"] for row in _table(collection / synthetic_mimic.METADATA_TABLE)}
    images = pd.read_parquet(repo / "data" / "interim" / "images.parquet")
    assert set(images["projection_source"]) == {"metadata"}
    assert all(mimic.projection(metadata[i]) == p for i, p in zip(images["image_id"], images["projection"]))
    unused = {d for d, view in metadata.items() if mimic.projection(view) is None}
    assert unused and unused.isdisjoint(images["image_id"])   # blank / LAO / SWIMMERS views are left out
    dropped = pd.read_parquet(repo / "data" / "prepared" / "dropped.parquet")
    assert unused <= set(dropped["id"])
    studies = pd.read_parquet(repo / "data" / "prepared" / "studies.parquet")
    projection = dict(zip(images["image_id"], images["projection"]))
    paired = studies[~studies["single_view"]]
    assert len(paired) > len(studies) // 2
    assert all(projection[f] == "frontal" and projection[s] == "lateral"
               for f, s in zip(paired["first_image"], paired["second_image"]))
    extract = json.loads((repo / "metrics" / "extract.json").read_text())
    assert extract["layout"] == "mimic" and extract["projection_rule"].startswith("metadata ViewPosition")


def test_the_official_split_is_honoured_and_no_patient_crosses(mimic_repo):
    repo, collection = mimic_repo
    rows = _table(collection / synthetic_mimic.SPLIT_TABLE)
    official = {f"s{r['study_id']}": mimic.SPLIT_NAMES[r["split"]] for r in rows}
    subject = {f"s{r['study_id']}": r["subject_id"] for r in rows}
    studies = pd.read_parquet(repo / "data" / "prepared" / "studies.parquet")
    assert len(studies) > PATIENTS
    assert all(official[r] == s for r, s in zip(studies["report_id"], studies["split"]))
    splits_of = studies.groupby(studies["report_id"].map(subject))["split"].nunique()
    assert (splits_of == 1).all()
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["split"]["method"] == "official" and data["layout"] == "mimic"
    assert all(data["counts"][f"studies_{s}"] > 0 for s in ("train", "val", "test"))


def test_the_evaluation_writes_its_metrics(mimic_repo):
    repo, _ = mimic_repo
    for name in ("baseline", "attention"):
        headline = json.loads((repo / "metrics" / f"{name}.json").read_text())
        assert {"bleu_4", "f1_abnormal", "rouge_l"} <= set(headline)
    assert (repo / "metrics" / "comparison.md").is_file()
    status = _dvc("status", "--json", cwd=repo)
    assert json.loads(status.stdout) == {}, status.stdout
