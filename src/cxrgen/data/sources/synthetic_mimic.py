"""A small synthetic stand-in for MIMIC-CXR-JPG, in its layout, for tests and for trying the pipeline.

`generate(out_dir, n_patients, seed)` writes what a credentialed user downloads from PhysioNet
(see cxrgen.data.mimic), made up:

  files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg   8-bit grayscale JPEGs drawn by synthetic_images
  files/pXX/pSUBJECT/sSTUDY.txt              the reports (or, with reports="zip", the same paths
                                             inside mimic-cxr-reports.zip and no .txt files)
  mimic-cxr-2.0.0-split.csv.gz               per image: dicom_id, study_id, subject_id, split
                                             (train / validate / test, by patient)
  mimic-cxr-2.0.0-metadata.csv.gz            per image: ViewPosition, Rows, Columns, ... as the real one
  mimic-cxr-2.0.0-chexpert.csv.gz            per study: the 14 CheXpert labels the report is written
                                             to make positive (1.0; others blank)

Each patient has 1-3 studies; a study's findings are drawn by synthetic_reports and its images
(synthetic_images) show them. Most studies are PA + LATERAL; some are AP + LATERAL, PA + LL, AP only
(a portable film), lateral only, or have an extra view whose ViewPosition is blank or another
(LAO, SWIMMERS), which the pipeline does not use. Reports read like MIMIC's: "FINAL REPORT",
EXAMINATION:, INDICATION:, TECHNIQUE:, COMPARISON:, FINDINGS:, IMPRESSION:, sometimes a
NOTIFICATION: after the impression; some have no FINDINGS (everything in the IMPRESSION), and
de-identified words are "___". With 10 patients or more each of these cases occurs at least once.

The same seed gives the same bytes (no times or names in the gzip, zip and JPEG files).

From the shell:  python -m cxrgen.data.sources.synthetic_mimic OUT_DIR --patients 40 [--seed 0]
                 [--image-width 256] [--reports txt|zip] [--wording varied|fixed]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import sys
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxrgen.data.sources import synthetic_images, synthetic_reports

SPLIT_TABLE = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_TABLE = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_TABLE = "mimic-cxr-2.0.0-chexpert.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
DEFAULTS = {"n_patients": 20, "seed": 0, "image_width": 256, "reports": "txt", "wording": "varied"}
REPORT_FORMS = ("txt", "zip")

STUDIES_PER_PATIENT = {1: 0.4, 2: 0.35, 3: 0.25}
# The views of a study (ViewPosition values, "" = blank) and how often each set occurs.
VIEW_SETS = {
    ("PA", "LATERAL"): 0.62,
    ("AP", "LATERAL"): 0.08,
    ("PA", "LL"): 0.06,
    ("AP",): 0.10,
    ("LATERAL",): 0.03,
    ("PA", "LATERAL", ""): 0.06,
    ("PA", "LATERAL", "LAO"): 0.03,
    ("AP", "LATERAL", "SWIMMERS"): 0.02,
}
DRAWN_AS = {"PA": "frontal", "AP": "frontal", "LATERAL": "lateral", "LL": "lateral", "LAO": "frontal",
            "SWIMMERS": "lateral", "": "frontal"}
SPLIT_FRACTIONS = {"train": 0.7, "validate": 0.15, "test": 0.15}
P_NO_FINDINGS = 0.12
P_NOTIFICATION = 0.10
ASPECT_RANGE = (1.0, 1.25)  # height / width (MIMIC's films are mostly portrait)
JPEG_QUALITY = 90
CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
                    "Pneumonia", "Pneumothorax", "Support Devices")
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
                "LAO": "left anterior oblique", "SWIMMERS": "Swimmer's", "": ""}
NOTIFICATIONS = (
    "The findings were discussed with Dr. ___ by telephone at ___ on the day of the study.",
    "Findings were communicated to the referring team by ___ at ___.",
)
# Distinct first keys keep the plan, each study's geometry and each image's drawing independent.
PLAN_KEY, STUDY_KEY, IMAGE_KEY = 11, 12, 13


@dataclass
class View:
    dicom_id: str
    view: str
    width: int
    height: int


@dataclass
class Study:
    subject_id: str
    study_id: str
    split: str
    findings: list[dict]
    sections: dict[str, str | None]
    notification: str | None
    images: list[View] = field(default_factory=list)


def _seed(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, *key])


def _ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    return [str(int(i)) for i in rng.choice(np.arange(low, high), size=n, replace=False)]


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5))


def _patient_splits(rng: np.random.Generator, n: int) -> list[str]:
    """Whole patients to train / validate / test in the fractions, each split non-empty from 3 patients."""
    sizes = {name: int(round(n * share)) for name, share in SPLIT_FRACTIONS.items()}
    if n >= 3:
        for name in ("validate", "test"):
            sizes[name] = max(1, sizes[name])
    sizes["train"] = n - sizes["validate"] - sizes["test"]
    names = [name for name in SPLIT_FRACTIONS for _ in range(sizes[name])]
    return [names[i] for i in rng.permutation(n)]


def _choose(rng: np.random.Generator, weighted: dict):
    keys = list(weighted)
    p = np.array(list(weighted.values()), dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


# Each awkward case: how to recognise it, and the (views, no FINDINGS) that makes it.
AWKWARD_CASES = {
    "AP only": (lambda views, drop: views == ("AP",), (("AP",), False)),
    "blank extra view": (lambda views, drop: "" in views, (("PA", "LATERAL", ""), False)),
    "other extra view": (lambda views, drop: "LAO" in views or "SWIMMERS" in views, (("PA", "LATERAL", "LAO"), False)),
    "LL lateral": (lambda views, drop: "LL" in views, (("PA", "LL"), False)),
    "no FINDINGS": (lambda views, drop: drop, (("PA", "LATERAL"), True)),
}


def plan(n_patients: int, seed: int, image_width: int, wording: str = "varied") -> list[Study]:
    rng = np.random.default_rng(_seed(seed, PLAN_KEY))
    subjects = sorted(_ids(rng, n_patients, 10_000_000, 20_000_000))
    splits = _patient_splits(rng, n_patients)
    counts = [_choose(rng, STUDIES_PER_PATIENT) for _ in subjects]
    study_ids = _ids(rng, sum(counts), 50_000_000, 60_000_000)
    views = [_choose(rng, VIEW_SETS) for _ in study_ids]
    drops = [bool(u < P_NO_FINDINGS) for u in rng.random(len(study_ids))]
    if n_patients >= 10:
        plain = [i for i in map(int, rng.permutation(len(views))) if views[i] == ("PA", "LATERAL") and not drops[i]]
        for present, (view_set, drop) in AWKWARD_CASES.values():
            if not any(present(v, d) for v, d in zip(views, drops)):
                index = plain.pop()
                views[index], drops[index] = view_set, drop
    studies, k = [], 0
    for subject, split, count in zip(subjects, splits, counts):
        for _ in range(count):
            findings = synthetic_reports.sample_findings(rng)
            drop = "FINDINGS" if drops[k] else ""
            # The varied words are always drawn, so the random stream (every later id and image) is the
            # same whatever the wording; fixed wording then replaces them.
            text = synthetic_reports.write_report(findings, rng, drop=drop)
            if wording != "varied":
                text = synthetic_reports.write_report(findings, rng, drop=drop, wording=wording)
            notification = None
            if rng.random() < P_NOTIFICATION:
                notification = NOTIFICATIONS[int(rng.integers(len(NOTIFICATIONS)))]
            study = Study(subject, study_ids[k], split, findings, text.sections, notification)
            for view in views[k]:
                height = int(round(image_width * rng.uniform(*ASPECT_RANGE)))
                study.images.append(View(_dicom_id(rng), view, image_width, height))
            studies.append(study)
            k += 1
    return studies


def _mimic_words(text: str) -> str:
    """De-identified words as MIMIC writes them ("___" where IU writes "XXXX")."""
    return text.replace("XXXX", "___")


def report_text(study: Study) -> str:
    """The free-text report, laid out as MIMIC-CXR's: a title, then headed sections."""
    def para(text: str) -> str:
        return textwrap.fill(_mimic_words(text), width=78, initial_indent=" ", subsequent_indent=" ")

    frontal = next((i.view for i in study.images if i.view in ("PA", "AP")), "PA")
    lateral = any(i.view in ("LATERAL", "LL") for i in study.images)
    exam = "CHEST (PA AND LAT)" if frontal == "PA" and lateral else (
        "CHEST (PORTABLE AP)" if not lateral else "CHEST (AP AND LAT)")
    s = study.sections
    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", ""]
    if s["INDICATION"]:
        lines += [f" INDICATION:  {_mimic_words(s['INDICATION'])}", ""]
    lines += [f" TECHNIQUE:  Chest {'PA and lateral' if lateral else 'portable AP'}", ""]
    lines += [f" COMPARISON:  {_mimic_words(s['COMPARISON'] or 'None.')}", ""]
    if s["FINDINGS"]:
        lines += [" FINDINGS:", "", para(s["FINDINGS"]), ""]
    if s["IMPRESSION"]:
        lines += [" IMPRESSION:", "", para(s["IMPRESSION"]), ""]
    if study.notification:
        lines += [f" NOTIFICATION:  {study.notification}", ""]
    return "\n".join(lines) + "\n"


