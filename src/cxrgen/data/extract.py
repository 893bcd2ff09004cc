"""The `extract` stage: whatever `download` put in data/raw → two tables.

- reports.parquet: one row per report (report_id = the XML `uId`, e.g. "CXR1"), the four sections
  raw (null when missing or empty), MeSH major terms, parentImage ids in XML order, source file.
- images.parquet: one row per image: image_id, report_id, projection (frontal / lateral),
  projection_source (where that came from), width, height, and where the bytes are (archive file in
  data/raw + member name), plus `problem` when the image cannot be used ("reason (detail)": unreadable
  PNG header, or a file over `extract.max_image_bytes`, which is then never read).
- dropped.parquet: every input left out, named, with its reason (see cxrgen.tables.DROPPED_SCHEMA).

Hostile input: a report file over `extract.max_xml_bytes` is skipped before it is read, and so is an
image over `extract.max_image_bytes` (prepare never reads it), so memory does not grow with what a
member claims to hold. XML is parsed without network, external entities or DTD loading; internal
entities are expanded within libxml2's amplification limits. Every skipped report has a specific
reason (entity expansion refused, undeclared or external entity, encoding error, truncated, not
XML, malformed XML, ...). A report that refers to an external entity is skipped, never kept with the
reference as text (it would train as a word).

MIMIC-CXR (layout "mimic", see cxrgen.data.mimic): reports are keyed "s<study_id>", their sections
parsed from the free text (mimic.parse_sections), with two more columns, subject_id (the patient) and
official_split (train / val / test from mimic-cxr-2.0.0-split.csv; null when it does not list the
study); `mesh_major` holds the reference labels of mimic-cxr-2.0.0-chexpert.csv when it is there, as
index terms that map back to the same observations (mimic.CHEXPERT_INDEX_TERMS; MIMIC has no MeSH). Images are keyed by dicom_id, their projection read from the metadata's ViewPosition
(projection_source "metadata"; PA/AP frontal, LATERAL/LL lateral, others left out with their reason),
width/height from its Columns/Rows; they are not in data/raw: `archive` is null, `member` the path
under download.local.path, and one more column, `size`, the bytes the download stage found there
(prepare checks it). Metadata images whose file is not there, and studies without a report, are left
out, named, but not counted as bad inputs (a partial download is usable).

The NLM XML gives no projection. The Kaggle export's projections file does; otherwise the order
rule infers it (first image of a study frontal, the others lateral), and its accuracy is measured
against whatever truth exists (synthetic ground truth, a Kaggle projections file) — see
`projection_accuracy`.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import struct
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from lxml import etree
from tqdm import tqdm

from cxrgen.data import mimic
from cxrgen.errors import BadInput, Unusable
from cxrgen.files import read_json
from cxrgen.params import with_defaults

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
REPORT_COLUMNS = ["report_id", *[s.lower() for s in SECTIONS], "mesh_major", "image_ids", "source_file"]
IMAGE_COLUMNS = [
    "image_id", "report_id", "position", "projection", "projection_source",
    "width", "height", "archive", "member", "problem",
]
MIMIC_REPORT_COLUMNS = [*REPORT_COLUMNS, "subject_id", "official_split"]
MIMIC_IMAGE_COLUMNS = [*IMAGE_COLUMNS, "size"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FRONTAL, LATERAL = "frontal", "lateral"
EXTRACT_DEFAULTS = {
    "projections_reference": None,
    "max_xml_bytes": 1 << 20,      # one report file; real IU reports are a few KB
    "max_image_bytes": 64 << 20,   # one PNG; the real collection's largest are a few MB
    "max_table_bytes": 256 << 20,  # a Kaggle CSV or R2Gen annotation.json (real: a few MB); needed whole
}
LIMIT_KEYS = ("max_xml_bytes", "max_image_bytes", "max_table_bytes")


def extract_settings(params: dict, path: str | Path = "params.yaml") -> dict:
    """params.yaml `extract` over its defaults, checked."""
    settings = with_defaults(params, "extract", EXTRACT_DEFAULTS, path)
    for key in LIMIT_KEYS:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(path, f"extract.{key} must be a positive number of bytes, not {value!r}")
    return settings


@dataclass
class Skipped:
    """Inputs left out, each with a named reason: counted for the metrics, listed in dropped.parquet."""

    items: list[dict] = field(default_factory=list)

    def add(self, kind: str, reason: str, *, file: str | None = None, id: str | None = None,
            detail: str | None = None, warn: bool = True) -> None:
        """`reason` is the counted key (e.g. "report: truncated XML"); `detail` what exactly was wrong.
        warn=False for reasons that may be common (then `summarise` says it once)."""
        self.items.append({"stage": "extract", "kind": kind, "id": id, "file": file, "reason": reason,
                           "detail": detail})
        if warn:
            shown = f" ({detail})" if detail else ""
            print(f"extract: warning: skipped {file or id}: {reason}{shown}", file=sys.stderr)

    def summarise(self, reason: str, named: int = 5) -> None:
        """One warning line for the inputs left out for `reason`."""
        ids = [item["id"] or item["file"] for item in self.items if item["reason"] == reason]
        if ids:
            more = f", ... ({len(ids) - named:,} more)" if len(ids) > named else ""
            print(f"extract: warning: left out {len(ids):,}: {reason}: {', '.join(ids[:named])}{more}; all are "
                  "named in dropped.parquet", file=sys.stderr)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item["reason"]] = out.get(item["reason"], 0) + 1
        return dict(sorted(out.items()))


def _text(element) -> str | None:
    if element is None:
        return None
    text = " ".join("".join(element.itertext()).split())
    return text or None


_ERR = etree.ErrorTypes
_ENTITY_EXPANSION = {_ERR.ERR_ENTITY_LOOP, _ERR.ERR_RESOURCE_LIMIT}
_ENTITY_UNDECLARED = {_ERR.ERR_UNDECLARED_ENTITY, _ERR.WAR_UNDECLARED_ENTITY, _ERR.ERR_ENTITY_IS_EXTERNAL,
                      _ERR.ERR_UNPARSED_ENTITY, _ERR.ERR_EXT_ENTITY_STANDALONE}
_ENCODING = {_ERR.ERR_INVALID_ENCODING, _ERR.ERR_UNSUPPORTED_ENCODING, _ERR.ERR_UNKNOWN_ENCODING,
             _ERR.ERR_INVALID_CHAR}
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _parser() -> etree.XMLParser:
    # Internal entities are expanded (libxml2 refuses loops and amplification); external ones never
    # are: no network, no DTD loading, and a reference to one is an error (see _xml_problem).
    return etree.XMLParser(resolve_entities="internal", no_network=True, load_dtd=False, huge_tree=False)


def _ends_early(data: bytes) -> bool:
    """True when the data is well-formed as far as it goes and only its end is missing."""
    parser = _parser()
    try:
        parser.feed(data)
    except etree.XMLSyntaxError:
        return False  # wrong before the end
    try:
        parser.close()
    except etree.XMLSyntaxError:
        return True
    return False


def _external_entity(data: bytes, message: str) -> str | None:
    """The name of the entity an error message names, when the document declares it external."""
    named = re.search(r"Entity '([^']+)'|entity '([^']+)'", message)
    name = next((g for g in named.groups() if g), None) if named else None
    if name and re.search(rb"<!ENTITY\s+(%\s+)?" + re.escape(name.encode()) + rb"\s+(SYSTEM|PUBLIC)\b", data):
        return name
    return None


def _xml_problem(data: bytes, exc: etree.XMLSyntaxError) -> Unusable:
    """The specific reason a report file did not parse."""
    message = " ".join(str(exc.msg).split())
    if exc.code in _ENTITY_EXPANSION:
        return Unusable("entity expansion refused", message)
    if exc.code in _ENTITY_UNDECLARED:
        external = _external_entity(data, message)
        if external:
            return Unusable("external entity", f"&{external}; refers to another file or address, not read")
        return Unusable("undeclared entity", message)
    if exc.code in _ENCODING:
        return Unusable("encoding error", message)
    if _ends_early(data):
        return Unusable("truncated XML", message)
    return Unusable("malformed XML", message)


def parse_report_xml(data: bytes, source_file: str) -> dict:
    """One ecgen-radiology XML file (original or reconstructed layout) → a report row.

    Raises Unusable (a ValueError) with a specific reason when the file is not a usable report.
    """
    start = data
    for bom in _BOMS:
        start = start.removeprefix(bom)
    start = start.lstrip()
    if not start:
        raise Unusable("empty file", f"{len(data)} bytes, no XML")
    if start[:1] != b"<" and start[:2] not in (b"\x00<",):
        raise Unusable("not XML", f"starts with {data[:8]!r}")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise _xml_problem(data, exc) from None
    unexpanded = sorted({node.text for node in root.iter(etree.Entity)})
    if unexpanded:  # not expected with the parser above; never let a reference become a word
        raise Unusable("entity not expanded", ", ".join(unexpanded))
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise Unusable("no <uId id=...> element")
    sections = {label: None for label in SECTIONS}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        if label in sections:
            sections[label] = _text(node)
    return {
        "report_id": uid.get("id").strip(),
        **{label.lower(): value for label, value in sections.items()},
        "mesh_major": [t for t in (_text(m) for m in root.iterfind("MeSH/major")) if t],
        "image_ids": [p.get("id") for p in root.iterfind("parentImage") if p.get("id")],
        "source_file": source_file,
    }


def png_size(header: bytes) -> tuple[int, int]:
    """Width and height from a PNG's first 24 bytes; Unusable (a ValueError) when it is not a PNG."""
    if len(header) == 0:
        raise Unusable("zero-byte image file")
    if header[:8] != PNG_SIGNATURE[: len(header)] or (len(header) >= 16 and header[12:16] != b"IHDR"):
        raise Unusable("not a PNG file", f"bad signature or header: starts with {header[:8]!r}")
    if len(header) < 24:
        raise Unusable("truncated", f"{len(header)} bytes, shorter than a PNG header")
    return struct.unpack(">II", header[16:24])


