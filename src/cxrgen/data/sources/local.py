"""Source `local`: IU X-ray data the user already has, at download.local.path.

The path is a folder (or a file, whose folder is then used). What it holds is detected, first
match wins:

  nlmcxr  the two original archives NLMCXR_png.tgz and NLMCXR_reports.tgz (also named .tar.gz or
          .tar): each is checked and copied as it is under the standard name (so a plain tar may
          sit under the .tgz name; every reader opens them with tarfile mode "r:*");
          or, per kind, the extracted form: an ecgen-radiology/ folder of XML reports and a folder
          of CXR*.png images (the folder itself, or one or two levels down), packed into the
          standard names (images at the archive's top level, reports under ecgen-radiology/).
  r2gen   R2Gen's annotation.json + images/<id>/<n>.png (here or one folder down), packed into
          r2gen.tar: members annotation.json and images/<id>/<n>.png.
  kaggle  indiana_reports.csv + indiana_projections.csv + a folder of the PNGs the projections
          file names (e.g. images/images_normalized/), packed into kaggle.tar: members
          indiana_reports.csv, indiana_projections.csv and images/<file name>.
  mimic   MIMIC-CXR-JPG (see cxrgen.data.mimic): mimic-cxr-2.0.0-split.csv(.gz) +
          mimic-cxr-2.0.0-metadata.csv(.gz) + files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg, with the
          reports as files/pXX/pSUBJECT/sSTUDY.txt or in mimic-cxr-reports.zip (here or one folder
          down). Checked first: a MIMIC folder may also hold R2Gen's annotation.json. The images are
          NOT copied (about 570 GB): mimic_tables.tar packs the tables as given (chexpert too when
          present), every report (members files/pXX/pSUBJECT/sSTUDY.txt, read from the folder or the
          zip) and annotation.json when present; mimic_images.parquet lists the JPGs the metadata
          names that exist (dicom_id, study_id, subject_id, path under the tables' folder, size), so
          a changed folder changes data/raw. Metadata rows without their JPG are named and counted
          (an error only when none is there); prepare reads the JPGs in place.

Packing is deterministic: members sorted by name, no times or owners (deterministic_tarinfo),
gzip with mtime 0 and no file name, so the same input gives the same bytes. Every archive placed
in raw_dir passed check_archive and has its size/sha256 sidecar. The record names files relative
to the given folder only, so it does not depend on where the user keeps the data.

Nothing outside the given folder is read: a file that is a link (or lies under a linked folder)
whose target resolves outside the folder is refused with its name and target, before anything is
written, so it can never be packed into data/raw (and pushed with DVC). Links that stay inside the
folder are followed. (A hard link is an ordinary file to the filesystem and cannot be told apart.)

A full MIMIC-CXR-JPG folder is scanned once (about 65,000 patient folders; a progress bar shows it).

cfg (params.yaml download.local):
  path: null    the folder (or a file in it); null means this source is not configured
  sha256:       expected sha256 of the archives placed in data/raw, by kind: {images, reports} for the
                NLMCXR layout (the user's archive as it is, or the archive packed from a folder; the
                same digests source.json records), {bundle} for the R2Gen / Kaggle layouts. null: not
                checked. Packing is deterministic, so a folder gives the same digest every time.
                MIMIC: {bundle} is mimic_tables.tar (the manifest is not pinned: its parquet bytes
                name the pyarrow version that wrote them).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import os
import re
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

from cxrgen.data import mimic

from cxrgen.data.archives import (
    ARCHIVES,
    REPORTS_FOLDER,
    check_archive,
    deterministic_tarinfo,
    sidecar_path,
    write_sidecar,
)
from cxrgen.errors import BadInput, SourceUnavailable
from cxrgen.files import CHUNK, atomic_path, sha256_of
from cxrgen.params import check_keys
from cxrgen.tables import write_parquet

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
R2GEN_BUNDLE = "r2gen.tar"
KAGGLE_BUNDLE = "kaggle.tar"
KAGGLE_REPORTS = "indiana_reports.csv"
KAGGLE_PROJECTIONS = "indiana_projections.csv"
KAGGLE_COLUMNS = {
    KAGGLE_REPORTS: {"uid", "findings", "impression"},
    KAGGLE_PROJECTIONS: {"uid", "filename", "projection"},
}
R2GEN_ANNOTATION = "annotation.json"
R2GEN_SPLITS = ("train", "val", "test")
NLMCXR_PNG_NAME = re.compile(r"CXR\d+_.*\.png", re.IGNORECASE)
GZIP_LEVEL = 1  # PNGs are already compressed: level 1 is several times faster and barely larger
SEARCH_DEPTH = 2  # how many folder levels below the given one are searched
LOCAL_KEYS = ("path", "sha256")
PIN_KINDS = ("images", "reports", "bundle")

LOOKED_FOR = (
    "looked for NLMCXR_png.tgz + NLMCXR_reports.tgz (or .tar.gz / .tar), "
    f"an {REPORTS_FOLDER}/ folder of XML reports + a folder of CXR*.png images, "
    f"R2Gen's {R2GEN_ANNOTATION} + images/<id>/0.png, "
    f"Kaggle's {KAGGLE_REPORTS} + {KAGGLE_PROJECTIONS} + a folder of their PNGs, "
    f"or MIMIC-CXR-JPG's {mimic.SPLIT_TABLE}(.gz) + {mimic.METADATA_TABLE}(.gz) + {mimic.FILES_FOLDER}/"
)
MAX_REPORT_BYTES = 1 << 20  # one MIMIC report in a zip (real ones are a few KB): more is refused unread
MAX_TABLE_BYTES = 1 << 30   # a MIMIC table once decompressed (real: the metadata is about 60 MB)


# -- looking around the user's folder -----------------------------------------------------------


def _folders(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """root and its sub-folders down to `depth` levels, sorted, hidden ones skipped."""
    found, level = [root], [root]
    for _ in range(depth):
        below = []
        for folder in level:
            with contextlib.suppress(OSError):
                below += sorted(
                    Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
                )
        found += below
        level = below
    return found


def _files(folder: Path, suffix: str) -> list[Path]:
    """Regular files (or links to them) directly in `folder` whose name ends with `suffix`."""
    with os.scandir(folder) as entries:
        return sorted(
            Path(e.path) for e in entries if e.name.lower().endswith(suffix) and e.is_file()
        )


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."


def _inside(path: Path, root: Path) -> Path:
    """The real file behind `path` (root is resolved); BadInput when a link takes it out of root."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise BadInput(path, (
            f"is a link to {real}, outside the folder {root} (download.local.path): links out of the "
            "folder are refused, so nothing outside it is packed; copy the file in, or point "
            "download.local.path at the folder that holds it"))
    return real


