"""The two IU X-ray archives: names, safe reading, integrity sidecars (atomic writes: cxrgen.files)."""

from __future__ import annotations

import gzip
import json
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cxrgen.errors import BadInput
from cxrgen.files import CHUNK, sha256_of, write_json_atomic

IMAGES_ARCHIVE = "NLMCXR_png.tgz"
REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
ARCHIVES = {"images": IMAGES_ARCHIVE, "reports": REPORTS_ARCHIVE}
REPORTS_FOLDER = "ecgen-radiology"


def sidecar_path(archive: str | Path) -> Path:
    archive = Path(archive)
    return archive.with_name(archive.name + ".json")


def write_sidecar(archive: str | Path, sha256: str | None = None) -> dict:
    """Record size and sha256 beside `archive` (`<name>.json`)."""
    archive = Path(archive)
    info = {
        "file": archive.name,
        "size": archive.stat().st_size,
        "sha256": sha256 or sha256_of(archive),
    }
    write_json_atomic(sidecar_path(archive), info)
    return info


def verify_sidecar(archive: str | Path) -> str | None:
    """Check `archive` against its sidecar. Returns None when it matches, else the problem."""
    archive = Path(archive)
    side = sidecar_path(archive)
    if not side.exists():
        return f"no size/sha256 record ({side.name}) beside it"
    try:
        info = json.loads(side.read_text())
        size, sha = int(info["size"]), str(info["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable size/sha256 record {side.name} ({exc})"
    actual_size = archive.stat().st_size
    if actual_size != size:
        return f"size {actual_size} differs from the recorded {size}"
    actual_sha = sha256_of(archive)
    if actual_sha != sha:
        return f"sha256 {actual_sha} differs from the recorded {sha}"
    return None


@dataclass(frozen=True)
class ArchiveSummary:
    path: Path
    members: int
    png_files: int
    xml_files: int


def _unsafe_member_problem(member: tarfile.TarInfo, symlinks: set[str]) -> str | None:
    """Why extracting `member` could write outside the target folder, or None if it is safe.

    `symlinks` collects the symlink members seen so far: a member whose path goes through one
    (d/a -> "..", then d/a/b -> "..") escapes although each link looks harmless on its own.
    """
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"member {name!r} has an absolute path"
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        return f"member {name!r} contains '..'"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith("/"):
            return f"member {name!r} is a link to the absolute path {link!r}"
        base = posixpath.dirname(norm) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            return f"member {name!r} is a link pointing out of the target folder ({link!r})"
    if member.isdev() or member.isfifo():
        return f"member {name!r} is a device or pipe, not a regular file"
    parts = norm.split("/")
    for depth in range(1, len(parts)):
        if "/".join(parts[:depth]) in symlinks:
            return f"member {name!r} lies under the symlink {'/'.join(parts[:depth])!r}"
    if member.issym():
        symlinks.add(norm)
    return None


def _one_line(exc: BaseException) -> str:
    """tarfile's 'could not be opened' error spans several lines; the user gets one."""
    return " ".join(str(exc).split())


def _end_marker_missing(tar: tarfile.TarFile) -> bool:
    """True when the tar stops without its end-of-archive zero block.

    tarfile silently ends iteration at a missing or partial header, so a tar cut at a member
    boundary (or a gzip of such a tar) would otherwise read as complete.
    """
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) != tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE


def check_archive(path: str | Path, kind: str | None = None) -> ArchiveSummary:
    """Read the whole archive once: every member safe, the compression intact, the content of `kind`.

    kind: "images" (PNG files), "reports" (ecgen-radiology/*.xml) or None (any content).
    Raises BadInput naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(path, "does not exist or is not a file")
    if path.stat().st_size == 0:
        raise BadInput(path, "empty file (0 bytes), not a tar/tgz archive")
    members = pngs = xmls = 0
    symlinks: set[str] = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                members += 1
                problem = _unsafe_member_problem(member, symlinks)
                if problem:
                    raise BadInput(path, f"unsafe archive: {problem}")
                if member.isfile():
                    lower = member.name.lower()
                    pngs += lower.endswith(".png")
                    xmls += lower.endswith(".xml") and f"{REPORTS_FOLDER}/" in f"/{member.name}"
                    fobj = tar.extractfile(member)
                    while fobj is not None and fobj.read(CHUNK):  # reading checks the gzip CRC
                        pass
            if members and _end_marker_missing(tar):
                raise BadInput(path, "truncated archive (it ends without the tar end-of-archive block)")
            while tar.fileobj.read(CHUNK):  # to the very end: gzip checks its CRC only there
                pass
    except BadInput:
        raise
    except (tarfile.ReadError, tarfile.CompressionError) as exc:
        raise BadInput(path, f"not a readable tar/tgz archive ({_one_line(exc)})") from None
    except (EOFError, zlib.error, OSError) as exc:
        raise BadInput(path, f"truncated or corrupt archive ({_one_line(exc)})") from None
    if members == 0:
        raise BadInput(path, "empty archive")
    if kind == "images" and pngs == 0:
        raise BadInput(path, "wrong kind of archive: expected IU X-ray PNG images, found no .png file")
    if kind == "reports" and xmls == 0:
        raise BadInput(
            path, f"wrong kind of archive: expected IU X-ray reports, found no {REPORTS_FOLDER}/*.xml"
        )
    return ArchiveSummary(path=path, members=members, png_files=pngs, xml_files=xmls)


def safe_extract(path: str | Path, dest: str | Path) -> None:
    """Extract after check_archive's rules (also refused by tarfile's 'data' filter as a second guard)."""
    path, dest = Path(path), Path(dest)
    symlinks: set[str] = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                problem = _unsafe_member_problem(member, symlinks)
                if problem:
                    raise BadInput(path, f"unsafe archive: {problem}")
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise BadInput(path, f"unsafe archive: {_one_line(exc)}") from None
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BadInput(path, f"truncated or corrupt archive ({_one_line(exc)})") from None


def deterministic_tarinfo(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    """A TarInfo with no time, owner or host detail, so the same content gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
