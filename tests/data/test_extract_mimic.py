"""extract and prepare on the MIMIC-CXR layout (a synthetic collection through the local source):
report sections and ids, views from the metadata, what is left out and why, the official split and the
patient-grouped random split, JPEGs read in place and checked against the download's list."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mimic_tables import read_table, write_table

from cxrgen.data import labeler, mimic
from cxrgen.data.download import run_download
from cxrgen.data.extract import NO_IMAGE_FILE, NO_REPORT, VIEW_NOT_USED, extract
from cxrgen.data.prepare import Counts, assign_splits, prepare
from cxrgen.data.sources import synthetic_mimic
from cxrgen.errors import BadInput

PROJECT_PARAMS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
PATIENTS = 16
SIZE = 32


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mimic") / "collection"
    synthetic_mimic.generate(folder, n_patients=PATIENTS, seed=5, image_width=96, progress=False)
    return folder


def _download(folder: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    run_download({"sources": ["local"], "local": {"path": str(folder)}, "cache_dir": str(tmp_path / "dl")}, raw)
    return raw


def _params(folder: Path | None, **overrides) -> dict:
    params = json.loads(json.dumps(PROJECT_PARAMS))
    params["image"]["size"] = SIZE
    params["vocab"]["min_count"] = 1
    params["download"]["local"]["path"] = None if folder is None else str(folder)
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    return params


def _prepare(raw: Path, folder: Path | None, **overrides):
    reports, images, skipped, _ = extract(raw)
    return prepare(reports, images, raw, _params(folder, **overrides), skipped.counts(), skipped.items)


@pytest.fixture(scope="module")
def extracted(collection, tmp_path_factory):
    raw = _download(collection, tmp_path_factory.mktemp("extract"))
    return raw, *extract(raw)


def test_reports_are_keyed_by_study_with_their_sections_and_patient(collection, extracted):
    _, reports, _, _, record = extracted
    split = read_table(collection / synthetic_mimic.SPLIT_TABLE)
    studies = {f"s{r['study_id']}": r for r in split}
    assert record["layout"] == "mimic"
    assert sorted(reports["report_id"]) == sorted(studies) and reports["report_id"].is_unique
    for row in reports.itertuples(index=False):
        text = (collection / row.source_file).read_text()
        assert row.source_file == mimic.report_path(row.subject_id, row.report_id[1:])
        assert row.subject_id == studies[row.report_id]["subject_id"]
        assert row.official_split == mimic.SPLIT_NAMES[studies[row.report_id]["split"]]
        assert (row.findings is None or pd.isna(row.findings)) == ("FINDINGS:" not in text)
        assert row.impression and "NOTIFICATION" not in row.impression and "___" in text + "___"
    assert reports["findings"].isna().any() and reports["findings"].notna().any()


def test_reference_labels_come_from_the_chexpert_table(collection, extracted):
    _, reports, _, _, _ = extracted
    chexpert = {f"s{r['study_id']}": {k for k, v in r.items() if v == "1.0"}
                for r in read_table(collection / synthetic_mimic.CHEXPERT_TABLE)}
    for report_id, terms in zip(reports["report_id"], reports["mesh_major"]):
        stated = labeler.mesh_observations(list(terms))
        pathologies = chexpert[report_id] - {labeler.NO_FINDING, labeler.SUPPORT_DEVICES}
        assert stated - {labeler.NO_FINDING} == chexpert[report_id] - {labeler.NO_FINDING}
        assert (labeler.NO_FINDING in stated) == (not pathologies)


def test_views_come_from_the_metadata_and_others_are_left_out_with_their_reason(collection, extracted):
    _, reports, images, skipped, _ = extracted
    metadata = {r["dicom_id"]: r for r in read_table(collection / synthetic_mimic.METADATA_TABLE)}
    assert set(images["projection_source"]) == {"metadata"}
    for row in images.itertuples(index=False):
        meta = metadata[row.image_id]
        assert row.projection == mimic.projection(meta["ViewPosition"])
        assert (row.width, row.height) == (int(meta["Columns"]), int(meta["Rows"]))
        assert pd.isna(row.archive) and row.member == mimic.image_path(meta["subject_id"], meta["study_id"],
                                                                        row.image_id)
        assert row.size == (collection / row.member).stat().st_size
    unused = {d for d, m in metadata.items() if mimic.projection(m["ViewPosition"]) is None}
    assert unused and {i["id"] for i in skipped.items if i["reason"] == VIEW_NOT_USED} == unused
    assert set(images["image_id"]) == set(metadata) - unused
    assert "image: " not in " ".join(skipped.counts())   # none of this is a bad input
    # within a study PA comes before AP, frontal before lateral (the pairing takes the first of each)
    for image_ids in reports["image_ids"]:
        ranks = [mimic.VIEW_RANK.get(metadata[i]["ViewPosition"], 99) for i in image_ids]
        assert ranks == sorted(ranks)


def test_missing_files_and_reports_are_left_out_not_counted_bad(collection, tmp_path):
    folder = shutil.copytree(collection, tmp_path / "partial")
    jpg = sorted(folder.rglob("*.jpg"))[0]
    jpg.unlink()
    report = sorted(folder.rglob("*.txt"))[-1]
    report.unlink()
    reports, images, skipped, _ = extract(_download(folder, tmp_path))
    reasons = {i["reason"]: i for i in skipped.items if i["reason"] in (NO_IMAGE_FILE, NO_REPORT)}
    assert reasons[NO_IMAGE_FILE]["id"] == jpg.stem
    assert reasons[NO_IMAGE_FILE]["file"] == jpg.relative_to(folder).as_posix()
    assert reasons[NO_REPORT]["id"] == report.stem
    assert report.stem not in set(reports["report_id"]) and jpg.stem not in set(images["image_id"])


def test_a_study_in_two_splits_names_the_split_file(collection, tmp_path):
    folder = shutil.copytree(collection, tmp_path / "twosplits")
    rows = read_table(folder / synthetic_mimic.SPLIT_TABLE)
    study = next(r["study_id"] for r in rows if sum(x["study_id"] == r["study_id"] for x in rows) > 1)
    first = next(r for r in rows if r["study_id"] == study)
    first["split"] = "test" if first["split"] != "test" else "train"
    write_table(folder / synthetic_mimic.SPLIT_TABLE, rows)
    raw = _download(folder, tmp_path)
    with pytest.raises(BadInput, match=rf"mimic_tables.tar:mimic-cxr-2.0.0-split.csv.gz: study s{study} has images "
                                       "in both"):
        extract(raw)


# -- prepare ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["official", "random"])
def test_prepare_reads_the_jpegs_in_place_and_splits_by_patient(collection, extracted, method):
    raw, reports, images, skipped, _ = extracted
    result = prepare(reports, images, raw, _params(collection, **{"split.method": method}), skipped.counts(),
                     skipped.items)
    studies = result.studies
    subject = dict(zip(reports["report_id"], reports["subject_id"]))
    assert (studies.groupby(studies["report_id"].map(subject))["split"].nunique() == 1).all()
    if method == "official":
        official = dict(zip(reports["report_id"], reports["official_split"]))
        assert all(official[r] == s for r, s in zip(studies["report_id"], studies["split"]))
        assert result.split_info["method"] == "official"
        assert result.split_info["split_file"] == synthetic_mimic.SPLIT_TABLE
    else:
        assert result.split_info["by"] == "patient"
        assert sum(result.split_info["patients"].values()) == studies["report_id"].map(subject).nunique()
    with_text = reports.loc[reports["findings"].notna(), "report_id"]
    assert result.counts.steps["images_decoded"] == images["report_id"].isin(with_text).sum()
    projection = dict(zip(images["image_id"], images["projection"]))
    two = studies[~studies["single_view"]]
    assert all(projection[f] == "frontal" and projection[s] == "lateral"
               for f, s in zip(two["first_image"], two["second_image"]))
    assert studies["single_view"].any()   # AP-only (or lateral-only) studies use their one view twice
    for split, array in result.arrays.items():
        assert array.shape == ((studies["split"] == split).sum(), 2, SIZE, SIZE) and array.max() > 0


def test_prepare_needs_the_folder(extracted):
    raw, reports, images, skipped, _ = extracted
    with pytest.raises(BadInput, match="params.yaml: download.local.path is not set"):
        prepare(reports, images, raw, _params(None), skipped.counts())


def test_a_file_changed_or_gone_since_the_download_names_it(collection, tmp_path):
    folder = shutil.copytree(collection, tmp_path / "changing")
    raw = _download(folder, tmp_path)
    jpg = sorted(folder.rglob("*.jpg"))[0]
    jpg.write_bytes(jpg.read_bytes() + b"\0")
    with pytest.raises(BadInput, match=rf"{jpg.name}: is \d[\d,]* bytes, but the download stage found"):
        _prepare(raw, folder)
    jpg.unlink()
    with pytest.raises(BadInput, match=rf"{jpg.name}: is gone since the download stage listed it"):
        _prepare(raw, folder)


def test_a_file_swapped_for_a_link_out_of_the_folder_is_refused(collection, tmp_path):
    folder = shutil.copytree(collection, tmp_path / "linked")
    raw = _download(folder, tmp_path)
    jpg = sorted(folder.rglob("*.jpg"))[0]
    outside = tmp_path / "outside.jpg"
    shutil.move(jpg, outside)
    jpg.symlink_to(outside)
    with pytest.raises(BadInput, match=rf"{jpg.name}: is a link to .*outside the folder"):
        _prepare(raw, folder)


def test_a_corrupt_jpeg_is_counted_as_a_bad_image(collection, tmp_path):
    folder = shutil.copytree(collection, tmp_path / "corrupt")
    jpg = sorted(folder.rglob("*.jpg"))[0]
    jpg.write_bytes(b"not a jpeg at all")
    raw = _download(folder, tmp_path)
    result = _prepare(raw, folder, **{"prepare.max_bad_fraction": 1.0})
    assert result.counts.dropped["image: not an image"] == 1
    assert any(r["id"] == jpg.stem and r["file"] == jpg.relative_to(folder).as_posix() for r in result.dropped)


def test_the_official_split_needs_a_collection_that_has_one():
    with pytest.raises(BadInput, match="params.yaml: split.method official needs a collection that ships its own"):
        assign_splits(["CXR1", "CXR2"], {"method": "official"}, Counts())   # IU: no official split
