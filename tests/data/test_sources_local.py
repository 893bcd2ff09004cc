"""The local source: each accepted layout, deterministic packing, and refusals that say why."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cxrgen.data.archives import IMAGES_ARCHIVE, REPORTS_ARCHIVE, deterministic_tarinfo
from cxrgen.data.download import run_download
from cxrgen.data.sources import local
from cxrgen.errors import BadInput, SourceUnavailable

IMAGE_IDS = ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"]


def _png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 6), color=shade).save(path, format="PNG")
    return path


def _xml(path: Path, uid: int, image_ids: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = "".join(f'<parentImage id="{i}"/>' for i in image_ids)
    path.write_text(f'<eCitation><uId id="CXR{uid}"/><IUXRId id="{uid}"/>{images}</eCitation>\n')
    return path


def _extracted(root: Path, png_folder: str = "images") -> Path:
    """The NLMCXR archives as extracted: ecgen-radiology/*.xml and a folder of CXR*.png."""
    _xml(root / "ecgen-radiology" / "1.xml", 1, IMAGE_IDS[:2])
    _xml(root / "ecgen-radiology" / "2.xml", 2, IMAGE_IDS[2:])
    for shade, image_id in enumerate(IMAGE_IDS):
        _png(root / png_folder / f"{image_id}.png", 40 * shade)
    return root


def _tar_bytes(members: dict[str, bytes], gz: bool) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            tar.addfile(deterministic_tarinfo(name, len(data)), io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0) if gz else raw.getvalue()


def _archives(root: Path, suffix: str = ".tgz") -> Path:
    """The two original archives, made from an extracted tree."""
    tree = _extracted(root.parent / f"{root.name}-tree")
    gz = suffix != ".tar"
    images = {p.name: p.read_bytes() for p in sorted((tree / "images").iterdir())}
    xmls = sorted((tree / "ecgen-radiology").iterdir())
    reports = {f"ecgen-radiology/{p.name}": p.read_bytes() for p in xmls}
    root.mkdir(parents=True, exist_ok=True)
    (root / f"NLMCXR_png{suffix}").write_bytes(_tar_bytes(images, gz))
    (root / f"NLMCXR_reports{suffix}").write_bytes(_tar_bytes(reports, gz))
    return root


def _r2gen(root: Path) -> Path:
    studies = {"train": ["CXR1_1_IM-0001", "CXR3_IM-1384"], "val": ["CXR7_IM-2263"], "test": ["CXR9_IM-2407"]}
    annotation = {
        split: [
            {"id": s, "report": "The lungs are clear.", "image_path": [f"{s}/0.png", f"{s}/1.png"],
             "split": split}
            for s in ids
        ]
        for split, ids in studies.items()
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotation.json").write_text(json.dumps(annotation, indent=1))
    for shade, study in enumerate(s for ids in studies.values() for s in ids):
        for view in (0, 1):
            _png(root / "images" / study / f"{view}.png", 20 * shade + view)
    return root


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _kaggle(root: Path) -> Path:
    reports = [
        {"uid": uid, "MeSH": "normal", "Problems": "normal", "image": "Xray Chest PA and Lateral",
         "indication": "cough", "comparison": "", "findings": "The lungs are clear.", "impression": "Normal."}
        for uid in (1, 2)
    ]
    projections = [
        {"uid": 1, "filename": "1_IM-0001-4001.dcm.png", "projection": "Frontal"},
        {"uid": 1, "filename": "1_IM-0001-3001.dcm.png", "projection": "Lateral"},
        {"uid": 2, "filename": "2_IM-0652-1001.dcm.png", "projection": "Frontal"},
    ]
    _write_csv(root / "indiana_reports.csv", reports)
    _write_csv(root / "indiana_projections.csv", projections)
    for shade, row in enumerate(projections):
        _png(root / "images" / "images_normalized" / row["filename"], 50 * shade)
    return root


def _fetch(source: Path, raw: Path, cache: Path) -> dict:
    raw.mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    return local.fetch({"path": str(source)}, raw, cache)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive, "r:*") as tar:
        return tar.getmembers()


def _check_sidecars(raw: Path) -> None:
    for archive in raw.glob("*.t*"):
        if archive.suffix == ".json":
            continue
        sidecar = json.loads((raw / f"{archive.name}.json").read_text())
        data = archive.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        assert sidecar == {"file": archive.name, "size": len(data), "sha256": sha}


def _assert_deterministic(source: Path, tmp_path: Path) -> tuple[dict, Path]:
    """Fetch twice (input mtimes changed in between): same record, same bytes."""
    first = _fetch(source, tmp_path / "raw1", tmp_path / "cache")
    for path in source.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    second = _fetch(source, tmp_path / "raw2", tmp_path / "cache")
    assert first == second
    assert _listing(tmp_path / "raw1") == _listing(tmp_path / "raw2")
    _check_sidecars(tmp_path / "raw1")
    json.dumps(first)
    assert list((tmp_path / "cache").iterdir()) == []  # local needs no cache
    return first, tmp_path / "raw1"


# -- accepted layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tgz", ".tar.gz", ".tar"])
def test_original_archives_are_checked_and_copied(tmp_path, suffix):
    source = _archives(tmp_path / "mine", suffix)
    record = _fetch(source, tmp_path / "raw", tmp_path / "cache")
    raw = tmp_path / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [IMAGES_ARCHIVE, IMAGES_ARCHIVE + ".json", REPORTS_ARCHIVE, REPORTS_ARCHIVE + ".json"]
    )
    assert (raw / IMAGES_ARCHIVE).read_bytes() == (source / f"NLMCXR_png{suffix}").read_bytes()
    assert (raw / REPORTS_ARCHIVE).read_bytes() == (source / f"NLMCXR_reports{suffix}").read_bytes()
    _check_sidecars(raw)
    assert record["source"] == "local" and record["layout"] == "nlmcxr"
    assert record["files"] == {"images": IMAGES_ARCHIVE, "reports": REPORTS_ARCHIVE}
    assert record["from"]["images"] == {"archive": f"NLMCXR_png{suffix}"}


@pytest.mark.parametrize("png_folder", [".", "images", "NLMCXR_png/png"])
def test_extracted_folders_are_packed_deterministically(tmp_path, png_folder):
    source = _extracted(tmp_path / "mine", png_folder)
    record, raw = _assert_deterministic(source, tmp_path)
    assert record["layout"] == "nlmcxr"
    assert record["files"] == {"images": IMAGES_ARCHIVE, "reports": REPORTS_ARCHIVE}
    assert record["from"]["images"] == {"folder": png_folder, "files": 3}
    assert record["from"]["reports"] == {"folder": "ecgen-radiology", "files": 2}
    assert str(tmp_path) not in json.dumps(record)  # no machine-specific paths in the record

    images = _members(raw / IMAGES_ARCHIVE)
    assert [m.name for m in images] == sorted(f"{i}.png" for i in IMAGE_IDS)
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in images)
    reports = [m.name for m in _members(raw / REPORTS_ARCHIVE)]
    assert reports == ["ecgen-radiology/1.xml", "ecgen-radiology/2.xml"]
    with tarfile.open(raw / IMAGES_ARCHIVE, "r:gz") as tar:
        first = sorted(IMAGE_IDS)[0]
        assert tar.extractfile(f"{first}.png").read() == (source / png_folder / f"{first}.png").read_bytes()
    header = (raw / IMAGES_ARCHIVE).read_bytes()[:10]
    assert header[:2] == b"\x1f\x8b" and header[4:8] == bytes(4)  # gzip, mtime 0


def test_images_archive_with_extracted_reports(tmp_path):
    source = _archives(tmp_path / "mine")
    (source / REPORTS_ARCHIVE).unlink()
    _xml(source / "ecgen-radiology" / "5.xml", 5, [])
    record = _fetch(source, tmp_path / "raw", tmp_path / "cache")
    assert record["from"] == {
        "images": {"archive": IMAGES_ARCHIVE},
        "reports": {"folder": "ecgen-radiology", "files": 1},
    }
    assert (tmp_path / "raw" / IMAGES_ARCHIVE).read_bytes() == (source / IMAGES_ARCHIVE).read_bytes()


def test_a_file_path_means_its_folder(tmp_path):
    source = _archives(tmp_path / "mine")
    record = local.fetch({"path": str(source / IMAGES_ARCHIVE)}, _mkdir(tmp_path / "raw"), tmp_path)
    assert record["layout"] == "nlmcxr"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("below", ["", "iu_xray"])
def test_r2gen_layout_is_packed_into_one_tar(tmp_path, below):
    source = _r2gen(tmp_path / "mine" / below)
    record, raw = _assert_deterministic(tmp_path / "mine", tmp_path)
    assert record["layout"] == "r2gen"
    assert record["files"] == {"bundle": "r2gen.tar"}
    assert record["studies"] == {"train": 2, "val": 1, "test": 1}
    assert record["listed_images_missing"] == 0
    assert sorted(p.name for p in raw.iterdir()) == ["r2gen.tar", "r2gen.tar.json"]
    names = [m.name for m in _members(raw / "r2gen.tar")]
    assert names[0] == "annotation.json" and len(names) == 9
    assert "images/CXR1_1_IM-0001/0.png" in names and names == sorted(names)
    with tarfile.open(raw / "r2gen.tar") as tar:  # plain tar, as the name says
        assert tar.extractfile("annotation.json").read() == (source / "annotation.json").read_bytes()


def test_kaggle_layout_is_packed_into_one_tar(tmp_path):
    source = _kaggle(tmp_path / "mine")
    record, raw = _assert_deterministic(source, tmp_path)
    assert record["layout"] == "kaggle"
    assert record["files"] == {"bundle": "kaggle.tar"}
    assert record["from"]["images"] == {"folder": "images/images_normalized", "files": 3}
    assert record["listed_images_missing"] == 0
    names = [m.name for m in _members(raw / "kaggle.tar")]
    assert names == sorted(
        ["indiana_projections.csv", "indiana_reports.csv", "images/1_IM-0001-3001.dcm.png",
         "images/1_IM-0001-4001.dcm.png", "images/2_IM-0652-1001.dcm.png"]
    )


def test_real_sample_arranged_as_extracted_nlmcxr_is_accepted(tmp_path, shared_sample):
    source = tmp_path / "mine"
    shutil.copytree(shared_sample / "ecgen-radiology", source / "ecgen-radiology")
    shutil.copytree(shared_sample / "images", source / "images")
    record, raw = _assert_deterministic(source, tmp_path)
    pngs = sorted(p.name for p in (shared_sample / "images").glob("*.png"))
    xmls = sorted(p.name for p in (shared_sample / "ecgen-radiology").glob("*.xml"))
    assert record["layout"] == "nlmcxr"
    assert record["from"]["images"]["files"] == len(pngs) and record["from"]["reports"]["files"] == len(xmls)
    assert [m.name for m in _members(raw / IMAGES_ARCHIVE)] == pngs
    assert [m.name for m in _members(raw / REPORTS_ARCHIVE)] == sorted(f"ecgen-radiology/{x}" for x in xmls)


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [{}, {"path": None}, {"path": ""}, None])
def test_no_path_set_is_unavailable(tmp_path, cfg):
    with pytest.raises(SourceUnavailable) as info:
        local.fetch(cfg, _mkdir(tmp_path / "raw"), tmp_path)
    assert str(info.value) == "no path set (download.local.path)"


def _refused(tmp_path: Path, source: Path, *expected: str) -> str:
    """Fetch must raise BadInput whose message holds every expected piece, leaving nothing behind."""
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    before = {p: p.stat().st_size for p in source.rglob("*")} if source.exists() else {}
    with pytest.raises(BadInput) as info:
        _fetch(source, raw, cache)
    message = str(info.value)
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"
    assert "\n" not in message
    assert list(raw.iterdir()) == [] and list(cache.iterdir()) == []
    after = {p: p.stat().st_size for p in source.rglob("*")} if source.exists() else {}
    assert after == before  # no temporary files left beside the user's data either
    return message


def test_missing_path(tmp_path):
    _refused(tmp_path, tmp_path / "nowhere", str(tmp_path / "nowhere"), "does not exist")


def test_folder_matching_no_layout_says_what_was_looked_for(tmp_path):
    source = _mkdir(tmp_path / "mine")
    (source / "notes.txt").write_text("nothing here")
    _png(source / "photos" / "holiday.png", 1)
    _refused(tmp_path, source, str(source), "no IU X-ray data found", "NLMCXR_png.tgz", "ecgen-radiology/",
             "annotation.json", "indiana_reports.csv")


def test_images_without_reports(tmp_path):
    source = _archives(tmp_path / "mine")
    (source / REPORTS_ARCHIVE).unlink()
    _refused(tmp_path, source, "found NLMCXR_png.tgz but no reports", "NLMCXR_reports.tgz")


def test_reports_without_images(tmp_path):
    source = _extracted(tmp_path / "mine")
    shutil.rmtree(source / "images")
    _refused(tmp_path, source, "found ecgen-radiology but no images", "CXR*.png")


def test_empty_reports_folder(tmp_path):
    source = _extracted(tmp_path / "mine")
    for xml in (source / "ecgen-radiology").iterdir():
        xml.unlink()
    _refused(tmp_path, source, "ecgen-radiology/", "no .xml reports")


def test_two_image_folders_are_ambiguous(tmp_path):
    source = _extracted(tmp_path / "mine")
    shutil.copytree(source / "images", source / "images_copy")
    _refused(tmp_path, source, "several folders of CXR*.png images", "images/ (3)", "images_copy/ (3)")


def _unsafe(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    source = _archives(tmp_path / "mine")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        png = (tmp_path / "mine-tree" / "images" / f"{IMAGE_IDS[0]}.png").read_bytes()
        tar.addfile(deterministic_tarinfo(f"{IMAGE_IDS[0]}.png", len(png)), io.BytesIO(png))
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    (source / IMAGES_ARCHIVE).write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return source


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = deterministic_tarinfo(name, 0)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(
    "member, problem",
    [
        (deterministic_tarinfo("/etc/evil.png", 1), "absolute path"),
        (deterministic_tarinfo("../evil.png", 1), "'..'"),
        (_link("escape", "../../outside"), "link pointing out"),
    ],
    ids=["absolute", "dot-dot", "symlink-out"],
)
def test_unsafe_archive(tmp_path, member, problem):
    source = _unsafe(tmp_path, member)
    _refused(tmp_path, source, str(source / IMAGES_ARCHIVE), "unsafe archive", problem)


def test_truncated_archive(tmp_path):
    source = _archives(tmp_path / "mine")
    data = (source / IMAGES_ARCHIVE).read_bytes()
    (source / IMAGES_ARCHIVE).write_bytes(data[: len(data) // 2])
    _refused(tmp_path, source, str(source / IMAGES_ARCHIVE), "truncated")


def test_truncated_plain_tar(tmp_path):
    source = _archives(tmp_path / "mine", ".tar")
    data = (source / "NLMCXR_reports.tar").read_bytes()
    (source / "NLMCXR_reports.tar").write_bytes(data[:1024])  # first member only, no end block
    _refused(tmp_path, source, str(source / "NLMCXR_reports.tar"), "truncated")


def test_reports_archive_given_as_images(tmp_path):
    source = _archives(tmp_path / "mine")
    shutil.copy(source / REPORTS_ARCHIVE, source / IMAGES_ARCHIVE)
    _refused(tmp_path, source, str(source / IMAGES_ARCHIVE), "wrong kind of archive", "PNG images")


def test_zip_renamed_tgz(tmp_path):
    source = _archives(tmp_path / "mine")
    with zipfile.ZipFile(source / REPORTS_ARCHIVE, "w") as z:
        z.writestr("ecgen-radiology/1.xml", "<eCitation/>")
    _refused(tmp_path, source, str(source / REPORTS_ARCHIVE), "not a readable tar/tgz archive")


def test_failure_in_the_second_output_removes_the_first(tmp_path, monkeypatch):
    source = _extracted(tmp_path / "mine")
    shutil.rmtree(source / "ecgen-radiology")
    tree = _archives(tmp_path / "other")
    shutil.copy(tree / REPORTS_ARCHIVE, source / REPORTS_ARCHIVE)  # copied first, then images packed
    # A write failure while packing the images (a full disk, say) cannot be made to happen here on
    # demand, so packing is made to fail; everything around it is real.
    def failing_pack(members, dest):
        raise BadInput(dest, "cannot be written (No space left on device)")

    monkeypatch.setattr(local, "_pack", failing_pack)
    _refused(tmp_path, source, "No space left on device")


def test_r2gen_annotation_not_json(tmp_path):
    source = _r2gen(tmp_path / "mine")
    (source / "annotation.json").write_text("{not json")
    _refused(tmp_path, source, str(source / "annotation.json"), "not valid JSON")


def test_r2gen_annotation_of_another_shape(tmp_path):
    source = _r2gen(tmp_path / "mine")
    (source / "annotation.json").write_text(json.dumps({"train": [{"id": "x"}]}))
    _refused(tmp_path, source, str(source / "annotation.json"), "not an R2Gen split file")


def test_r2gen_images_that_do_not_match(tmp_path):
    source = _r2gen(tmp_path / "mine")
    shutil.rmtree(source / "images")
    _png(source / "images" / "other" / "0.png", 1)
    _refused(tmp_path, source, str(source / "images"), "none of the 8 images annotation.json lists")


def test_r2gen_without_images_folder(tmp_path):
    source = _r2gen(tmp_path / "mine")
    shutil.rmtree(source / "images")
    _refused(tmp_path, source, "found annotation.json but no images/ folder")


def test_kaggle_csv_with_wrong_columns(tmp_path):
    source = _kaggle(tmp_path / "mine")
    _write_csv(source / "indiana_projections.csv", [{"uid": 1, "file": "1_IM-0001-4001.dcm.png"}])
    _refused(
        tmp_path, source, str(source / "indiana_projections.csv"), "expected columns filename, projection, uid"
    )


def test_kaggle_without_its_images(tmp_path):
    source = _kaggle(tmp_path / "mine")
    shutil.rmtree(source / "images")
    _refused(tmp_path, source, "no folder holding the PNGs", "1_IM-0001-3001.dcm.png")


def test_kaggle_with_one_table_missing(tmp_path):
    source = _kaggle(tmp_path / "mine")
    (source / "indiana_reports.csv").unlink()
    _refused(tmp_path, source, "not indiana_reports.csv")


# -- nothing outside the folder; pinned digests ------------------------------------------------


SECRET = b"root:x:0:0:secret-outside-the-folder\n"


def _secret(tmp_path: Path) -> Path:
    """A file outside the user's folder, standing in for /etc/passwd."""
    path = tmp_path / "elsewhere" / "passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SECRET)
    return path


def _everything_under(folder: Path) -> bytes:
    """Every byte under `folder`, archives unpacked, so a secret cannot hide inside gzip."""
    out = b""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out += path.read_bytes()
        if path.name.endswith((".tgz", ".tar")):
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        out += tar.extractfile(member).read()
    return out


def _link_xml_out(source: Path, secret: Path) -> str:
    (source / "ecgen-radiology" / "999.xml").symlink_to(secret)
    return "ecgen-radiology/999.xml"


def _link_png_out(source: Path, secret: Path) -> str:
    (source / "images" / "CXR9_IM-0009-1001.png").symlink_to(secret)
    return "images/CXR9_IM-0009-1001.png"


def _link_etc_passwd(source: Path, secret: Path) -> str:
    (source / "ecgen-radiology" / "998.xml").symlink_to("/etc/passwd")
    return "ecgen-radiology/998.xml"


def _link_relative_dotdot(source: Path, secret: Path) -> str:
    (source / "images" / "CXR8_IM-0008-1001.png").symlink_to(Path("..", "..", "elsewhere", "passwd"))
    return "images/CXR8_IM-0008-1001.png"


def _linked_folder_out(source: Path, secret: Path) -> str:
    shutil.rmtree(source / "ecgen-radiology")
    outside = secret.parent / "reports"
    _xml(outside / "1.xml", 1, IMAGE_IDS)
    (outside / "2.xml").symlink_to(secret)
    (source / "ecgen-radiology").symlink_to(outside, target_is_directory=True)
    return "ecgen-radiology/1.xml"


@pytest.mark.parametrize("make_link", [_link_xml_out, _link_png_out, _link_etc_passwd, _link_relative_dotdot,
                                       _linked_folder_out])
def test_links_out_of_the_folder_are_refused_and_nothing_is_packed(tmp_path, make_link):
    secret = _secret(tmp_path)
    source = _extracted(tmp_path / "mine")
    link = make_link(source, secret)
    message = _refused(tmp_path, source, f"{source / link}", "outside the folder", "download.local.path")
    assert str(source.resolve()) in message
    # Through the whole stage: no data/raw, no staging folder, the secret nowhere under data/.
    data = tmp_path / "data"
    with pytest.raises(BadInput):
        run_download({"sources": ["local"], "local": {"path": str(source)}, "cache_dir": str(data / "dl")},
                     data / "raw")
    assert not (data / "raw").exists() and not list(data.glob(".raw.staging*"))
    assert SECRET not in _everything_under(data)


def test_links_inside_the_folder_are_followed(tmp_path):
    source = _extracted(tmp_path / "mine")
    real = source / "images" / f"{IMAGE_IDS[0]}.png"
    (source / "spare").mkdir()
    moved = source / "spare" / "kept-elsewhere.bin"   # not a CXR*.png name: not a folder of images
    real.rename(moved)
    real.symlink_to(Path("..", "spare", moved.name))  # a relative link that stays inside
    record = _fetch(source, tmp_path / "raw", tmp_path / "cache")
    with tarfile.open(tmp_path / "raw" / IMAGES_ARCHIVE, "r:gz") as tar:
        assert tar.extractfile(real.name).read() == moved.read_bytes()
    assert record["from"]["images"]["files"] == 3


def test_the_given_path_may_itself_be_a_link(tmp_path):
    source = _extracted(tmp_path / "mine")
    (tmp_path / "shortcut").symlink_to(source, target_is_directory=True)
    record = _fetch(tmp_path / "shortcut", tmp_path / "raw", tmp_path / "cache")
    assert record["from"]["reports"] == {"folder": "ecgen-radiology", "files": 2}


def test_tables_read_while_looking_are_not_followed_out(tmp_path):
    secret = _secret(tmp_path)
    source = _kaggle(tmp_path / "kaggle")
    (source / "indiana_reports.csv").unlink()
    (source / "indiana_reports.csv").symlink_to(secret)
    _refused(tmp_path, source, "indiana_reports.csv", "outside the folder")
    source = _r2gen(tmp_path / "r2gen")
    (source / "annotation.json").unlink()
    (source / "annotation.json").symlink_to(secret)
    _refused(tmp_path / "r", source, "annotation.json", "outside the folder")


def _fetch_pinned(source: Path, raw: Path, sha256) -> dict:
    raw.mkdir(parents=True)
    return local.fetch({"path": str(source), "sha256": sha256}, raw, raw.parent)


@pytest.mark.parametrize("layout", ["archives", "folders", "kaggle"])
def test_sha256_pins_are_checked_on_the_archives_placed_in_raw(tmp_path, layout):
    make = {"archives": _archives, "folders": _extracted, "kaggle": _kaggle}[layout]
    source = make(tmp_path / "mine")
    record = _fetch(source, tmp_path / "first", tmp_path / "cache")
    pins = record["sha256"]   # what source.json records: the digests to pin
    assert _fetch_pinned(source, tmp_path / "pinned" / "raw", pins)["sha256"] == pins
    if layout == "archives":   # the user's archives as they are: the digest of the file they have
        assert pins["images"] == hashlib.sha256((source / IMAGES_ARCHIVE).read_bytes()).hexdigest()
    kind = sorted(pins)[0]
    wrong = {**pins, kind: "0" * 64}
    raw = tmp_path / "wrong" / "raw"
    with pytest.raises(BadInput) as info:
        _fetch_pinned(source, raw, wrong)
    message = str(info.value)
    assert f"download.local.sha256.{kind}" in message and pins[kind] in message and "0" * 64 in message
    assert list(raw.iterdir()) == []   # nothing left of the refused (or of any earlier) archive


def test_a_pin_the_layout_cannot_meet_and_malformed_pins_are_refused(tmp_path):
    source = _kaggle(tmp_path / "kaggle")
    with pytest.raises(BadInput, match=r"sha256.images is set, but the kaggle layout .* gives no images"):
        _fetch_pinned(source, tmp_path / "a" / "raw", {"images": "a" * 64})
    with pytest.raises(BadInput, match=r"params.yaml: download.local.sha256.bundle: 'abc' is not a sha256"):
        _fetch_pinned(source, tmp_path / "b" / "raw", {"bundle": "abc"})
    with pytest.raises(BadInput, match=r"download.local.sha256 has unknown keys \['imgs'\]"):
        _fetch_pinned(source, tmp_path / "c" / "raw", {"imgs": "a" * 64})


def test_unknown_keys_under_download_local_are_an_error(tmp_path):
    source = _extracted(tmp_path / "mine")
    with pytest.raises(BadInput, match=r"params.yaml: download.local has unknown keys \['sha265'\]"):
        local.fetch({"path": str(source), "sha265": {"images": None}}, _mkdir(tmp_path / "raw"), tmp_path)