def _find_archive(root: Path, kind: str) -> Path | None:
    stem = ARCHIVES[kind].removesuffix(".tgz")
    for suffix in ARCHIVE_SUFFIXES:
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    return None


def _find_reports_folder(root: Path) -> Path | None:
    """The first ecgen-radiology/ folder holding XML files, else the first one at all."""
    named = [folder for folder in _folders(root) if folder.name == REPORTS_FOLDER]
    return next((folder for folder in named if _files(folder, ".xml")), named[0] if named else None)


def _png_folders(root: Path, keep=lambda name: True) -> dict[Path, list[Path]]:
    """Folders (root and below) holding PNGs whose names pass `keep`, with those PNGs."""
    out = {}
    for folder in _folders(root):
        pngs = [p for p in _files(folder, ".png") if keep(p.name)]
        if pngs:
            out[folder] = pngs
    return out


def _one_folder(root: Path, candidates: dict[Path, list[Path]], what: str) -> tuple[Path, list[Path]]:
    if len(candidates) > 1:
        listed = ", ".join(f"{_relative(f, root)}/ ({len(p)})" for f, p in candidates.items())
        raise BadInput(
            root, f"several folders of {what}: {listed}; point download.local.path at the one to use"
        )
    return next(iter(candidates.items()))


# -- the layouts: each returns a plan or says what it is missing --------------------------------


