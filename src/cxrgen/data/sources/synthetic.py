"""Source `synthetic`: a generated stand-in for the IU X-ray archives, with ground truth.

`generate` writes, for a seed, byte-identical archives in the original NLMCXR layout:

  NLMCXR_reports.tgz   ecgen-radiology/<n>.xml in the full original XML layout (eCitation, meta,
                       uId, MedlineCitation/Article/Abstract with the four AbstractText sections,
                       MeSH major/automatic, parentImage with figureId, caption, panel/url)
  NLMCXR_png.tgz       <parentImage id>.png at the top level: 8-bit grayscale, `image_width` wide,
                       heights varying 0.82-1.22 x the width (420-624 px at 512)
  synthetic_truth.json what the real archives lack: each report's findings (side, zone, severity)
                       and each image's projection (frontal / lateral)

Proportions follow the real collection: numbering 1..N with a few numbers missing; images per
report 0 / 1 / 2 / 3 / 4 / 5 for 2.6 / 11.3 / 81.1 / 4.6 / 0.4 / 0.03 %; about 12 % without
FINDINGS and 3 % without IMPRESSION; `XXXX` de-identification tokens; MeSH `normal` or
`Term/modifier/...`. About 40 % of studies are normal, the rest have 1-3 findings.

Ids follow the real pattern `CXR<n>_IM-<4 digits>-1001`, `-2001`, ... (a few `CXR<n>_1_IM-...` and
`...-1001-0001` variants). 1001 is usually the frontal and 2001 the lateral, but about 10 % of
studies have them the other way round, single-image studies are frontal or lateral, and extra
images add another frontal or lateral: only the truth file says which is which.

What the images show (every image shows what its report says; frontal = PA, the patient's left on
the image right; lateral = patient facing image left, spine on the right):

  normal              body soft tissue, dark lungs with vessel markings radiating from the hila,
                      mediastinum with aortic knob, heart (cardiothoracic ratio 0.39-0.47), spine,
                      ribs, clavicles, diaphragm domes with sharp costophrenic angles, abdomen with
                      gas, random patient size/position/rotation/exposure and noise
  cardiomegaly        wider heart shadow: frontal cardiothoracic ratio 0.55-0.58 (mild), 0.59-0.64
                      (moderate), 0.65-0.71 (severe); in the lateral a bigger heart that reaches
                      back towards the spine
  pleural effusion    fluid whiting out the costophrenic angle of the stated side (both for
                      bilateral) up to a meniscus rising along the chest wall; small blunts the
                      angle, large reaches about half way up the wall; lateral: fluid filling the
                      posterior sulcus
  opacity             a soft, mottled bright patch in the stated zone (upper/mid/lower) and side
                      (left mid/lower lesions sit beside the heart, not hidden behind it)
  consolidation       a dense, sharper, irregular bright patch in the stated zone and side
  atelectasis         a thin plate-like bright band just above the dome at the stated base(s)
  nodule              a small round sharp bright spot in the stated zone and side
  pneumothorax        at the stated apex a dark rim free of lung markings with a thin bright
                      pleural line (gap grows with severity); not drawn in the lateral
  edema               bilateral perihilar haze ("bat wings"), stronger for pulmonary edema;
                      interstitial edema adds reticular texture and Kerley B lines at the bases
  support devices     metal-bright: pacemaker box below the left clavicle with a lead into the
                      right ventricle; endotracheal tube down the midline; right central line
                      into the SVC; sternotomy wire loops down the midline (sternum in lateral)
  degenerative spine  osteophyte spurs and end-plate sclerosis at several levels, narrowed
                      discs; clearest on the lateral (anterior spurs)

synthetic_truth.json: {"format", "seed", "n_reports", "n_images", "image_width",
  "reports": {"CXR<n>": {"number", "normal", "findings": [{"finding": "pleural_effusion", "side": "left",
              "severity": "small"}, ...], "chexpert_positive", "mesh_major", "sections": {label: present},
              "images": [ids]}},
  "images": {"<image id>": {"report": "CXR<n>", "projection": "frontal" | "lateral", "width", "height"}}}
Finding kinds and attributes: cardiomegaly (severity mild/moderate/severe), pleural_effusion (side
left/right/bilateral, severity small/moderate/large), opacity / consolidation / nodule (side, zone
upper/mid/lower), atelectasis (side left/right/bilateral, zone lower), pneumothorax (side, zone apical,
severity small/moderate/large), edema (kind interstitial/pulmonary), support_device (device pacemaker/
endotracheal_tube/central_line/sternotomy_wires), degenerative_spine (severity mild/moderate).
"chexpert_positive" lists the CheXpert observations the text is written to make positive (["No Finding"]
when none; degenerative spine maps to none).

cfg (params.yaml download.synthetic), all optional:
  n_reports: 3955    number of reports (the real collection has 3,955 with 7,470 images)
  seed: 0            the same seed gives byte-identical archives
  image_width: 512   PNG width in pixels (64..4096)
  workers: 0         drawing processes; 0 = one for small runs, else up to the CPU count
"""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import multiprocessing
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lxml import etree
from PIL import Image
from tqdm import tqdm