def _too_large(member: tarfile.TarInfo, limit: int, key: str) -> Unusable | None:
    """The tar header says how long the member is: checked before a byte of it is read."""
    if member.size > limit:
        return Unusable("file too large", f"{member.size:,} bytes > extract.{key} = {limit:,}")
    return None


def _xml_number(name: str) -> tuple[int, str]:
    """Sort key: numbered files (12.xml) in number order, anything else after them by name."""
    stem = PurePosixPath(name).stem
    return (int(stem), name) if stem.isdigit() else (sys.maxsize, name)


def _report_number(report: dict) -> tuple[int, str]:
    """Sort key for report ids "CXR<n>" in number order."""
    digits = report["report_id"].removeprefix("CXR")
    return (int(digits), report["report_id"]) if digits.isdigit() else (sys.maxsize, report["report_id"])


def _iter_tar_files(archive: Path, desc: str):
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tqdm(tar, desc=desc, unit=" files", file=sys.stderr, mininterval=2):
                if member.isfile():
                    yield member, tar
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadInput(archive, f"cannot read archive ({exc})") from None


def _read_nlmcxr_reports(archive: Path, skipped: Skipped, limits: dict) -> list[dict]:
    # Parsed as they come, so at most one report file (<= max_xml_bytes) is held as bytes at a time;
    # rows and skips are put in file-number order afterwards.
    found, problems = [], []
    for member, tar in _iter_tar_files(archive, "reading reports"):
        if not (member.name.lower().endswith(".xml") and "ecgen-radiology/" in f"/{member.name}"):
            continue
        try:
            problem = _too_large(member, limits["max_xml_bytes"], "max_xml_bytes")
            if problem:
                raise problem
            found.append((member.name, parse_report_xml(tar.extractfile(member).read(),
                                                        PurePosixPath(member.name).name)))
        except Unusable as exc:
            problems.append((member.name, exc))
    for name, exc in sorted(problems, key=lambda item: _xml_number(item[0])):
        skipped.add("report", f"report: {exc.reason}", file=f"{archive.name}:{name}", detail=exc.detail)
    return [row for _, row in sorted(found, key=lambda item: _xml_number(item[0]))]


