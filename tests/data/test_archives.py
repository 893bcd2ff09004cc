"""check_archive / safe_extract on bad input: unsafe members, damaged files, the wrong archive."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from cxrgen.data.archives import (
    check_archive,
    deterministic_tarinfo,
    safe_extract,
    sidecar_path,
    verify_sidecar,
    write_sidecar,
)
from cxrgen.errors import BadInput

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # body content is not inspected here
XML_BYTES = b"<eCitation><IUXRId id='1'/></eCitation>"


def _member(name: str, data: bytes = b"", **fields) -> tuple[tarfile.TarInfo, bytes]:
    info = deterministic_tarinfo(name, len(data))
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], gz: bool = True) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    data = raw.getvalue()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _images(path: Path, n: int = 3, gz: bool = True) -> Path:
    return _write_tar(path, [_member(f"CXR{i}_IM-000{i}-1001.png", PNG_BYTES) for i in range(1, n + 1)], gz)


def _reports(path: Path) -> Path:
    return _write_tar(path, [_member(f"ecgen-radiology/{i}.xml", XML_BYTES) for i in (1, 2)])


def _snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# Each unsafe archive: its members (built against tmp_path, so "outside" is a real place) and
# what the refusal must say.
def _unsafe_cases(outside: Path) -> dict[str, tuple[list, str]]:
    png = _member("CXR1_IM-0001-1001.png", PNG_BYTES)
    return {
        "absolute path": ([png, _member(str(outside / "evil.png"), PNG_BYTES)], "absolute path"),
        "dot-dot member": ([png, _member("../outside/evil.png", PNG_BYTES)], "'..'"),
        "dot-dot in the middle": ([png, _member("a/../../outside/evil.png", PNG_BYTES)], "'..'"),
        "symlink to an absolute path": (
            [png, _member("link", type=tarfile.SYMTYPE, linkname=str(outside))], "absolute path"),
        "symlink pointing out": (
            [png, _member("sub/link", type=tarfile.SYMTYPE, linkname="../../outside")], "out of the target"),
        "hardlink pointing out": (
            [png, _member("hard.png", type=tarfile.LNKTYPE, linkname="../outside/secret")],
            "out of the target"),
        "chain of harmless-looking symlinks": (
            [png, _member("d/a", type=tarfile.SYMTYPE, linkname=".."),
             _member("d/a/b", type=tarfile.SYMTYPE, linkname="..")], "under the symlink"),
        "device": ([png, _member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)], "device"),
    }


CASE_NAMES = list(_unsafe_cases(Path("/x")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_unsafe_member_is_refused_by_check_and_extract(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    members, expected = _unsafe_cases(outside)[case]
    archive = _write_tar(tmp_path / "NLMCXR_png.tgz", members)
    before = _snapshot(tmp_path)

    with pytest.raises(BadInput) as info:
        check_archive(archive, "images")
    assert str(archive) in str(info.value)
    assert "unsafe archive" in str(info.value) and expected in str(info.value)

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BadInput, match="unsafe archive"):
        safe_extract(archive, dest)
    assert _snapshot(tmp_path) - {"dest"} == before  # nothing written anywhere, in dest or outside
    assert list(dest.iterdir()) == []
    assert (outside / "secret").read_text() == "keep me"


def test_links_inside_the_archive_are_fine(tmp_path):
    archive = _write_tar(
        tmp_path / "a.tgz",
        [_member("sub/x.png", PNG_BYTES), _member("sub/y.png", type=tarfile.SYMTYPE, linkname="x.png"),
         _member("z.png", type=tarfile.LNKTYPE, linkname="sub/x.png")],
    )
    assert check_archive(archive, "images").members == 3
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "sub" / "y.png").read_bytes() == PNG_BYTES
    assert (tmp_path / "dest" / "z.png").read_bytes() == PNG_BYTES


def test_good_archives_pass_and_extract(tmp_path):
    images = check_archive(_images(tmp_path / "NLMCXR_png.tgz"), "images")
    reports = check_archive(_reports(tmp_path / "NLMCXR_reports.tgz"), "reports")
    assert (images.members, images.png_files, images.xml_files) == (3, 3, 0)
    assert (reports.members, reports.png_files, reports.xml_files) == (2, 0, 2)
    safe_extract(tmp_path / "NLMCXR_reports.tgz", tmp_path / "dest")
    assert (tmp_path / "dest" / "ecgen-radiology" / "1.xml").read_bytes() == XML_BYTES


def _damaged(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "NLMCXR_png.tgz"
    if how == "tgz cut in half":
        data = _images(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "byte changed in the gzip stream":
        data = bytearray(_images(path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "gzip trailer (CRC) wrong":
        data = bytearray(_images(path).read_bytes())
        data[-8] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "tar cut at a member boundary":
        data = _images(path, gz=False).read_bytes()
        path.write_bytes(data[: 2 * (512 + 10752)])  # two whole members, no end-of-archive block
    elif how == "tar cut inside a header":
        data = _images(path, gz=False).read_bytes()
        path.write_bytes(data[: 512 + 10752 + 100])
    elif how == "gzip of a truncated tar":
        data = _images(path, gz=False).read_bytes()
        path.write_bytes(gzip.compress(data[: 512 + 10752], mtime=0))
    elif how == "zip renamed .tgz":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("CXR1_IM-0001-1001.png", PNG_BYTES)
    elif how == "empty file":
        path.write_bytes(b"")
    elif how == "text file":
        path.write_text("<html>404 Not Found</html>\n")
    return path


DAMAGE = {
    "tgz cut in half": "truncated or corrupt",
    "byte changed in the gzip stream": "corrupt|not a readable tar/tgz archive",  # which depends on the byte
    "gzip trailer (CRC) wrong": "corrupt",
    "tar cut at a member boundary": "truncated",
    "tar cut inside a header": "truncated",
    "gzip of a truncated tar": "truncated",
    "zip renamed .tgz": "not a readable tar/tgz archive",
    "empty file": "empty file",
    "text file": "not a readable tar/tgz archive",
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_archive_is_refused_in_one_line(tmp_path, how):
    archive = _damaged(tmp_path, how)
    with pytest.raises(BadInput) as info:
        check_archive(archive, "images")
    message = str(info.value)
    assert message.startswith(f"{archive}: ")
    assert re.search(DAMAGE[how], message)
    assert "\n" not in message


@pytest.mark.parametrize("how", ["tgz cut in half", "byte changed in the gzip stream", "zip renamed .tgz"])
def test_safe_extract_refuses_damaged_archive_with_bad_input(tmp_path, how):
    archive = _damaged(tmp_path, how)
    with pytest.raises(BadInput) as info:
        safe_extract(archive, tmp_path / "dest")
    assert str(archive) in str(info.value)
    outside_dest = {p for p in _snapshot(tmp_path) if p != "dest" and not p.startswith("dest/")}
    assert outside_dest == {archive.name}


def test_wrong_kind_is_named(tmp_path):
    reports = _reports(tmp_path / "NLMCXR_png.tgz")
    with pytest.raises(BadInput, match="wrong kind of archive: expected IU X-ray PNG images") as info:
        check_archive(reports, "images")
    assert str(reports) in str(info.value)
    images = _images(tmp_path / "NLMCXR_reports.tgz")
    with pytest.raises(BadInput, match="wrong kind of archive: expected IU X-ray reports"):
        check_archive(images, "reports")


def test_xml_outside_the_reports_folder_is_not_reports(tmp_path):
    archive = _write_tar(tmp_path / "r.tgz", [_member("other/1.xml", XML_BYTES)])
    with pytest.raises(BadInput, match="wrong kind"):
        check_archive(archive, "reports")


def test_archive_without_members_is_empty(tmp_path):
    archive = _write_tar(tmp_path / "e.tgz", [])
    with pytest.raises(BadInput, match="empty archive"):
        check_archive(archive)


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        check_archive(tmp_path / "nope.tgz")


def test_sidecar_catches_any_change(tmp_path):
    archive = _images(tmp_path / "a.tgz")
    info = write_sidecar(archive)
    assert info["file"] == "a.tgz" and info["size"] == archive.stat().st_size
    assert verify_sidecar(archive) is None
    data = bytearray(archive.read_bytes())
    data[10] ^= 0x01
    archive.write_bytes(bytes(data))
    assert "sha256" in verify_sidecar(archive)
    archive.write_bytes(bytes(data[:-1]))
    assert "size" in verify_sidecar(archive)
    sidecar_path(archive).unlink()
    assert "no size/sha256 record" in verify_sidecar(archive)


def test_deterministic_tarinfo_has_no_time_or_owner():
    info = deterministic_tarinfo("x.png", 5)
    assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.size) == (0, 0, 0, "", "", 5)