@dataclass(frozen=True)
class ZipMember:
    """A file inside a zip archive (the archive already checked to lie inside the folder)."""

    archive: Path
    name: str
    size: int


@dataclass
class Plan:
    layout: str
    copies: dict[str, Path] = field(default_factory=dict)  # kind -> user's archive, copied as is
    packs: dict[str, list[tuple[str, Path | ZipMember]]] = field(default_factory=dict)  # file -> members
    writes: dict[str, tuple[str, Callable[[Path], None]]] = field(default_factory=dict)  # file -> (label, writer)
    origin: dict = field(default_factory=dict)  # what was found, relative to the given folder
    notes: dict = field(default_factory=dict)
    checked: bool = False  # the members already name real files inside the folder (checked while found)


class _Missing(Exception):
    """A layout partly present: the message says what was found and what is missing."""


def _plan_nlmcxr(root: Path) -> Plan | None:
    archives = {kind: _find_archive(root, kind) for kind in ARCHIVES}
    reports_folder = None if archives["reports"] else _find_reports_folder(root)
    if not (archives["images"] or archives["reports"] or reports_folder):
        return None  # nothing of this layout: let the others try
    if reports_folder and not _files(reports_folder, ".xml"):
        raise _Missing(f"found {_relative(reports_folder, root)}/ but it holds no .xml reports")
    image_folders = {} if archives["images"] else _png_folders(root, NLMCXR_PNG_NAME.fullmatch)
    have_images = archives["images"] or image_folders
    have_reports = archives["reports"] or reports_folder
    if not have_images:
        raise _Missing(
            f"found {_relative(archives['reports'] or reports_folder, root)} but no images: looked for "
            f"{ARCHIVES['images']} (or .tar.gz / .tar) or a folder of CXR*.png files"
        )
    if not have_reports:
        raise _Missing(
            f"found {_relative(archives['images'], root)} but no reports: looked for "
            f"{ARCHIVES['reports']} (or .tar.gz / .tar) or an {REPORTS_FOLDER}/ folder of .xml files"
        )
    plan = Plan("nlmcxr")
    for kind, archive in archives.items():
        if archive:
            plan.copies[kind] = archive
            plan.origin[kind] = {"archive": _relative(archive, root)}
    if not archives["images"]:
        folder, pngs = _one_folder(root, image_folders, "CXR*.png images")
        plan.packs[ARCHIVES["images"]] = [(p.name, p) for p in pngs]
        plan.origin["images"] = {"folder": _relative(folder, root), "files": len(pngs)}
    if not archives["reports"]:
        xmls = _files(reports_folder, ".xml")
        plan.packs[ARCHIVES["reports"]] = [(f"{REPORTS_FOLDER}/{p.name}", p) for p in xmls]
        plan.origin["reports"] = {"folder": _relative(reports_folder, root), "files": len(xmls)}
    return plan