def _image_rows(archive: Path, wanted: dict[str, str], skipped: Skipped, limits: dict) -> dict[str, dict]:
    """Scan an archive for PNGs; `wanted` maps member-name keys (see callers) to image ids."""
    rows = {}
    for member, tar in _iter_tar_files(archive, "reading image headers"):
        image_id = wanted.get(member.name) or wanted.get(PurePosixPath(member.name).name)
        if image_id is None:
            continue
        row = {"image_id": image_id, "archive": archive.name, "member": member.name,
               "width": None, "height": None, "problem": None}
        try:
            problem = _too_large(member, limits["max_image_bytes"], "max_image_bytes")
            if problem:
                raise problem
            row["width"], row["height"] = png_size(tar.extractfile(member).read(24))
        except Unusable as exc:
            row["problem"] = str(exc)  # "reason (detail)": prepare counts it under the reason
        rows[image_id] = row
    return rows


def _assemble(reports: list[dict], images: dict[str, dict], projections: dict[str, str],
              skipped: Skipped) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join report image lists with the image rows found; infer projection by the order rule."""
    image_rows = []
    for report in reports:
        for position, image_id in enumerate(report["image_ids"]):
            found = images.get(image_id)
            if found is None:
                skipped.add("image", "image: id listed in report but no file", id=image_id,
                            detail=f"listed by {report['report_id']} ({report['source_file']})")
                continue
            known = projections.get(image_id)
            image_rows.append({
                **found,
                "report_id": report["report_id"],
                "position": position,
                "projection": known or (FRONTAL if position == 0 else LATERAL),
                "projection_source": "projections_file" if known else "order_rule",
            })
    reports_df = pd.DataFrame(reports, columns=REPORT_COLUMNS)
    images_df = pd.DataFrame(image_rows, columns=IMAGE_COLUMNS)
    images_df["width"] = images_df["width"].astype("Int64")
    images_df["height"] = images_df["height"].astype("Int64")
    images_df["position"] = images_df["position"].astype("int64")
    return reports_df, images_df


def extract_nlmcxr(raw_dir: Path, files: dict, skipped: Skipped, limits: dict):
    reports = _read_nlmcxr_reports(raw_dir / files["reports"], skipped, limits)
    wanted = {f"{image_id}.png": image_id for r in reports for image_id in r["image_ids"]}
    images = _image_rows(raw_dir / files["images"], wanted, skipped, limits)
    return _assemble(reports, images, {}, skipped)


def kaggle_image_id(filename: str) -> str:
    """Kaggle file names drop the 'CXR' prefix and add '.dcm.png' (REFERENCE.md)."""
    return "CXR" + re.sub(r"\.dcm\.png$|\.png$", "", PurePosixPath(filename).name)


def read_projections_csv(data: str, where: str) -> dict[str, str]:
    """A Kaggle `indiana_projections.csv` → {image_id: frontal|lateral}."""
    out = {}
    reader = csv.DictReader(io.StringIO(data))
    if not {"uid", "filename", "projection"} <= set(reader.fieldnames or []):
        raise BadInput(where, "expected columns uid, filename, projection")
    for row in reader:
        out[kaggle_image_id(row["filename"])] = row["projection"].strip().lower()
    return out


def _members_by_name(bundle: Path, limits: dict) -> dict[str, bytes]:
    """Small text members (CSV / JSON) of a bundle tar, by base name. They hold every report, so one
    over the bound stops the stage (checked before it is read)."""
    out = {}
    for member, tar in _iter_tar_files(bundle, "reading tables"):
        if member.name.lower().endswith((".csv", ".json")):
            problem = _too_large(member, limits["max_table_bytes"], "max_table_bytes")
            if problem:
                raise BadInput(f"{bundle}:{member.name}", str(problem))
            out[PurePosixPath(member.name).name] = tar.extractfile(member).read()
    return out


def extract_kaggle(raw_dir: Path, files: dict, skipped: Skipped, limits: dict):
    bundle = raw_dir / files["bundle"]
    tables = _members_by_name(bundle, limits)
    for needed in ("indiana_reports.csv", "indiana_projections.csv"):
        if needed not in tables:
            raise BadInput(bundle, f"Kaggle layout without {needed}")
    projections = read_projections_csv(tables["indiana_projections.csv"].decode("utf-8"), str(bundle))
    by_report: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(tables["indiana_projections.csv"].decode("utf-8"))):
        by_report.setdefault("CXR" + row["uid"].strip(), []).append(kaggle_image_id(row["filename"]))
    reports = []
    for row in csv.DictReader(io.StringIO(tables["indiana_reports.csv"].decode("utf-8"))):
        report_id = "CXR" + row["uid"].strip()
        reports.append({
            "report_id": report_id,
            **{s.lower(): (" ".join((row.get(s.lower()) or "").split()) or None) for s in SECTIONS},
            "mesh_major": [t.strip() for t in (row.get("MeSH") or "").split(";") if t.strip()],
            "image_ids": by_report.get(report_id, []),
            "source_file": "indiana_reports.csv",
        })
    reports.sort(key=_report_number)
    wanted = {PurePosixPath(f).name: kaggle_image_id(f) for ids in by_report.values() for f in
              (i[3:] + ".dcm.png" for i in ids)}
    images = _image_rows(bundle, wanted, skipped, limits)
    return _assemble(reports, images, projections, skipped)


def extract_r2gen(raw_dir: Path, files: dict, skipped: Skipped, limits: dict):
    bundle = raw_dir / files["bundle"]
    tables = _members_by_name(bundle, limits)
    if "annotation.json" not in tables:
        raise BadInput(bundle, "R2Gen layout without annotation.json")
    try:
        annotation = json.loads(tables["annotation.json"])
    except ValueError as exc:
        raise BadInput(f"{bundle}:annotation.json", f"not valid JSON ({exc})") from None
    reports, wanted = [], {}
    for split in ("train", "val", "test"):
        for entry in annotation.get(split, []):
            study = entry["id"]
            image_ids = [f"{study}/{PurePosixPath(p).stem}" for p in entry.get("image_path", [])]
            for path, image_id in zip(entry.get("image_path", []), image_ids):
                wanted[f"images/{path}"] = image_id
            reports.append({
                "report_id": study.split("_")[0], "comparison": None, "indication": None,
                "findings": " ".join((entry.get("report") or "").split()) or None, "impression": None,
                "mesh_major": [], "image_ids": image_ids, "source_file": "annotation.json",
            })
    reports.sort(key=_report_number)
    images = _image_rows(bundle, _with_bundle_prefix(bundle, wanted), skipped, limits)
    return _assemble(reports, images, {}, skipped)


def _with_bundle_prefix(bundle: Path, wanted: dict[str, str]) -> dict[str, str]:
    """Match member names whatever folder the bundle put the R2Gen tree under."""
    out = dict(wanted)
    with tarfile.open(bundle, "r:*") as tar:
        for name in tar.getnames():
            for suffix, image_id in wanted.items():
                if name.endswith("/" + suffix):
                    out[name] = image_id
    return out


VIEW_NOT_USED = "view not used (ViewPosition not PA, AP, LATERAL or LL)"
NO_IMAGE_FILE = "no image file (listed in the metadata)"
NO_REPORT = "no report for the study"
NOT_IN_METADATA = "study not in the metadata"


def _int_or_none(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _mimic_report(data: bytes, name: str, subject: str, study: str) -> dict:
    if not data.strip():
        raise Unusable("empty file", f"{len(data)} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unusable("encoding error", str(exc)) from None
    sections = mimic.parse_sections(text)
    return {"report_id": mimic.report_id(study), **{k.lower(): v for k, v in sections.items()},
            "mesh_major": [], "image_ids": [], "source_file": name, "subject_id": subject, "official_split": None}


def _official_splits(rows: list[dict], where: str) -> dict[str, str]:
    """{study_id: train | val | test} from the split table; BadInput naming it when a study's images are
    in two splits or a split is not train / validate / test."""
    out: dict[str, str] = {}
    for row in rows:
        study, value = str(row["study_id"]).strip(), str(row["split"]).strip().lower()
        split = mimic.SPLIT_NAMES.get(value)
        if split is None:
            raise BadInput(where, f"split {row['split']!r} (image {row['dicom_id']}) is not one of "
                                  f"{', '.join(mimic.SPLIT_NAMES)}")
        if out.setdefault(study, split) != split:
            raise BadInput(where, f"study s{study} has images in both '{out[study]}' and '{split}'")
    return out


def extract_mimic(raw_dir: Path, files: dict, skipped: Skipped, limits: dict, origin: dict | None = None):
    bundle = raw_dir / files["bundle"]
    manifest_path = raw_dir / files["manifest"]
    try:
        manifest = pd.read_parquet(manifest_path)
    except (OSError, ValueError) as exc:
        raise BadInput(manifest_path, f"unreadable image list ({exc}); run the download stage again") from None
    if not set(mimic.MANIFEST_COLUMNS) <= set(manifest.columns):
        raise BadInput(manifest_path, f"expected columns {', '.join(mimic.MANIFEST_COLUMNS)}")
    folder = (origin or {}).get("folder") or "."
    found = {row.dicom_id: (posixpath.normpath(posixpath.join(folder, row.path)), int(row.size))
             for row in manifest.itertuples(index=False)}

    tables: dict[str, tuple[str, list[dict]]] = {}
    reports: dict[str, dict] = {}
    problems = []
    for member, tar in _iter_tar_files(bundle, "reading MIMIC-CXR reports"):
        name = member.name
        table = mimic.table_name(name)
        if table:
            where = f"{bundle}:{name}"
            problem = _too_large(member, limits["max_table_bytes"], "max_table_bytes")
            if problem:
                raise BadInput(where, str(problem))
            tables[table] = (where, mimic.read_table(tar.extractfile(member).read(), where, table,
                                                     limits["max_table_bytes"]))
            continue
        match = mimic.REPORT_PATH.fullmatch(name)
        if not match:
            continue
        try:
            problem = _too_large(member, limits["max_xml_bytes"], "max_xml_bytes")
            if problem:
                raise problem
            row = _mimic_report(tar.extractfile(member).read(), name, match.group(2), match.group(3))
            reports[row["report_id"]] = row
        except Unusable as exc:
            problems.append((name, mimic.report_id(match.group(3)), exc))
    for table in (mimic.SPLIT_TABLE, mimic.METADATA_TABLE):
        if table not in tables:
            raise BadInput(bundle, f"MIMIC-CXR layout without {table}(.gz); run the download stage again")
    for name, report_id, exc in sorted(problems):
        skipped.add("report", f"report: {exc.reason}", file=f"{bundle.name}:{name}", id=report_id, detail=exc.detail)

    split_where, split_rows = tables[mimic.SPLIT_TABLE]
    splits = _official_splits(split_rows, split_where)
    labels = {mimic.report_id(str(row["study_id"]).strip()): mimic.chexpert_terms(row)
              for row in tables.get(mimic.CHEXPERT_TABLE, (None, []))[1]}
    by_study: dict[str, list[dict]] = {}
    for row in tables[mimic.METADATA_TABLE][1]:
        by_study.setdefault(mimic.report_id(str(row["study_id"]).strip()), []).append(row)

    image_rows = []
    for report_id in sorted(reports):
        report = reports[report_id]
        report["official_split"] = splits.get(report_id.removeprefix("s"))
        report["mesh_major"] = labels.get(report_id, [])
        listed = sorted(by_study.get(report_id, []), key=lambda r: (
            mimic.VIEW_RANK.get(str(r["ViewPosition"]).strip().upper(), len(mimic.VIEW_RANK)), r["dicom_id"]))
        if not listed:
            skipped.add("report", NOT_IN_METADATA, id=report_id, file=report["source_file"], warn=False)
        report["image_ids"] = [str(r["dicom_id"]).strip() for r in listed]
        for position, row in enumerate(listed):
            dicom, view = str(row["dicom_id"]).strip(), str(row["ViewPosition"] or "").strip()
            projection = mimic.projection(view)
            if projection is None:
                skipped.add("image", VIEW_NOT_USED, id=dicom, detail=f"ViewPosition {view!r}" if view else
                            "ViewPosition blank", warn=False)
                continue
            if dicom not in found:
                skipped.add("image", NO_IMAGE_FILE, id=dicom,
                            file=mimic.image_path(report["subject_id"], report_id[1:], dicom), warn=False)
                continue
            path, size = found[dicom]
            problem = None
            if size == 0:
                problem = "zero-byte image file"
            elif size > limits["max_image_bytes"]:
                problem = f"file too large ({size:,} bytes > extract.max_image_bytes = {limits['max_image_bytes']:,})"
            image_rows.append({
                "image_id": dicom, "report_id": report_id, "position": position, "projection": projection,
                "projection_source": "metadata", "width": _int_or_none(row.get("Columns")),
                "height": _int_or_none(row.get("Rows")), "archive": None, "member": path, "problem": problem,
                "size": size,
            })
    for study in sorted(set(by_study) - set(reports)):
        skipped.add("study", NO_REPORT, id=study, detail=f"{len(by_study[study])} image(s) in the metadata", warn=False)
    for reason in (VIEW_NOT_USED, NO_IMAGE_FILE, NO_REPORT, NOT_IN_METADATA):
        skipped.summarise(reason)

    reports_df = pd.DataFrame([reports[k] for k in sorted(reports)], columns=MIMIC_REPORT_COLUMNS)
    images_df = pd.DataFrame(image_rows, columns=MIMIC_IMAGE_COLUMNS)
    for column in ("width", "height"):
        images_df[column] = images_df[column].astype("Int64")
    images_df["position"] = images_df["position"].astype("int64")
    images_df["size"] = images_df["size"].astype("int64")
    images_df["archive"] = images_df["archive"].astype(object)
    return reports_df, images_df


LAYOUTS = {"nlmcxr": extract_nlmcxr, "kaggle": extract_kaggle, "r2gen": extract_r2gen, "mimic": extract_mimic}


def extract(raw_dir: str | Path, settings: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Skipped, dict]:
    """settings: params.yaml `extract` (see extract_settings); None → the defaults."""
    raw_dir = Path(raw_dir)
    limits = {key: (settings or EXTRACT_DEFAULTS)[key] for key in LIMIT_KEYS}
    record_path = raw_dir / "source.json"
    record = read_json(record_path, "missing: run the download stage first")
    layout = record.get("layout")
    if layout not in LAYOUTS:
        raise BadInput(record_path, f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    skipped = Skipped()
    extra = {"origin": record.get("from")} if layout == "mimic" else {}
    reports, images = LAYOUTS[layout](raw_dir, record["files"], skipped, limits, **extra)
    return reports, images, skipped, record


def projection_accuracy(images: pd.DataFrame, truth: dict[str, str]) -> dict:
    """How often the order rule is right, on the images whose true projection is known.

    Measured on every image with a known projection, also where the projection is taken from a
    projections file rather than inferred, so a Kaggle user learns how far the rule can be trusted.
    """
    rule = images.assign(rule=images["position"].map(lambda p: FRONTAL if p == 0 else LATERAL))
    known = rule[rule["image_id"].isin(truth)]
    if known.empty:
        return {"images_checked": 0, "accuracy": None}
    right = (known["rule"] == known["image_id"].map(truth)).sum()
    return {"images_checked": int(len(known)), "accuracy": round(float(right / len(known)), 4)}


def projection_truth(raw_dir: Path, record: dict, images: pd.DataFrame,
                     reference: str | None) -> tuple[dict[str, str], str | None]:
    """The true projections to measure the order rule against, and what they came from.

    In order: a projections CSV the user names (params extract.projections_reference), the
    synthetic generator's ground truth, the projections file of a Kaggle-layout source.
    """
    if reference:
        path = Path(reference)
        if not path.is_file():
            raise BadInput(path, "extract.projections_reference: file not found")
        return read_projections_csv(path.read_text(encoding="utf-8"), str(path)), f"file {path.name}"
    if record.get("truth"):
        path = raw_dir / record["truth"]
        try:
            truth = json.loads(path.read_text())["images"]
        except (OSError, ValueError, KeyError) as exc:
            raise BadInput(path, f"unreadable synthetic ground truth ({exc})") from None
        return {image_id: info["projection"] for image_id, info in truth.items()}, "synthetic ground truth"
    known = images[images["projection_source"] == "projections_file"]
    if not known.empty:
        return dict(zip(known["image_id"], known["projection"])), "Kaggle indiana_projections.csv"
    return {}, None