from cxrgen.data.archives import (
    IMAGES_ARCHIVE,
    REPORTS_ARCHIVE,
    REPORTS_FOLDER,
    check_archive,
    deterministic_tarinfo,
    write_sidecar,
)
from cxrgen.data.sources import synthetic_images, synthetic_reports
from cxrgen.errors import BadInput
from cxrgen.files import atomic_path, write_json_atomic

TRUTH_FILE = "synthetic_truth.json"
TRUTH_FORMAT = "cxrgen-synthetic-truth/1"
DEFAULTS = {"n_reports": 3955, "seed": 0, "image_width": 512, "workers": 0, "wording": "varied"}

# Real collection: 0/1/2/3/4/5 images for 104/446/3208/181/15/1 of 3,955 reports.
IMAGES_PER_REPORT = {0: 104, 1: 446, 2: 3208, 3: 181, 4: 15, 5: 1}
P_NUMBER_MISSING = 45 / 4000  # 3,955 reports numbered within 1..4000
P_SWAPPED_VIEWS = 0.10  # 1001 lateral and 2001 frontal
P_SINGLE_FRONTAL = 0.55
P_ID_UNDERSCORE = 0.03  # CXR<n>_1_IM-...
P_ID_SERIES = 0.25  # among 3+ image studies: ...-1001-0001, -1001-0002, ...
ASPECT_RANGE = (0.82, 1.22)  # height / width
P_SECTION_ELEMENT_ABSENT = 0.2  # a missing section: element left out (else present but empty)
PNG_COMPRESS_LEVEL = 3  # much faster than the default 6 for ~10 % more bytes
SMALL_RUN_IMAGES = 200  # below this, drawing in one process beats starting workers


@dataclass
class Study:
    number: int
    findings: list[dict]
    text: synthetic_reports.ReportText
    image_ids: list[str]
    projections: list[str]
    heights: list[int]
    section_element_absent: bool

    @property
    def uid(self) -> str:
        return f"CXR{self.number}"


def _seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, *key])


# Distinct first keys keep the plan, the study geometry and each image's drawing independent.
PLAN_KEY, STUDY_KEY, IMAGE_KEY = 1, 2, 3


# ----------------------------------------------------------------------------- the plan


def _report_numbers(rng: np.random.Generator, n_reports: int) -> list[int]:
    numbers, candidate = [], 0
    while len(numbers) < n_reports:
        candidate += 1
        if rng.random() >= P_NUMBER_MISSING:
            numbers.append(candidate)
    if n_reports >= 10 and numbers[-1] == n_reports:  # no gap drawn: make one, as in the real data
        numbers = numbers[:1] + [n + 1 for n in numbers[1:]]
    return numbers


def _projections(rng: np.random.Generator, n_images: int) -> list[str]:
    if n_images == 0:
        return []
    if n_images == 1:
        return ["frontal" if rng.random() < P_SINGLE_FRONTAL else "lateral"]
    pair = ["lateral", "frontal"] if rng.random() < P_SWAPPED_VIEWS else ["frontal", "lateral"]
    return pair + ["frontal" if rng.random() < 0.5 else "lateral" for _ in range(n_images - 2)]