def _plan_r2gen(root: Path) -> Plan | None:
    found = [f / R2GEN_ANNOTATION for f in _folders(root, 1) if (f / R2GEN_ANNOTATION).is_file()]
    if not found:
        return None
    annotation = found[0]
    _inside(annotation, root)
    images = annotation.parent / "images"
    if not images.is_dir():
        raise _Missing(f"found {_relative(annotation, root)} but no images/ folder beside it")
    try:
        data = json.loads(annotation.read_text(encoding="utf-8"))
        listed = {p for split in R2GEN_SPLITS for entry in data.get(split, []) for p in entry["image_path"]}
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(annotation, f"not valid JSON ({exc})") from None
    except (AttributeError, TypeError, KeyError):
        expected = '{"train": [{"id", "report", "image_path"}, ...], "val": [...], "test": [...]}'
        raise BadInput(annotation, f"not an R2Gen split file: expected {expected}") from None
    pngs = [p for folder in _folders(images, 1)[1:] for p in _files(folder, ".png")]
    present = {p.relative_to(images).as_posix() for p in pngs}
    missing = sorted(listed - present)
    if listed and len(missing) == len(listed):
        raise BadInput(
            images, f"none of the {len(listed)} images {annotation.name} lists is here (e.g. {missing[0]})"
        )
    if not pngs:
        raise BadInput(images, "no <id>/<n>.png images in it")
    plan = Plan(R2GEN_BUNDLE.removesuffix(".tar"))
    plan.packs[R2GEN_BUNDLE] = [(R2GEN_ANNOTATION, annotation)] + [
        (f"images/{p.relative_to(images).as_posix()}", p) for p in pngs
    ]
    plan.origin = {
        "annotation": _relative(annotation, root),
        "images": {"folder": _relative(images, root), "files": len(pngs)},
    }
    plan.notes = {
        "studies": {split: len(data.get(split, [])) for split in R2GEN_SPLITS},
        "listed_images_missing": len(missing),
    }
    return plan


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(path, f"not a readable UTF-8 CSV file ({exc})") from None


def _plan_kaggle(root: Path) -> Plan | None:
    found = [f for f in _folders(root, 1) if any((f / name).is_file() for name in KAGGLE_COLUMNS)]
    if not found:
        return None
    folder = found[0]
    tables = {name: folder / name for name in KAGGLE_COLUMNS}
    absent = [name for name, path in tables.items() if not path.is_file()]
    if absent:
        raise _Missing(f"found the Kaggle tables in {_relative(folder, root)}/ but not {', '.join(absent)}")
    rows = {}
    for name, path in tables.items():
        columns, rows[name] = _read_csv(_inside(path, root))
        if not KAGGLE_COLUMNS[name] <= set(columns):
            wanted_columns = ", ".join(sorted(KAGGLE_COLUMNS[name]))
            raise BadInput(path, f"expected columns {wanted_columns}; found {', '.join(columns) or 'none'}")
    wanted = {row["filename"] for row in rows[KAGGLE_PROJECTIONS] if row.get("filename")}
    candidates = _png_folders(folder)
    # The right folder is the one holding the files the projections table names.
    hits = {f: len(wanted & {p.name for p in pngs}) for f, pngs in candidates.items()}
    best = max(hits.values(), default=0)
    if best == 0:
        raise _Missing(
            f"found {KAGGLE_REPORTS} + {KAGGLE_PROJECTIONS} but no folder holding the PNGs "
            f"{KAGGLE_PROJECTIONS} names (e.g. {min(wanted) if wanted else 'none listed'})"
        )
    best_folders = {f: candidates[f] for f, n in hits.items() if n == best}
    image_folder, pngs = _one_folder(root, best_folders, "Kaggle PNGs")
    plan = Plan(KAGGLE_BUNDLE.removesuffix(".tar"))
    plan.packs[KAGGLE_BUNDLE] = list(tables.items()) + [(f"images/{p.name}", p) for p in pngs]
    plan.origin = {
        **{name.removesuffix(".csv"): _relative(path, root) for name, path in tables.items()},
        "images": {"folder": _relative(image_folder, root), "files": len(pngs)},
    }
    plan.notes = {"reports": len(rows[KAGGLE_REPORTS]), "listed_images_missing": len(wanted) - best}
    return plan