def draw_jpeg(seed: int, study_index: int, image_index: int, study: Study, image: View) -> bytes:
    geometry = synthetic_images.sample_study(study.findings, np.random.default_rng(_seed(seed, STUDY_KEY, study_index)))
    rng = np.random.default_rng(_seed(seed, IMAGE_KEY, study_index, image_index))
    pixels = synthetic_images.render(DRAWN_AS[image.view], geometry, image.width, image.height, rng)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _csv_gz(header, rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return gzip.compress(text.getvalue().encode("utf-8"), compresslevel=6, mtime=0)


def _tables(studies: list[Study]) -> dict[str, bytes]:
    split_rows, metadata_rows, chexpert_rows = [], [], []
    for number, study in enumerate(studies):
        date = f"21{(number % 80) + 10:02d}0{(number % 9) + 1}15"
        for image in study.images:
            split_rows.append((image.dicom_id, study.study_id, study.subject_id, study.split))
            view = image.view
            metadata_rows.append((
                image.dicom_id, study.subject_id, study.study_id,
                "CHEST (PA AND LAT)" if view != "AP" else "CHEST (PORTABLE AP)", view, image.height, image.width,
                date, f"{(number * 7919) % 240000:06d}.000", "CHEST (PA AND LAT)", VIEW_MEANING[view],
                "Erect" if view != "AP" else "Recumbent"))
        positive = set(synthetic_reports.chexpert_positive(study.findings))
        chexpert_rows.append((study.subject_id, study.study_id,
                              *("1.0" if name in positive else "" for name in CHEXPERT_COLUMNS)))
    return {
        SPLIT_TABLE: _csv_gz(("dicom_id", "study_id", "subject_id", "split"),
                             sorted(split_rows, key=lambda r: (r[2], r[1], r[0]))),
        METADATA_TABLE: _csv_gz(METADATA_COLUMNS, sorted(metadata_rows, key=lambda r: (r[1], r[2], r[0]))),
        CHEXPERT_TABLE: _csv_gz(("subject_id", "study_id", *CHEXPERT_COLUMNS), sorted(chexpert_rows)),
    }


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return out.getvalue()


def _check(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def generate(out_dir: str | Path, n_patients: int = DEFAULTS["n_patients"], seed: int = DEFAULTS["seed"],
             image_width: int = DEFAULTS["image_width"], reports: str = DEFAULTS["reports"],
             wording: str = DEFAULTS["wording"], progress: bool = True) -> dict:
    """Write the collection into out_dir (made if needed); returns what was written, counted."""
    _check("n_patients", n_patients, 1, 100_000)
    _check("seed", seed, 0, 2**63 - 1)
    _check("image_width", image_width, 64, 4096)
    if reports not in REPORT_FORMS:
        raise ValueError(f"reports must be one of {REPORT_FORMS}, got {reports!r}")
    if wording not in synthetic_reports.WORDINGS:
        raise ValueError(f"wording must be one of {synthetic_reports.WORDINGS}, got {wording!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    studies = plan(n_patients, seed, image_width, wording)
    texts = {}
    for index, study in enumerate(tqdm(studies, desc="synthetic MIMIC-CXR studies", unit=" studies",
                                       file=sys.stderr, disable=not progress, dynamic_ncols=True)):
        folder = out / "files" / f"p{study.subject_id[:2]}" / f"p{study.subject_id}"
        (folder / f"s{study.study_id}").mkdir(parents=True, exist_ok=True)
        for image_index, image in enumerate(study.images):
            (folder / f"s{study.study_id}" / f"{image.dicom_id}.jpg").write_bytes(
                draw_jpeg(seed, index, image_index, study, image))
        texts[f"files/p{study.subject_id[:2]}/p{study.subject_id}/s{study.study_id}.txt"] = report_text(study)
    if reports == "zip":
        (out / REPORTS_ZIP).write_bytes(_zip({name: text.encode("utf-8") for name, text in texts.items()}))
    else:
        for name, text in texts.items():
            (out / name).write_text(text, encoding="utf-8")
    for name, data in _tables(studies).items():
        (out / name).write_bytes(data)
    return {
        "patients": n_patients,
        "studies": len(studies),
        "images": sum(len(s.images) for s in studies),
        "splits": {name: sum(s.split == name for s in studies) for name in SPLIT_FRACTIONS},
        "seed": seed,
        "reports": reports,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cxrgen.data.sources.synthetic_mimic",
        description="Write a small synthetic MIMIC-CXR-JPG collection (its folder layout and tables) into "
                    "OUT_DIR; point download.local.path at it.")
    parser.add_argument("out_dir")
    parser.add_argument("--patients", type=int, default=DEFAULTS["n_patients"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--image-width", type=int, default=DEFAULTS["image_width"])
    parser.add_argument("--reports", choices=REPORT_FORMS, default=DEFAULTS["reports"],
                        help="txt: files/.../sSTUDY.txt beside the images; zip: mimic-cxr-reports.zip")
    parser.add_argument("--wording", choices=synthetic_reports.WORDINGS, default=DEFAULTS["wording"])
    args = parser.parse_args(argv)
    try:
        made = generate(args.out_dir, args.patients, args.seed, args.image_width, args.reports, args.wording)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {made['patients']} patients, {made['studies']} studies, {made['images']} images "
          f"(splits by study: {made['splits']}) into {args.out_dir}")


if __name__ == "__main__":
    main()