def _image_ids(rng: np.random.Generator, number: int, series: int, n_images: int) -> list[str]:
    prefix = f"CXR{number}_1_IM-{series:04d}" if rng.random() < P_ID_UNDERSCORE else f"CXR{number}_IM-{series:04d}"
    if n_images >= 3 and rng.random() < P_ID_SERIES:
        return [f"{prefix}-1001-{k:04d}" for k in range(1, n_images + 1)]
    return [f"{prefix}-{k}001" for k in range(1, n_images + 1)]


# Each awkward case of the real data: how to recognise it, and the (images, dropped section) that makes it.
AWKWARD_CASES = {
    "no image": (lambda count, drop: count == 0, (0, "")),
    "one image": (lambda count, drop: count == 1, (1, "")),
    "three or more images": (lambda count, drop: count >= 3, (3, "")),
    "no FINDINGS": (lambda count, drop: drop == "FINDINGS", (2, "FINDINGS")),
    "no IMPRESSION": (lambda count, drop: drop == "IMPRESSION", (2, "IMPRESSION")),
}


def _force_awkward_cases(rng: np.random.Generator, n_images: list[int], drops: list[str]) -> None:
    """Make sure each awkward case occurs at least once (n >= 10), by changing plain studies."""
    if len(n_images) < 10:
        return
    plain = [int(i) for i in rng.permutation(len(n_images)) if n_images[i] == 2 and drops[i] == ""]
    for present, (count, drop) in AWKWARD_CASES.values():
        if not any(present(c, d) for c, d in zip(n_images, drops)):
            index = plain.pop()
            n_images[index], drops[index] = count, drop


def plan_studies(n_reports: int, seed: int, image_width: int, wording: str = "varied") -> list[Study]:
    """Every report's number, findings, text, image ids, projections and image heights.

    wording ("varied" or "fixed") changes only the words: the same seed gives the same findings,
    ids and images either way.
    """
    rng = np.random.default_rng(_seed_sequence(seed, PLAN_KEY))
    numbers = _report_numbers(rng, n_reports)
    counts = np.array(list(IMAGES_PER_REPORT.values()), dtype=float)
    n_images = [int(k) for k in rng.choice(list(IMAGES_PER_REPORT), size=n_reports, p=counts / counts.sum())]
    p_f, p_i = synthetic_reports.P_NO_FINDINGS_SECTION, synthetic_reports.P_NO_IMPRESSION_SECTION
    drops = [("FINDINGS" if u < p_f else "IMPRESSION" if u < p_f + p_i else "") for u in rng.random(n_reports)]
    _force_awkward_cases(rng, n_images, drops)
    series_pool = max(9999, 2 * n_reports)
    series = rng.choice(np.arange(1, series_pool + 1), size=n_reports, replace=False)

    studies = []
    for number, count, drop, series_number in zip(numbers, n_images, drops, series):
        findings = synthetic_reports.sample_findings(rng)
        # The varied words are always drawn, so that the plan's random stream (and with it every
        # later study, id and image) is the same whatever the wording; fixed wording then replaces them.
        text = synthetic_reports.write_report(findings, rng, drop=drop)
        if wording != "varied":
            text = synthetic_reports.write_report(findings, rng, drop=drop, wording=wording)
        heights = [int(round(image_width * rng.uniform(*ASPECT_RANGE))) for _ in range(count)]
        studies.append(Study(
            number=number,
            findings=findings,
            text=text,
            image_ids=_image_ids(rng, number, int(series_number), count),
            projections=_projections(rng, count),
            heights=heights,
            section_element_absent=bool(rng.random() < P_SECTION_ELEMENT_ABSENT),
        ))
    return studies


# ----------------------------------------------------------------------------- XML


def _sub(parent, tag: str, text: str | None = None, **attrs):
    element = etree.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def _date(parent, tag: str) -> None:
    date = _sub(parent, tag)
    _sub(date, "Year", "2013")
    _sub(date, "Month", "08")
    _sub(date, "Day", "01")