def _scan(folder: Path, root: Path, pattern: re.Pattern, *, want_dirs: bool) -> list[tuple[str, Path, int]]:
    """Entries of `folder` (a real path inside root) whose names match `pattern`: (name, real path,
    size; 0 for folders), sorted. A link is followed only when its target stays inside root."""
    out = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            if entry.is_dir() != want_dirs or not (want_dirs or entry.is_file()):
                continue
            path = _inside(Path(entry.path), root) if entry.is_symlink() else Path(entry.path)
            out.append((entry.name, path, 0 if want_dirs else entry.stat().st_size))
    return sorted(out)


def _walk_mimic(files: Path, root: Path) -> tuple[dict[str, tuple[Path, int]], dict[str, Path]]:
    """The JPGs ({files/pXX/pS/sT/<id>.jpg: (real path, size)}) and the reports
    ({files/pXX/pS/sT.txt: real path}) under files/, relative to the folder holding files/."""
    images, reports = {}, {}
    subjects = [(group, subject, path)
                for group, group_path, _ in _scan(files, root, mimic.GROUP_FOLDER, want_dirs=True)
                for subject, path, _ in _scan(group_path, root, mimic.SUBJECT_FOLDER, want_dirs=True)]
    for group, subject, subject_path in tqdm(subjects, desc="scanning MIMIC-CXR patients", unit=" patients",
                                             file=sys.stderr, mininterval=2, dynamic_ncols=True):
        prefix = f"{mimic.FILES_FOLDER}/{group}/{subject}"
        for name, path, _ in _scan(subject_path, root, mimic.STUDY_REPORT, want_dirs=False):
            reports[f"{prefix}/{name}"] = path
        for study, study_path, _ in _scan(subject_path, root, mimic.STUDY_FOLDER, want_dirs=True):
            for name, path, size in _scan(study_path, root, _JPG, want_dirs=False):
                images[f"{prefix}/{study}/{name}"] = (path, size)
    return images, reports


_JPG = re.compile(r"[^/]+\.jpg")


