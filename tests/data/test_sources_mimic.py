"""The MIMIC-CXR-JPG layout of the local source, on collections from the synthetic MIMIC generator:
detection, what is placed in data/raw (tables and reports packed, the images listed, not copied),
determinism, and refusals that say why."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mimic_tables import read_table, write_table

from cxrgen.data import mimic
from cxrgen.data.download import run_download
from cxrgen.data.sources import local, synthetic_mimic
from cxrgen.errors import BadInput

PATIENTS = 12


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """A small synthetic collection, reports as .txt files; copied by the tests that change it."""
    folder = tmp_path_factory.mktemp("mimic") / "collection"
    synthetic_mimic.generate(folder, n_patients=PATIENTS, seed=0, image_width=96, progress=False)
    return folder


def _copy(collection: Path, dest: Path) -> Path:
    shutil.copytree(collection, dest)
    return dest


def _fetch(source: Path, raw: Path) -> dict:
    raw.mkdir(parents=True)
    return local.fetch({"path": str(source)}, raw, raw.parent / "downloads")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the generator ------------------------------------------------------------------------------


def test_generator_same_seed_same_bytes(collection, tmp_path):
    again = tmp_path / "again"
    synthetic_mimic.generate(again, n_patients=PATIENTS, seed=0, image_width=96, progress=False)
    assert _tree(again) == _tree(collection)
    other = tmp_path / "other"
    synthetic_mimic.generate(other, n_patients=PATIENTS, seed=1, image_width=96, progress=False)
    assert _tree(other) != _tree(collection)


def test_generator_writes_the_mimic_layout(collection):
    split = read_table(collection / synthetic_mimic.SPLIT_TABLE)
    metadata = read_table(collection / synthetic_mimic.METADATA_TABLE)
    chexpert = read_table(collection / synthetic_mimic.CHEXPERT_TABLE)
    assert set(mimic.COLUMNS[mimic.SPLIT_TABLE]) <= set(split[0])
    assert set(mimic.COLUMNS[mimic.METADATA_TABLE]) | {"Rows", "Columns"} <= set(metadata[0])
    assert len(chexpert[0]) == 2 + 14
    assert {r["split"] for r in split} == {"train", "validate", "test"}
    subjects = {r["subject_id"] for r in split}
    assert len(subjects) == PATIENTS
    for subject in subjects:   # patients never cross splits
        assert len({r["split"] for r in split if r["subject_id"] == subject}) == 1
    # every image at its MIMIC path, its size as the metadata says
    for row in metadata:
        path = collection / mimic.image_path(row["subject_id"], row["study_id"], row["dicom_id"])
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "L"
            assert image.size == (int(row["Columns"]), int(row["Rows"]))
    studies = {(r["subject_id"], r["study_id"]) for r in metadata}
    assert sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*.txt")) == sorted(
        mimic.report_path(*s) for s in studies)
    # the awkward cases of the real data, each at least once
    views = {}
    for row in metadata:
        views.setdefault(row["study_id"], []).append(row["ViewPosition"])
    assert any(v == ["AP"] for v in views.values())
    assert any("" in v for v in views.values())
    assert any({"LAO", "SWIMMERS"} & set(v) for v in views.values())
    assert any("LL" in v for v in views.values())
    texts = [p.read_text() for p in collection.rglob("*.txt")]
    assert all("FINAL REPORT" in t and "EXAMINATION:" in t for t in texts)
    assert any("FINDINGS:" not in t for t in texts) and any("FINDINGS:" in t for t in texts)


def test_generator_from_the_shell(tmp_path):
    out = tmp_path / "shell"
    result = subprocess.run([sys.executable, "-m", "cxrgen.data.sources.synthetic_mimic", str(out), "--patients", "3",
                             "--reports", "zip", "--image-width", "64"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 3 patients" in result.stdout
    assert (out / synthetic_mimic.REPORTS_ZIP).is_file() and not list(out.rglob("*.txt"))
    bad = subprocess.run([sys.executable, "-m", "cxrgen.data.sources.synthetic_mimic", str(out), "--patients", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "n_patients must be an integer" in bad.stderr and "Traceback" not in bad.stderr


# -- the local source ---------------------------------------------------------------------------


def test_mimic_folder_is_listed_not_copied(collection, tmp_path):
    raw = tmp_path / "raw"
    record = _fetch(collection, raw)
    assert record["layout"] == "mimic"
    assert record["files"] == {"bundle": mimic.TABLES_BUNDLE, "manifest": mimic.IMAGES_MANIFEST}
    assert record["from"]["folder"] == "." and record["from"]["split"] == synthetic_mimic.SPLIT_TABLE
    assert record["from"]["reports"] == {"folder": "files", "files": len(list(collection.rglob("*.txt")))}
    assert record["metadata_images_missing"] == 0 and record["images_not_in_metadata"] == 0
    with tarfile.open(raw / mimic.TABLES_BUNDLE) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    tables = [synthetic_mimic.SPLIT_TABLE, synthetic_mimic.METADATA_TABLE, synthetic_mimic.CHEXPERT_TABLE]
    reports = {p.relative_to(collection).as_posix(): p.read_bytes() for p in collection.rglob("*.txt")}
    assert members == {**{t: (collection / t).read_bytes() for t in tables}, **reports}
    assert not any(name.endswith(".jpg") for name in members)
    manifest = pd.read_parquet(raw / mimic.IMAGES_MANIFEST)
    assert list(manifest.columns) == mimic.MANIFEST_COLUMNS
    jpgs = {p.relative_to(collection).as_posix(): p.stat().st_size for p in collection.rglob("*.jpg")}
    assert dict(zip(manifest["path"], manifest["size"])) == jpgs
    for name in record["files"].values():   # size / sha256 sidecars, as for every file placed in raw
        data = (raw / name).read_bytes()
        assert json.loads((raw / f"{name}.json").read_text()) == {
            "file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert record["sha256"][next(k for k, v in record["files"].items() if v == name)] == \
            hashlib.sha256(data).hexdigest()


def test_packing_is_deterministic_and_a_zip_of_the_reports_gives_the_same_bytes(collection, tmp_path):
    first = _fetch(collection, tmp_path / "raw1")
    os.utime(next(collection.rglob("*.txt")), (1, 1))
    second = _fetch(collection, tmp_path / "raw2")
    assert first == second
    assert _tree(tmp_path / "raw1") == _tree(tmp_path / "raw2")
    zipped = tmp_path / "zipped"
    synthetic_mimic.generate(zipped, n_patients=PATIENTS, seed=0, image_width=96, reports="zip", progress=False)
    record = _fetch(zipped, tmp_path / "raw3")
    assert record["from"]["reports"]["zip"] == synthetic_mimic.REPORTS_ZIP
    assert record["sha256"] == first["sha256"]   # same members, same bytes


def test_found_one_level_down_and_annotation_packed(collection, tmp_path):
    source = _copy(collection, tmp_path / "physionet" / "2.0.0")
    (source / "annotation.json").write_text(json.dumps({"train": [], "val": [], "test": []}))
    record = _fetch(tmp_path / "physionet", tmp_path / "raw")
    assert record["layout"] == "mimic"           # not R2Gen's layout, although annotation.json is there
    assert record["from"]["folder"] == "2.0.0" and record["from"]["annotation"] == "2.0.0/annotation.json"
    with tarfile.open(tmp_path / "raw" / mimic.TABLES_BUNDLE) as tar:
        assert "annotation.json" in tar.getnames()
    manifest = pd.read_parquet(tmp_path / "raw" / mimic.IMAGES_MANIFEST)
    assert manifest["path"].str.startswith("files/").all()   # relative to the tables' folder


def test_plain_csv_tables_are_accepted(collection, tmp_path):
    source = _copy(collection, tmp_path / "plain")
    for name in (synthetic_mimic.SPLIT_TABLE, synthetic_mimic.METADATA_TABLE):
        (source / name.removesuffix(".gz")).write_bytes(gzip.decompress((source / name).read_bytes()))
        (source / name).unlink()
    record = _fetch(source, tmp_path / "raw")
    assert record["from"]["split"] == mimic.SPLIT_TABLE


def test_missing_images_are_named_and_counted(collection, tmp_path, capsys):
    source = _copy(collection, tmp_path / "partial")
    gone = sorted(source.rglob("*.jpg"))[:3]
    for path in gone:
        path.unlink()
    record = _fetch(source, tmp_path / "raw")
    names = sorted(p.relative_to(source).as_posix() for p in gone)
    assert record["metadata_images_missing"] == 3 and record["metadata_images_missing_examples"] == names
    assert "3 of the" in capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / "raw" / mimic.IMAGES_MANIFEST)) == len(list(source.rglob("*.jpg")))


def test_no_image_at_all_is_refused(collection, tmp_path):
    source = _copy(collection, tmp_path / "none")
    for path in source.rglob("*.jpg"):
        path.unlink()
    with pytest.raises(BadInput, match=r"files: none of the \d+ images mimic-cxr-2.0.0-metadata.csv.gz lists is here"):
        _fetch(source, tmp_path / "raw")
    assert not any((tmp_path / "raw").iterdir())


@pytest.mark.parametrize("remove, expected", [
    (synthetic_mimic.SPLIT_TABLE, "not mimic-cxr-2.0.0-split.csv(.gz) beside it"),
    ("files", "no files/ folder of images beside them"),
])
def test_part_of_the_layout_missing(collection, tmp_path, remove, expected):
    source = _copy(collection, tmp_path / "part")
    target = source / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(BadInput, match=re.escape(expected)):
        _fetch(source, tmp_path / "raw")


def test_no_reports_is_refused_with_what_was_looked_for(collection, tmp_path):
    source = _copy(collection, tmp_path / "noreports")
    for path in source.rglob("*.txt"):
        path.unlink()
    with pytest.raises(BadInput, match="no reports: looked for files/pXX/pSUBJECT/sSTUDY.txt and "
                                       "mimic-cxr-reports.zip"):
        _fetch(source, tmp_path / "raw")


def test_a_table_without_its_columns_names_the_file(collection, tmp_path):
    source = _copy(collection, tmp_path / "columns")
    rows = read_table(source / synthetic_mimic.METADATA_TABLE)
    write_table(source / synthetic_mimic.METADATA_TABLE, [{k: v for k, v in r.items() if k != "ViewPosition"}
                                                           for r in rows])
    with pytest.raises(BadInput, match=r"mimic-cxr-2.0.0-metadata.csv.gz: not the MIMIC-CXR table .*ViewPosition"):
        _fetch(source, tmp_path / "raw")


def test_a_zip_member_claiming_too_much_is_refused_unread(collection, tmp_path):
    source = _copy(collection, tmp_path / "zipbomb")
    for path in source.rglob("*.txt"):
        path.unlink()
    with zipfile.ZipFile(source / mimic.REPORTS_ZIP, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("files/p10/p10000001/s50000001.txt", b" " * (local.MAX_REPORT_BYTES + 1))
    with pytest.raises(BadInput, match="mimic-cxr-reports.zip: member files/p10/p10000001/s50000001.txt says it holds"):
        _fetch(source, tmp_path / "raw")


def test_a_zip_that_is_not_a_zip(collection, tmp_path):
    source = _copy(collection, tmp_path / "notzip")
    for path in source.rglob("*.txt"):
        path.unlink()
    (source / mimic.REPORTS_ZIP).write_bytes(b"PK not really")
    with pytest.raises(BadInput, match="mimic-cxr-reports.zip: not a readable zip archive"):
        _fetch(source, tmp_path / "raw")


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "notes.txt").write_text("SECRET-CONTENT")
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(secret / "x.jpg")
    return secret


def _link_report_out(source: Path, secret: Path) -> str:
    report = sorted(source.rglob("*.txt"))[0]
    report.unlink()
    report.symlink_to(secret / "notes.txt")
    return report.name


def _link_jpg_out(source: Path, secret: Path) -> str:
    jpg = sorted(source.rglob("*.jpg"))[0]
    jpg.unlink()
    jpg.symlink_to(secret / "x.jpg")
    return jpg.name


def _link_files_folder_out(source: Path, secret: Path) -> str:
    shutil.move(source / "files", secret / "files")
    (source / "files").symlink_to(secret / "files", target_is_directory=True)
    return "files"


def _link_table_out(source: Path, secret: Path) -> str:
    table = source / synthetic_mimic.SPLIT_TABLE
    shutil.move(table, secret / table.name)
    table.symlink_to(secret / table.name)
    return table.name


@pytest.mark.parametrize("make_link", [_link_report_out, _link_jpg_out, _link_files_folder_out, _link_table_out])
def test_links_out_of_the_folder_are_refused_and_nothing_is_written(collection, tmp_path, make_link):
    source = _copy(collection, tmp_path / "source")
    name = make_link(source, _secret(tmp_path))
    raw = tmp_path / "raw"
    with pytest.raises(BadInput, match=rf"{name}: is a link to .*outside the folder"):
        run_download({"sources": ["local"], "local": {"path": str(source)}, "cache_dir": str(tmp_path / "dl")}, raw)
    assert not raw.exists() and not list(tmp_path.glob(".raw.staging*"))


def test_links_inside_the_folder_are_followed(collection, tmp_path):
    source = _copy(collection, tmp_path / "source")
    report = sorted(source.rglob("*.txt"))[0]
    (source / "kept").mkdir()
    shutil.move(report, source / "kept" / report.name)
    report.symlink_to(source / "kept" / report.name)
    record = _fetch(source, tmp_path / "raw")
    with tarfile.open(tmp_path / "raw" / mimic.TABLES_BUNDLE) as tar:
        assert tar.extractfile(report.relative_to(source).as_posix()).read() == report.read_bytes()
    assert record["layout"] == "mimic"


def test_the_bundle_can_be_pinned_not_the_images(collection, tmp_path):
    record = _fetch(collection, tmp_path / "raw1")
    (tmp_path / "raw2").mkdir()
    pinned = local.fetch({"path": str(collection), "sha256": {"bundle": record["sha256"]["bundle"]}},
                         tmp_path / "raw2", tmp_path)
    assert pinned["sha256"] == record["sha256"]
    (tmp_path / "raw3").mkdir()
    with pytest.raises(BadInput, match="differs from download.local.sha256.bundle"):
        local.fetch({"path": str(collection), "sha256": {"bundle": "0" * 64}}, tmp_path / "raw3", tmp_path)
    assert not any((tmp_path / "raw3").iterdir())   # nothing half-done stays
    with pytest.raises(BadInput, match="sha256.images is set, but the mimic layout .* gives no images archive"):
        local.fetch({"path": str(collection), "sha256": {"images": "0" * 64}}, tmp_path / "raw3", tmp_path)