def report_xml(study: Study, seed: int) -> bytes:
    """The report in the original ecgen-radiology layout (utf-8, with XML declaration)."""
    root = etree.Element("eCitation")
    root.append(etree.Comment(
        f" SYNTHETIC report generated by cxrgen (seed {seed}); not patient data. "
        "It imitates the layout of the Indiana University chest X-ray collection. "))
    _sub(root, "meta", type="rr")
    _sub(root, "uId", id=study.uid)
    _sub(root, "pmcId", id=study.number)
    _sub(root, "docSource", "CXR")
    _sub(root, "IUXRId", id=study.number)
    _sub(root, "licenseType", "open-access")
    _sub(root, "licenseURL", "http://creativecommons.org/licenses/by-nc-nd/4.0/")
    _sub(root, "ccLicense", "byncnd")
    _sub(root, "articleURL")
    _sub(root, "articleDate", "2013-08-01")
    _sub(root, "articleType", "XR")
    _sub(root, "publisher", "Indiana University")
    _sub(root, "title", "Indiana University Chest X-ray Collection")
    _sub(root, "note", "Synthetic data generated by cxrgen.")
    _sub(root, "specialty", "pulmonary diseases")
    _sub(root, "subset", "CXR")
    citation = _sub(root, "MedlineCitation", Owner="Indiana University", Status="supplied by publisher")
    article = _sub(citation, "Article", PubModel="Electronic")
    journal = _sub(article, "Journal")
    issue = _sub(journal, "JournalIssue")
    _date(issue, "PubDate")
    _sub(article, "ArticleTitle", "Indiana University Chest X-ray Collection")
    abstract = _sub(article, "Abstract")
    for label, text in study.text.sections.items():
        if text is None and label in ("FINDINGS", "IMPRESSION") and study.section_element_absent:
            continue
        _sub(abstract, "AbstractText", text, Label=label)
    _sub(article, "Affiliation", "Indiana University")
    _sub(article, "Language", "eng")
    types = _sub(article, "PublicationTypeList")
    _sub(types, "PublicationType", "Radiology Report")
    _date(article, "ArticleDate")
    mesh = _sub(root, "MeSH")
    for term in study.text.mesh_major:
        _sub(mesh, "major", term)
    for term in study.text.mesh_automatic:
        _sub(mesh, "automatic", term)
    for index, image_id in enumerate(study.image_ids, start=1):
        parent = _sub(root, "parentImage", id=image_id)
        _sub(parent, "figureId", f"F{index}")
        _sub(parent, "caption", study.text.caption)
        panel = _sub(parent, "panel", type="single")
        _sub(panel, "url", f"/hadoop/storage/radiology/extract/{image_id}.jpg")
        _sub(panel, "imgModality", "7")
    etree.indent(root, space="   ")
    body = etree.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + body + b"\n"


# ----------------------------------------------------------------------------- images


def draw_png(job: tuple) -> bytes:
    """PNG bytes of one image; a plain function of its job so worker processes can run it."""
    seed, number, index, findings, projection, width, height = job
    study = synthetic_images.sample_study(findings, np.random.default_rng(_seed_sequence(seed, STUDY_KEY, number)))
    rng = np.random.default_rng(_seed_sequence(seed, IMAGE_KEY, number, index))
    pixels = synthetic_images.render(projection, study, width, height, rng)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


class _DeterministicTgz:
    """A .tgz whose bytes depend only on what is added: no times, owners or file names."""

    def __init__(self, path: Path, compresslevel: int):
        self._raw = open(path, "wb")
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=compresslevel)
        self.tar = tarfile.open(fileobj=self._gzip, mode="w", format=tarfile.USTAR_FORMAT)

    def add_folder(self, name: str) -> None:
        info = deterministic_tarinfo(name, 0, mode=0o755)
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)

    def add(self, name: str, data: bytes) -> None:
        self.tar.addfile(deterministic_tarinfo(name, len(data)), io.BytesIO(data))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.tar.close()
        self._gzip.close()
        self._raw.close()