def _zip_reports(archive: Path) -> list[tuple[str, ZipMember]]:
    """The members of mimic-cxr-reports.zip that are reports (files/pXX/pS/sT.txt); others are ignored."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInput(archive, f"not a readable zip archive ({exc})") from None
    members = {}
    for info in infos:
        if info.is_dir() or not mimic.REPORT_PATH.fullmatch(info.filename):
            continue
        if info.file_size > MAX_REPORT_BYTES:
            raise BadInput(archive, f"member {info.filename} says it holds {info.file_size:,} bytes; a MIMIC-CXR "
                                    f"report is a few KB (more than {MAX_REPORT_BYTES:,} is refused unread)")
        members[info.filename] = ZipMember(archive, info.filename, info.file_size)
    return sorted(members.items())


def _read_table(path: Path, table: str) -> list[dict]:
    with open(path, "rb") as f:
        return mimic.read_table(f.read(), path, table, MAX_TABLE_BYTES)


def _plan_mimic(root: Path) -> Plan | None:
    candidates = [f for f in _folders(root, 1)
                  if mimic.find_table(f, mimic.SPLIT_TABLE) or mimic.find_table(f, mimic.METADATA_TABLE)]
    if not candidates:
        return None
    folder = candidates[0]
    tables = {t: mimic.find_table(folder, t) for t in mimic.TABLES}
    for table in (mimic.SPLIT_TABLE, mimic.METADATA_TABLE):
        if tables[table] is None:
            found = next(_relative(p, root) for p in tables.values() if p)
            raise _Missing(f"found {found} but not {table}(.gz) beside it (MIMIC-CXR-JPG)")
    files = folder / mimic.FILES_FOLDER
    if not files.is_dir():
        raise _Missing(f"found the MIMIC-CXR tables in {_relative(folder, root)}/ but no "
                       f"{mimic.FILES_FOLDER}/ folder of images beside them")
    tables = {t: _inside(p, root) for t, p in tables.items() if p}
    images, reports = _walk_mimic(_inside(files, root), root)
    report_members: list[tuple[str, Path | ZipMember]] = sorted(reports.items())
    reports_from = {"folder": _relative(files, root), "files": len(reports)}
    if not reports:
        zips = [f / mimic.REPORTS_ZIP for f in dict.fromkeys([folder, *_folders(root, 1)])
                if (f / mimic.REPORTS_ZIP).is_file()]
        if not zips:
            raise _Missing(f"found the MIMIC-CXR tables and {_relative(files, root)}/ but no reports: looked for "
                           f"{mimic.FILES_FOLDER}/pXX/pSUBJECT/sSTUDY.txt and {mimic.REPORTS_ZIP}")
        archive = _inside(zips[0], root)
        report_members = _zip_reports(archive)
        if not report_members:
            raise BadInput(archive, f"no reports in it: expected members {mimic.FILES_FOLDER}/pXX/pSUBJECT/sSTUDY.txt")
        reports_from = {"zip": _relative(zips[0], root), "files": len(report_members)}

    metadata = _read_table(tables[mimic.METADATA_TABLE], mimic.METADATA_TABLE)
    _read_table(tables[mimic.SPLIT_TABLE], mimic.SPLIT_TABLE)  # its columns, checked before anything is written
    rows, missing = [], []
    for row in metadata:
        subject, study, dicom = (str(row[k]).strip() for k in ("subject_id", "study_id", "dicom_id"))
        path = mimic.image_path(subject, study, dicom)
        if path in images:
            rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "path": path,
                         "size": images[path][1]})
        else:
            missing.append(path)
    missing.sort()
    if not rows:
        example = f" (e.g. {missing[0]})" if missing else ""
        raise BadInput(files, f"none of the {len(metadata):,} images {tables[mimic.METADATA_TABLE].name} lists "
                              f"is here{example}")
    if missing:
        shown = ", ".join(missing[:MISSING_NAMED])
        more = f", ... ({len(missing) - MISSING_NAMED:,} more)" if len(missing) > MISSING_NAMED else ""
        print(f"download: warning: {len(missing):,} of the {len(metadata):,} images "
              f"{tables[mimic.METADATA_TABLE].name} lists are not in {_relative(files, root)}/: {shown}{more}; "
              "their studies are used with the views that are there", file=sys.stderr)
    manifest = pd.DataFrame(sorted(rows, key=lambda r: r["path"]), columns=mimic.MANIFEST_COLUMNS)
    manifest["size"] = manifest["size"].astype("int64")

    plan = Plan("mimic", checked=True)
    extra = []
    annotation = folder / mimic.ANNOTATION
    if annotation.is_file():
        extra.append((mimic.ANNOTATION, _inside(annotation, root)))
    plan.packs[mimic.TABLES_BUNDLE] = (
        [(path.name, path) for path in tables.values()] + extra + report_members)
    plan.writes[mimic.IMAGES_MANIFEST] = ("manifest", lambda dest: write_parquet(manifest, dest))
    plan.origin = {
        "folder": _relative(folder, root),
        **{table.removesuffix(".csv").removeprefix("mimic-cxr-2.0.0-"): _relative(path, root)
           for table, path in tables.items()},
        "images": {"folder": _relative(files, root), "files": len(images)},
        "reports": reports_from,
        **({"annotation": _relative(annotation, root)} if extra else {}),
    }
    plan.notes = {
        "metadata_images": len(metadata),
        "metadata_images_missing": len(missing),
        "metadata_images_missing_examples": missing[:MISSING_NAMED],
        "images_not_in_metadata": len(images) - len(rows),
    }
    return plan


MISSING_NAMED = 10  # metadata rows without their JPG named in the warning and source.json


LAYOUTS = (_plan_mimic, _plan_nlmcxr, _plan_r2gen, _plan_kaggle)


def _plan(root: Path) -> Plan:
    partial = []
    for detect in LAYOUTS:
        try:
            plan = detect(root)
        except _Missing as exc:
            partial.append(str(exc))
            continue
        if plan is not None:
            # Every file that will be read, checked before anything is written; the plan then names
            # the real files, which _pack opens without following a link.
            plan.copies = {kind: _inside(path, root) for kind, path in plan.copies.items()}
            if not plan.checked:
                plan.packs = {name: [(member, _inside(path, root)) for member, path in members]
                              for name, members in plan.packs.items()}
            return plan
    if partial:
        raise BadInput(root, "; ".join(partial))
    raise BadInput(root, f"no IU X-ray data found: {LOOKED_FOR}")


# -- writing into raw_dir -----------------------------------------------------------------------


def _bar(desc: str, total: int) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        file=sys.stderr, mininterval=0.5, dynamic_ncols=True,
    )


class _HashingWriter:
    """A write-only file that hashes what passes through, so the output is not read again."""

    def __init__(self, out):
        self.out, self.digest, self.position = out, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.position += len(data)
        return self.out.write(data)

    def tell(self) -> int:  # tarfile asks where it is
        return self.position

    def flush(self) -> None:
        self.out.flush()


def _copy(source: Path, dest: Path) -> str:
    """Copy with a progress bar; returns the sha256 of the bytes written."""
    with atomic_path(dest) as tmp, open(source, "rb") as src, open(tmp, "wb") as out:
        hashing = _HashingWriter(out)
        with _bar(f"copy {source.name}", source.stat().st_size) as bar:
            while block := src.read(CHUNK):
                hashing.write(block)
                bar.update(len(block))
    return hashing.digest.hexdigest()


def _open_member(source: Path | ZipMember, zips: dict, stack: contextlib.ExitStack):
    """(file object, size) of one member to pack; BadInput naming it when it cannot be read."""
    if isinstance(source, ZipMember):
        try:
            if source.archive not in zips:
                zips[source.archive] = stack.enter_context(zipfile.ZipFile(source.archive))
            return zips[source.archive].open(source.name), source.size
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise BadInput(f"{source.archive}:{source.name}", f"cannot be read ({exc})") from None
    try:
        # O_NOFOLLOW: a file swapped for a link since the plan was checked is not followed.
        f = os.fdopen(os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")
    except OSError as exc:
        raise BadInput(source, f"cannot be read ({exc.strerror})") from None
    return f, os.fstat(f.fileno()).st_size


def _pack(members: list[tuple[str, Path | ZipMember]], dest: Path) -> str:
    """Write members (name in the archive, file or zip member) as a deterministic tar, gzipped for .tgz
    names."""
    members = sorted(members, key=lambda member: member[0])
    total = 0
    for _, source in members:
        if isinstance(source, ZipMember):
            total += source.size
            continue
        try:
            total += source.stat().st_size
        except OSError as exc:
            raise BadInput(source, f"cannot be read ({exc.strerror})") from None
    with atomic_path(dest) as tmp, open(tmp, "wb") as out, contextlib.ExitStack() as stack:
        hashing = _HashingWriter(out)
        stream = hashing
        if dest.name.endswith((".tgz", ".gz")):
            # filename="" and mtime=0 keep the gzip header free of names and times
            stream = stack.enter_context(
                gzip.GzipFile(filename="", mode="wb", fileobj=hashing, compresslevel=GZIP_LEVEL, mtime=0)
            )
        tar = stack.enter_context(tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT))
        bar = stack.enter_context(_bar(f"pack {dest.name}", total))
        zips: dict[Path, zipfile.ZipFile] = {}
        for name, source in members:
            f, size = _open_member(source, zips, stack)
            with f:
                # Images are packed as they are: a corrupt or empty PNG is the prepare stage's to
                # skip and count, as it would be inside the original archive.
                try:
                    tar.addfile(deterministic_tarinfo(name, size), f)
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    where = f"{source.archive}:{source.name}" if isinstance(source, ZipMember) else source
                    raise BadInput(where, f"cannot be read ({exc})") from None
            bar.update(size)
    # ExitStack closed tar, then gzip (its trailer), before atomic_path renamed the file
    return hashing.digest.hexdigest()


def _root(cfg: dict) -> Path:
    """The folder, resolved: the path itself may be a link (the folder is then its target)."""
    value = (cfg or {}).get("path")
    if value is None or not str(value).strip():
        raise SourceUnavailable("no path set (download.local.path)")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise BadInput(path, "does not exist (download.local.path)")
    return (path if path.is_dir() else path.parent).resolve()


def _pins(cfg: dict) -> dict[str, str]:
    """download.local.sha256, checked: {kind: 64 hex digits} for the kinds that are pinned."""
    value = cfg.get("sha256") or {}
    if not isinstance(value, dict):
        raise BadInput("params.yaml", f"download.local.sha256: expected a mapping {{images: ..., reports: ...}} "
                                      f"or {{bundle: ...}}, got {value!r}")
    check_keys(value, PIN_KINDS, "download.local.sha256")
    pins = {}
    for kind, digest in value.items():
        if digest is None:
            continue
        digest = str(digest).strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BadInput("params.yaml", f"download.local.sha256.{kind}: {digest!r} is not a sha256 "
                                          "(64 hex digits) or null")
        pins[kind] = digest
    return pins


def fetch(cfg: dict, raw_dir: Path, cache_dir: Path) -> dict:
    """Detect what is at download.local.path, check it, place the archives in raw_dir."""
    cfg = check_keys(cfg, LOCAL_KEYS, "download.local")
    pins = _pins(cfg)
    root = _root(cfg)
    raw_dir = Path(raw_dir)
    plan = _plan(root)
    produced = set(plan.copies) | {next((k for k, n in ARCHIVES.items() if n == name), "bundle")
                                   for name in plan.packs} | {label for label, _ in plan.writes.values()}
    for kind in sorted(set(pins) - produced):
        raise BadInput("params.yaml", (
            f"download.local.sha256.{kind} is set, but the {plan.layout} layout found in {root} "
            f"gives no {kind} archive (it gives {', '.join(sorted(produced))})"))
    for kind, archive in plan.copies.items():  # check before writing anything
        check_archive(archive, kind)

    placed: list[Path] = []
    files, sha256, size = {}, {}, {}
    try:
        outputs = [(kind, ARCHIVES[kind], archive) for kind, archive in plan.copies.items()]
        outputs += [(None, name, members) for name, members in plan.packs.items()]
        outputs += [(label, name, writer) for name, (label, writer) in plan.writes.items()]
        for kind, name, what in outputs:
            dest = raw_dir / name
            placed += [dest, sidecar_path(dest)]
            if isinstance(what, Path):
                sha = _copy(what, dest)  # bytes of the user's archive, checked above
            elif callable(what):
                what(dest)  # a table made from what was found (atomic: cxrgen.tables)
                sha = sha256_of(dest)
            else:
                sha = _pack(what, dest)
                kind = next((k for k, n in ARCHIVES.items() if n == name), None)
                check_archive(dest, kind)
            label = kind or "bundle"
            if label in pins and sha != pins[label]:
                source = what if isinstance(what, Path) else root
                raise BadInput(source, (
                    f"{name}: sha256 {sha} differs from download.local.sha256.{label} {pins[label]} "
                    "(the pin is the digest of the archive placed in data/raw, as source.json records it)"))
            info = write_sidecar(dest, sha)
            files[label], sha256[label], size[label] = name, info["sha256"], info["size"]
    except BaseException:
        for path in placed:  # nothing half-done stays in raw_dir
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    return {
        "source": "local",
        "layout": plan.layout,
        "files": dict(sorted(files.items())),
        "from": plan.origin,
        "sha256": dict(sorted(sha256.items())),
        "size": dict(sorted(size.items())),
        **plan.notes,
    }
