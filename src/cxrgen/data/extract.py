"""The `extract` stage: whatever `download` put in data/raw → two tables.

- reports.parquet: one row per report (report_id = the XML `uId`, e.g. "CXR1"), the four sections
  raw (null when missing or empty), MeSH major terms, parentImage ids in XML order, source file.
- images.parquet: one row per image: image_id, report_id, projection (frontal / lateral),
  projection_source (where that came from), width, height, and where the bytes are (archive file in
  data/raw + member name), plus `problem` when the PNG header is unreadable.

The NLM XML gives no projection. The Kaggle export's projections file does; otherwise the order
rule infers it (first image of a study frontal, the others lateral), and its accuracy is measured
against whatever truth exists (synthetic ground truth, a Kaggle projections file) — see
`projection_accuracy`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from lxml import etree
from tqdm import tqdm

from cxrgen.errors import BadInput
from cxrgen.files import read_json

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
REPORT_COLUMNS = ["report_id", *[s.lower() for s in SECTIONS], "mesh_major", "image_ids", "source_file"]
IMAGE_COLUMNS = [
    "image_id", "report_id", "position", "projection", "projection_source",
    "width", "height", "archive", "member", "problem",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FRONTAL, LATERAL = "frontal", "lateral"


@dataclass
class Skipped:
    """Inputs left out, each with a named reason, counted for metrics/data.json."""

    items: list[dict] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.items.append({"where": where, "reason": reason})
        print(f"extract: warning: skipped {where}: {reason}", file=sys.stderr)

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


def parse_report_xml(data: bytes, source_file: str) -> dict:
    """One ecgen-radiology XML file (original or reconstructed layout) → a report row.

    Raises ValueError with the reason when the file is not a usable report.
    """
    try:
        root = etree.fromstring(data, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"malformed XML ({exc})") from None
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError("no <uId id=...> element")
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
    """Width and height from a PNG's first 24 bytes; ValueError when it is not a PNG."""
    if len(header) == 0:
        raise ValueError("zero-byte image file")
    if len(header) < 24 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        raise ValueError("not a PNG file (bad signature or header)")
    return struct.unpack(">II", header[16:24])


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


def _read_nlmcxr_reports(archive: Path, skipped: Skipped) -> list[dict]:
    found = []
    for member, tar in _iter_tar_files(archive, "reading reports"):
        if member.name.lower().endswith(".xml") and "ecgen-radiology/" in f"/{member.name}":
            found.append((member.name, tar.extractfile(member).read()))
    rows = []
    for name, data in sorted(found, key=lambda item: _xml_number(item[0])):
        try:
            rows.append(parse_report_xml(data, PurePosixPath(name).name))
        except ValueError as exc:
            skipped.add(f"{archive.name}:{name}", f"report: {str(exc).split(' (')[0]}")
    return rows


def _image_rows(archive: Path, wanted: dict[str, str], skipped: Skipped) -> dict[str, dict]:
    """Scan an archive for PNGs; `wanted` maps member-name keys (see callers) to image ids."""
    rows = {}
    for member, tar in _iter_tar_files(archive, "reading image headers"):
        image_id = wanted.get(member.name) or wanted.get(PurePosixPath(member.name).name)
        if image_id is None:
            continue
        row = {"image_id": image_id, "archive": archive.name, "member": member.name,
               "width": None, "height": None, "problem": None}
        try:
            row["width"], row["height"] = png_size(tar.extractfile(member).read(24))
        except ValueError as exc:
            row["problem"] = str(exc)
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
                skipped.add(image_id, "image: id listed in report but no file")
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


def extract_nlmcxr(raw_dir: Path, files: dict, skipped: Skipped):
    reports = _read_nlmcxr_reports(raw_dir / files["reports"], skipped)
    wanted = {f"{image_id}.png": image_id for r in reports for image_id in r["image_ids"]}
    images = _image_rows(raw_dir / files["images"], wanted, skipped)
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


def _members_by_name(bundle: Path) -> dict[str, bytes]:
    """Small text members (CSV / JSON) of a bundle tar, by base name."""
    out = {}
    for member, tar in _iter_tar_files(bundle, "reading tables"):
        if member.name.lower().endswith((".csv", ".json")):
            out[PurePosixPath(member.name).name] = tar.extractfile(member).read()
    return out


def extract_kaggle(raw_dir: Path, files: dict, skipped: Skipped):
    bundle = raw_dir / files["bundle"]
    tables = _members_by_name(bundle)
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
    images = _image_rows(bundle, wanted, skipped)
    return _assemble(reports, images, projections, skipped)


def extract_r2gen(raw_dir: Path, files: dict, skipped: Skipped):
    bundle = raw_dir / files["bundle"]
    tables = _members_by_name(bundle)
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
    images = _image_rows(bundle, _with_bundle_prefix(bundle, wanted), skipped)
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


LAYOUTS = {"nlmcxr": extract_nlmcxr, "kaggle": extract_kaggle, "r2gen": extract_r2gen}


def extract(raw_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, Skipped, dict]:
    raw_dir = Path(raw_dir)
    record_path = raw_dir / "source.json"
    record = read_json(record_path, "missing: run the download stage first")
    layout = record.get("layout")
    if layout not in LAYOUTS:
        raise BadInput(record_path, f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    skipped = Skipped()
    reports, images = LAYOUTS[layout](raw_dir, record["files"], skipped)
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