def _worker_count(requested: int, n_images: int) -> int:
    if requested > 0:
        return requested
    if n_images < SMALL_RUN_IMAGES:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _write_images(path: Path, studies: list[Study], seed: int, width: int, workers: int, progress: bool) -> None:
    """Draw every image, in sorted member order, into the images archive; progress over reports."""
    jobs, owner = [], []
    for study in studies:
        for index, (image_id, projection, height) in enumerate(zip(study.image_ids, study.projections, study.heights)):
            jobs.append((f"{image_id}.png", (seed, study.number, index, study.findings, projection, width, height)))
            owner.append(study.number)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    remaining = {study.number: len(study.image_ids) for study in studies}
    bar = tqdm(total=len(studies), unit="report", desc="synthetic images", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    bar.update(sum(1 for n in remaining.values() if n == 0))
    n_workers = _worker_count(workers, len(jobs))
    executor = None
    try:
        if n_workers > 1:
            # spawn: safe whatever threads the parent runs; results come back in submission order.
            executor = concurrent.futures.ProcessPoolExecutor(
                n_workers, mp_context=multiprocessing.get_context("spawn"))
            pngs = executor.map(draw_png, [jobs[i][1] for i in order], chunksize=8)
        else:
            pngs = (draw_png(jobs[i][1]) for i in order)
        with _DeterministicTgz(path, compresslevel=1) as tgz:  # PNG data hardly compresses further
            for i, png in zip(order, pngs):
                tgz.add(jobs[i][0], png)
                remaining[owner[i]] -= 1
                if remaining[owner[i]] == 0:
                    bar.update(1)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        bar.close()


def _write_reports(path: Path, studies: list[Study], seed: int) -> None:
    members = sorted((f"{REPORTS_FOLDER}/{study.number}.xml", study) for study in studies)
    with _DeterministicTgz(path, compresslevel=6) as tgz:
        tgz.add_folder(REPORTS_FOLDER)
        for name, study in members:
            tgz.add(name, report_xml(study, seed))


def _truth(studies: list[Study], seed: int, width: int) -> dict:
    reports, images = {}, {}
    for study in studies:
        reports[study.uid] = {
            "number": study.number,
            "normal": not study.findings,
            "findings": study.findings,
            "chexpert_positive": synthetic_reports.chexpert_positive(study.findings),
            "mesh_major": study.text.mesh_major,
            "sections": {label: text is not None for label, text in study.text.sections.items()},
            "images": study.image_ids,
        }
        for image_id, projection, height in zip(study.image_ids, study.projections, study.heights):
            images[image_id] = {"report": study.uid, "projection": projection, "width": width, "height": height}
    return {
        "format": TRUTH_FORMAT,
        "seed": seed,
        "n_reports": len(studies),
        "n_images": len(images),
        "image_width": width,
        "reports": reports,
        "images": images,
    }


# ----------------------------------------------------------------------------- entry points


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInput("params.yaml", f"download.synthetic.{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def generate(out_dir: str | Path, n_reports: int, seed: int, image_width: int = 512,
             workers: int = 1, progress: bool = True, wording: str = "varied") -> dict:
    """Write the two archives (with sidecars) and synthetic_truth.json into out_dir; return the record."""
    n_reports = _check_int("n_reports", n_reports, 1, 100_000)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    image_width = _check_int("image_width", image_width, 64, 4096)
    workers = _check_int("workers", workers, 0, 256)
    if wording not in synthetic_reports.WORDINGS:
        raise BadInput("params.yaml", f"download.synthetic.wording must be one of "
                                      f"{list(synthetic_reports.WORDINGS)}, got {wording!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    studies = plan_studies(n_reports, seed, image_width, wording)
    files, sha256 = {}, {}
    for kind, name, write in (
        ("reports", REPORTS_ARCHIVE, lambda tmp: _write_reports(tmp, studies, seed)),
        ("images", IMAGES_ARCHIVE, lambda tmp: _write_images(tmp, studies, seed, image_width, workers, progress)),
    ):
        target = out_dir / name
        with atomic_path(target) as tmp:
            write(tmp)
            check_archive(tmp, kind)
        sha256[kind] = write_sidecar(target)["sha256"]
        files[kind] = name
    truth = _truth(studies, seed, image_width)
    truth["wording"] = wording
    write_json_atomic(out_dir / TRUTH_FILE, truth)
    return {
        "source": "synthetic",
        "layout": "nlmcxr",
        "files": files,
        "sha256": sha256,
        "truth": TRUTH_FILE,
        "n_reports": truth["n_reports"],
        "n_images": truth["n_images"],
        "seed": seed,
        "image_width": image_width,
        "wording": wording,
    }


def fetch(cfg: dict, raw_dir: Path, cache_dir: Path) -> dict:
    """Generate the synthetic archives into raw_dir (cache_dir is not needed: generation is cheap)."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise BadInput("params.yaml", f"download.synthetic: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    return generate(raw_dir, settings["n_reports"], settings["seed"], settings["image_width"],
                    workers=settings["workers"], wording=settings["wording"])
