"""MIMIC-CXR-JPG as a source layout: its file names, paths, views, splits and report sections.

What a user downloads with PhysioNet credentials (MIMIC-CXR-JPG 2.x, reports from MIMIC-CXR):

  files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg     the images (XX = the subject id's first two digits)
  files/pXX/pSUBJECT/sSTUDY.txt                the free-text reports, or the same paths as members
                                               of mimic-cxr-reports.zip
  mimic-cxr-2.0.0-split.csv(.gz)               dicom_id, study_id, subject_id, split
                                               (train / validate / test; patients never cross splits)
  mimic-cxr-2.0.0-metadata.csv(.gz)            dicom_id, subject_id, study_id, ViewPosition, Rows,
                                               Columns, ...
  mimic-cxr-2.0.0-chexpert.csv(.gz)            optional: the 14 CheXpert labels per study, the
                                               reference labels (see CHEXPERT_INDEX_TERMS); without
                                               it the floors stage's label oracle has no truth
  annotation.json                              optional: R2Gen's MIMIC split and cleaned reports

The download stage (sources/local.py) packs the tables and reports into data/raw/mimic_tables.tar and
lists the images it found in data/raw/mimic_images.parquet (MANIFEST_COLUMNS); the images themselves
stay where they are (about 570 GB) and prepare reads them there.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path

from cxrgen.errors import BadInput

SPLIT_TABLE = "mimic-cxr-2.0.0-split.csv"
METADATA_TABLE = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_TABLE = "mimic-cxr-2.0.0-chexpert.csv"
TABLES = (SPLIT_TABLE, METADATA_TABLE, CHEXPERT_TABLE)
TABLE_SUFFIXES = (".csv.gz", ".csv")
REPORTS_ZIP = "mimic-cxr-reports.zip"
ANNOTATION = "annotation.json"
FILES_FOLDER = "files"

TABLES_BUNDLE = "mimic_tables.tar"      # in data/raw: the tables, every report, annotation.json
IMAGES_MANIFEST = "mimic_images.parquet"  # in data/raw: the JPGs found, with their sizes
MANIFEST_COLUMNS = ["dicom_id", "study_id", "subject_id", "path", "size"]

COLUMNS = {
    SPLIT_TABLE: ("dicom_id", "study_id", "subject_id", "split"),
    METADATA_TABLE: ("dicom_id", "subject_id", "study_id", "ViewPosition"),
    CHEXPERT_TABLE: ("subject_id", "study_id"),
}

REPORT_PATH = re.compile(r"files/p(\d\d)/p(\d+)/s(\d+)\.txt")
IMAGE_PATH = re.compile(r"files/p(\d\d)/p(\d+)/s(\d+)/([^/]+)\.jpg")
GROUP_FOLDER = re.compile(r"p\d\d")
SUBJECT_FOLDER = re.compile(r"p\d+")
STUDY_FOLDER = re.compile(r"s\d+")
STUDY_REPORT = re.compile(r"s\d+\.txt")

FRONTAL, LATERAL = "frontal", "lateral"
# ViewPosition -> projection; the order is the preference within a study (PA before AP, ...).
VIEWS = {"PA": FRONTAL, "AP": FRONTAL, "LATERAL": LATERAL, "LL": LATERAL}
VIEW_RANK = {view: rank for rank, view in enumerate(VIEWS)}
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}

# The 14 CheXpert observations of mimic-cxr-2.0.0-chexpert.csv, as the index terms the pipeline reads
# reference labels from (reports' `mesh_major`, mapped by labeler.mesh_observations): each term maps
# back to exactly its observation. MIMIC-CXR has no MeSH indexing; its chexpert table is the reference
# the literature scores against, so extract writes a study's positive (1.0) observations this way.
CHEXPERT_INDEX_TERMS = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Enlarged Cardiomediastinum": "Mediastinum/enlarged",
    "Fracture": "Fractures, Bone",
    "Lung Lesion": "Mass/lung",
    "Lung Opacity": "Opacity/lung",
    "No Finding": "normal",
    "Pleural Effusion": "Pleural Effusion",
    "Pleural Other": "Pleura",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Support Devices": "Medical Device",
}

REPORT_SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
# A heading: at the start of a line, words of letters (and a few signs), then a colon.
_HEADING = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/&,'-]{0,48}?)[ \t]*:", re.MULTILINE)


def report_id(study_id: str | int) -> str:
    return f"s{study_id}"


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """Where MIMIC-CXR-JPG keeps an image, relative to the folder holding files/."""
    return f"{FILES_FOLDER}/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def report_path(subject_id: str, study_id: str) -> str:
    return f"{FILES_FOLDER}/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def table_name(name: str) -> str | None:
    """The table a file name is (SPLIT_TABLE, ...), whether gzipped or not; None for any other file."""
    for table in TABLES:
        if name in (table, table + ".gz"):
            return table
    return None


def find_table(folder: Path, table: str) -> Path | None:
    for suffix in TABLE_SUFFIXES:
        path = folder / (table.removesuffix(".csv") + suffix)
        if path.is_file():
            return path
    return None


def read_table(data: bytes, where: str | Path, table: str, limit: int | None = None) -> list[dict]:
    """A MIMIC CSV (gzipped or not: told by its first bytes) → rows; BadInput naming `where` when it is
    not readable or lacks the columns the pipeline reads. `limit` bounds the decompressed size."""
    try:
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                data = f.read(limit + 1) if limit else f.read()
        if limit and len(data) > limit:
            raise BadInput(where, f"more than {limit:,} bytes once decompressed (extract.max_table_bytes)")
        text = data.decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(where, f"not a readable CSV file, plain or gzipped ({exc})") from None
    absent = [c for c in COLUMNS[table] if c not in columns]
    if absent:
        raise BadInput(where, f"not the MIMIC-CXR table {table}: no column(s) {', '.join(absent)} "
                              f"(found: {', '.join(columns) or 'none'})")
    return rows


def chexpert_terms(row: dict) -> list[str]:
    """A chexpert table row → the index terms of its positive (1.0) observations; uncertain (-1.0),
    negative (0.0) and blank are not positive."""
    terms = []
    for observation, term in CHEXPERT_INDEX_TERMS.items():
        try:
            if float(row.get(observation) or "nan") == 1.0:
                terms.append(term)
        except ValueError:
            continue
    return terms


def projection(view_position: str | None) -> str | None:
    """PA / AP → frontal, LATERAL / LL → lateral, anything else (blank, LAO, SWIMMERS, ...) → None."""
    return VIEWS.get((view_position or "").strip().upper())


def parse_sections(text: str) -> dict[str, str | None]:
    """COMPARISON / INDICATION / FINDINGS / IMPRESSION of a free-text MIMIC-CXR report.

    A section starts at its heading ("FINDINGS:", any case, at the start of a line) and runs to the
    next ALL-CAPS heading ("IMPRESSION:", "RECOMMENDATION(S):", "NOTIFICATION:", ...) or the end.
    Its text is whitespace-normalised; a section that is absent or empty is None. When a heading
    occurs twice, the first non-empty text is kept.
    """
    headings = [(m.start(), m.end(), m.group(1).strip()) for m in _HEADING.finditer(text)]
    out: dict[str, str | None] = {name: None for name in REPORT_SECTIONS}
    for index, (_, end, name) in enumerate(headings):
        label = " ".join(name.split()).upper()
        if label not in out or out[label] is not None:
            continue
        stop = len(text)
        for start, _, other in headings[index + 1:]:
            if other == other.upper():  # the next ALL-CAPS heading ends the section
                stop = start
                break
        out[label] = " ".join(text[end:stop].split()) or None
    return out


def images_root(path_value, where: str = "params.yaml") -> Path:
    """The folder download.local.path names (a file means its folder), resolved, as the local source
    reads it; BadInput when it is not set or gone."""
    if path_value is None or not str(path_value).strip():
        raise BadInput(where, "download.local.path is not set: the MIMIC-CXR images are read where they "
                              "are, in the folder the download stage packed the tables from")
    path = Path(str(path_value)).expanduser()
    if not path.exists():
        raise BadInput(path, "does not exist (download.local.path): the MIMIC-CXR images are read there")
    return (path if path.is_dir() else path.parent).resolve()
