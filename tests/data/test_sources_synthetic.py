"""The synthetic source, on real generated archives.

Two generated sets: a small one at the default 512 px width (layout, formats, determinism) and one
of 300 reports at 256 px (proportions, awkward cases, and whether the pixels show the findings).
The pixel checks measure the images with an analysis written here — lung masks by thresholding,
the heart as the gap between the lungs — and never read the generator's drawing parameters; the
ground truth file only says which label each study has.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from PIL import Image

from cxrgen.data.archives import check_archive, verify_sidecar
from cxrgen.data.sources import synthetic
from cxrgen.errors import BadInput

SECTIONS = ["COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"]
IMAGE_ID = re.compile(r"^CXR(\d+)(_1)?_IM-\d{4}-\d{4}(-\d{4})?$")


# ----------------------------------------------------------------------------- generated data


def _generate(root: Path, name: str, **kwargs) -> Path:
    out = root / name
    record = synthetic.generate(out, progress=False, **kwargs)
    (out / "record.json").write_text(json.dumps(record))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("synthetic"), "small", n_reports=40, seed=3)


@pytest.fixture(scope="module")
def stats(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("synthetic"), "stats", n_reports=300, seed=11, image_width=256)


def _record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def _truth(folder: Path) -> dict:
    return json.loads((folder / synthetic.TRUTH_FILE).read_text())


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def _reports(folder: Path) -> dict[str, bytes]:
    return _members(folder / "NLMCXR_reports.tgz")


def _pngs(folder: Path) -> dict[str, bytes]:
    return _members(folder / "NLMCXR_png.tgz")


def _sections(root) -> dict[str, str | None]:
    """Section text by label; None when the element is missing or empty."""
    out = {label: None for label in SECTIONS}
    for node in root.iter("AbstractText"):
        text = (node.text or "").strip()
        out[node.get("Label")] = text or None
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- archives and layout


@pytest.mark.parametrize("which", ["small", "stats"])
def test_archives_pass_the_checks_and_have_sidecars(which, request):
    folder = request.getfixturevalue(which)
    record = _record(folder)
    assert record["source"] == "synthetic" and record["layout"] == "nlmcxr"
    assert record["files"] == {"images": "NLMCXR_png.tgz", "reports": "NLMCXR_reports.tgz"}
    assert record["truth"] == "synthetic_truth.json" and (folder / record["truth"]).is_file()
    images = check_archive(folder / "NLMCXR_png.tgz", "images")
    reports = check_archive(folder / "NLMCXR_reports.tgz", "reports")
    assert images.png_files == record["n_images"]
    assert reports.xml_files == record["n_reports"]
    for name in record["files"].values():
        assert verify_sidecar(folder / name) is None


def test_xml_follows_the_original_layout(small):
    reports = _reports(small)
    assert len(reports) == 40
    for name, data in reports.items():
        assert name.startswith("ecgen-radiology/") and name.endswith(".xml")
        assert data.startswith(b'<?xml version="1.0" encoding="utf-8"?>'), name
        root = etree.fromstring(data)
        number = name.split("/")[1][:-4]
        assert root.tag == "eCitation"
        assert root.find("meta").get("type") == "rr"
        assert root.find("uId").get("id") == f"CXR{number}"
        assert root.find("pmcId").get("id") == number
        assert root.find("IUXRId").get("id") == number
        assert root.findtext("docSource") == "CXR"
        assert root.findtext("licenseType") == "open-access"
        assert root.findtext("publisher")
        citation = root.find("MedlineCitation")
        assert citation.get("Owner") and citation.get("Status")
        article = citation.find("Article")
        assert article.find("Journal") is not None and article.findtext("ArticleTitle")
        labels = [node.get("Label") for node in article.find("Abstract").iter("AbstractText")]
        assert labels == [label for label in SECTIONS if label in labels], labels
        assert {"COMPARISON", "INDICATION"} <= set(labels)
        majors = [m.text for m in root.iterfind("MeSH/major")]
        assert majors and all(majors), name
        for index, parent in enumerate(root.iterfind("parentImage"), start=1):
            image_id = parent.get("id")
            assert IMAGE_ID.match(image_id) and IMAGE_ID.match(image_id).group(1) == number, image_id
            assert parent.findtext("figureId") == f"F{index}"
            assert parent.findtext("caption")
            assert parent.find("panel").get("type") == "single"
            assert parent.findtext("panel/url").endswith(f"/{image_id}.jpg")


@pytest.mark.parametrize("which", ["small", "stats"])
def test_image_ids_in_the_xml_are_the_png_files(which, request):
    folder = request.getfixturevalue(which)
    in_xml = []
    for data in _reports(folder).values():
        in_xml += [p.get("id") for p in etree.fromstring(data).iterfind("parentImage")]
    pngs = _pngs(folder)
    assert all("/" not in name and name.endswith(".png") for name in pngs)
    assert len(in_xml) == len(set(in_xml))
    assert set(in_xml) == {name[:-4] for name in pngs}
    truth = _truth(folder)
    assert set(truth["images"]) == set(in_xml)
    assert {v["projection"] for v in truth["images"].values()} == {"frontal", "lateral"}


def _ihdr(png: bytes) -> tuple[int, int, int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height, bit_depth, color_type = struct.unpack(">IIBB", png[16:26])
    return width, height, bit_depth, color_type


def test_pngs_are_8_bit_grayscale_512_wide_with_varying_heights(small):
    heights = []
    truth = _truth(small)
    for name, png in _pngs(small).items():
        width, height, bit_depth, color_type = _ihdr(png)
        assert (width, bit_depth, color_type) == (512, 8, 0), name  # colour type 0 = grayscale
        assert 420 <= height <= 624, (name, height)
        assert Image.open(io.BytesIO(png)).mode == "L"
        assert truth["images"][name[:-4]]["height"] == height
        heights.append(height)
    assert len(set(heights)) >= 0.6 * len(heights), f"{len(set(heights))} distinct heights in {len(heights)}"


def test_many_distinct_heights_at_scale(stats):
    heights = [_ihdr(png)[1] for png in _pngs(stats).values()]
    assert len(set(heights)) >= 60, f"only {len(set(heights))} distinct heights in {len(heights)} images"


# ----------------------------------------------------------------------------- proportions, awkward cases


def test_numbering_is_1_to_n_with_gaps(stats):
    numbers = sorted(int(name.split("/")[1][:-4]) for name in _reports(stats))
    assert numbers[0] >= 1 and len(numbers) == 300
    missing = set(range(1, numbers[-1] + 1)) - set(numbers)
    assert 1 <= len(missing) <= 15, f"{len(missing)} numbers missing below {numbers[-1]}"


def test_images_per_report_follow_the_real_proportions(stats):
    counts = Counter(len(r["images"]) for r in _truth(stats)["reports"].values())
    share = {k: counts.get(k, 0) / 300 for k in range(6)}
    three_plus = sum(v for k, v in counts.items() if k >= 3) / 300
    message = f"images per report: {dict(sorted(counts.items()))}"
    # Real: 0 / 1 / 2 / 3+ images for 2.6 / 11.3 / 81.1 / 5.0 % of reports (tolerance ~4 sd at n=300).
    assert 0.72 <= share[2] <= 0.90, message
    assert 0.05 <= share[1] <= 0.19, message
    assert 0 < share[0] <= 0.07, message
    assert 0 < three_plus <= 0.11, message


def test_awkward_cases_are_all_present(stats):
    truth = _truth(stats)
    missing_findings = missing_impression = absent_element = 0
    xxxx = Counter()
    for name, data in _reports(stats).items():
        root = etree.fromstring(data)
        sections = _sections(root)
        missing_findings += sections["FINDINGS"] is None
        missing_impression += sections["IMPRESSION"] is None
        labels = {node.get("Label") for node in root.iter("AbstractText")}
        absent_element += not {"FINDINGS", "IMPRESSION"} <= labels
        assert sections["FINDINGS"] or sections["IMPRESSION"], f"{name} says nothing"
        for label, text in sections.items():
            xxxx[label] += bool(text and "XXXX" in text)
    reports = truth["reports"].values()
    n_images = Counter(len(r["images"]) for r in reports)
    assert n_images[0] and n_images[1] and any(k >= 3 for k in n_images), n_images
    assert 10 <= missing_findings <= 70, f"{missing_findings} reports without FINDINGS"
    assert 1 <= missing_impression <= 25, f"{missing_impression} reports without IMPRESSION"
    assert absent_element >= 1, "a missing section should sometimes be left out entirely"
    assert all(xxxx[label] for label in SECTIONS), f"reports with XXXX per section: {dict(xxxx)}"
    normal = sum(r["normal"] for r in reports) / 300
    assert 0.30 <= normal <= 0.50, f"{normal:.2f} of studies normal"
    # Not always 1001 = frontal: some first images are lateral, some single images are lateral.
    first = [truth["images"][r["images"][0]]["projection"] for r in reports if len(r["images"]) >= 2]
    single = [truth["images"][r["images"][0]]["projection"] for r in reports if len(r["images"]) == 1]
    assert 0.02 <= first.count("lateral") / len(first) <= 0.2, Counter(first)
    assert "lateral" in single and "frontal" in single, Counter(single)
    multi = [r for r in reports if len(r["images"]) >= 3]
    assert all({truth["images"][i]["projection"] for i in r["images"]} == {"frontal", "lateral"} for r in multi)


def test_awkward_cases_are_forced_into_small_runs(tmp_path):
    folder = _generate(tmp_path, "tiny", n_reports=12, seed=0, image_width=64)
    reports = _truth(folder)["reports"].values()
    counts = [len(r["images"]) for r in reports]
    assert 0 in counts and 1 in counts and max(counts) >= 3, counts
    assert not all(r["sections"]["FINDINGS"] for r in reports)
    assert not all(r["sections"]["IMPRESSION"] for r in reports)
    numbers = sorted(r["number"] for r in reports)
    assert numbers[-1] > len(numbers), "expected a gap in the numbering"


# The words a report uses for each finding, and how the truth's attributes appear in the text.
KEYWORDS = {
    "cardiomegaly": ("cardiomegaly", "enlarged"),
    "pleural_effusion": ("effusion",),
    "opacity": ("opacity",),
    "consolidation": ("consolidation",),
    "atelectasis": ("atelectasis",),
    "nodule": ("nodule",),
    "pneumothorax": ("pneumothorax",),
    "edema": ("edema",),
    "degenerative_spine": ("degenerative", "spondylosis"),
}
DEVICE_WORDS = {
    "pacemaker": "pacemaker",
    "endotracheal_tube": "endotracheal",
    "central_line": "superior vena cava|svc|central",
    "sternotomy_wires": "sternotomy",
}
NEGATION = re.compile(r"\b(no|without)\b", re.I)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


def _side_words(finding: dict) -> tuple[str, ...]:
    side = finding.get("side")
    if side == "bilateral":
        return ("bilateral", "both", "bibasilar")
    if finding.get("zone") == "mid" and side == "left":
        return ("left", "lingula")
    return (side,) if side else ("",)


def test_text_and_mesh_state_the_true_findings(stats):
    truth = _truth(stats)
    checked = Counter()
    for data in _reports(stats).values():
        root = etree.fromstring(data)
        uid = root.find("uId").get("id")
        report = truth["reports"][uid]
        sections = _sections(root)
        sentences = _sentences(" ".join(filter(None, [sections["FINDINGS"], sections["IMPRESSION"]])))
        majors = [m.text for m in root.iterfind("MeSH/major")]
        present = {f["finding"] for f in report["findings"]}
        if report["normal"]:
            assert majors == ["normal"], (uid, majors)
        for finding in report["findings"]:
            kind = finding["finding"]
            if kind == "support_device":
                pattern = re.compile(DEVICE_WORDS[finding["device"]], re.I)
                assert any(pattern.search(s) for s in sentences), (uid, finding, sentences)
                continue
            stating = [s for s in sentences if any(k in s.lower() for k in KEYWORDS[kind]) and not NEGATION.search(s)]
            assert stating, (uid, finding, sentences)
            if kind != "atelectasis" or finding["side"] != "bilateral":
                assert any(any(w in s.lower() for w in _side_words(finding)) for s in stating), (uid, finding, stating)
            assert any(m.split("/")[0] in {
                "Cardiomegaly", "Pleural Effusion", "Opacity", "Consolidation", "Pulmonary Atelectasis",
                "Nodule", "Pneumothorax", "Pulmonary Edema", "Thoracic Vertebrae"} for m in majors), (uid, majors)
            checked[kind] += 1
        for kind, words in KEYWORDS.items():
            if kind in present or kind == "degenerative_spine" or (kind == "opacity" and "consolidation" in present):
                continue
            for s in sentences:  # an absent finding is only ever mentioned negated
                if any(w in s.lower() for w in words if w != "enlarged"):
                    assert NEGATION.search(s), (uid, kind, s)
    assert all(checked[k] >= 5 for k in KEYWORDS), checked


def test_mesh_modifiers_match_side_and_severity(stats):
    for report in _truth(stats)["reports"].values():
        majors = report["mesh_major"]
        for f in report["findings"]:
            if f["finding"] == "cardiomegaly":
                assert f"Cardiomegaly/{f['severity']}" in majors
            elif f["finding"] == "pleural_effusion":
                assert f"Pleural Effusion/{f['side']}/{f['severity']}" in majors
            elif f["finding"] == "pneumothorax":
                assert f"Pneumothorax/{f['side']}/{f['severity']}" in majors
            elif f["finding"] in ("opacity", "consolidation", "nodule"):
                term = {"opacity": "Opacity", "consolidation": "Consolidation", "nodule": "Nodule"}[f["finding"]]
                assert any(m.startswith(f"{term}/lung/") for m in majors), majors


# ----------------------------------------------------------------------------- determinism, cfg


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    runs = {
        "a": _generate(tmp_path, "a", n_reports=15, seed=21, image_width=128),
        "b": _generate(tmp_path, "b", n_reports=15, seed=21, image_width=128),
        "parallel": _generate(tmp_path, "parallel", n_reports=15, seed=21, image_width=128, workers=2),
        "other": _generate(tmp_path, "other", n_reports=15, seed=22, image_width=128),
    }
    files = ["NLMCXR_png.tgz", "NLMCXR_reports.tgz", synthetic.TRUTH_FILE]
    digests = {run: [_sha(folder / f) for f in files] for run, folder in runs.items()}
    assert digests["a"] == digests["b"], "same seed gave different bytes"
    assert digests["a"] == digests["parallel"], "two drawing processes gave different bytes than one"
    assert all(x != y for x, y in zip(digests["a"], digests["other"])), "another seed gave the same bytes"
    with tarfile.open(runs["a"] / "NLMCXR_png.tgz", "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    raw = (runs["a"] / "NLMCXR_reports.tgz").read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00", "gzip header carries a time"


def test_fetch_uses_cfg_and_refuses_bad_keys(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    record = synthetic.fetch({"n_reports": 12, "seed": 5, "image_width": 96}, raw, tmp_path / "cache")
    assert record["n_reports"] == 12 and record["seed"] == 5 and record["image_width"] == 96
    assert sorted(p.name for p in raw.iterdir()) == sorted([
        "NLMCXR_png.tgz", "NLMCXR_png.tgz.json", "NLMCXR_reports.tgz", "NLMCXR_reports.tgz.json",
        "synthetic_truth.json"])
    assert {_ihdr(png)[0] for png in _pngs(raw).values()} == {96}
    with pytest.raises(BadInput, match="unknown key"):
        synthetic.fetch({"n_report": 12}, tmp_path / "x", tmp_path / "cache")
    with pytest.raises(BadInput, match="n_reports"):
        synthetic.fetch({"n_reports": 0}, tmp_path / "y", tmp_path / "cache")
    with pytest.raises(BadInput, match="image_width"):
        synthetic.fetch({"image_width": "wide"}, tmp_path / "z", tmp_path / "cache")


def test_fixed_wording_changes_only_the_words(tmp_path):
    varied = _generate(tmp_path, "varied", n_reports=60, seed=4, image_width=96)
    fixed = _generate(tmp_path, "fixed", n_reports=60, seed=4, image_width=96, wording="fixed")
    assert _record(varied)["wording"] == "varied" and _record(fixed)["wording"] == "fixed"
    # Same studies, same pictures: only the report text differs.
    assert _sha(varied / "NLMCXR_png.tgz") == _sha(fixed / "NLMCXR_png.tgz")
    findings_of = [{uid: r["findings"] for uid, r in _truth(folder)["reports"].items()} for folder in (varied, fixed)]
    assert findings_of[0] == findings_of[1]
    assert _sha(varied / "NLMCXR_reports.tgz") != _sha(fixed / "NLMCXR_reports.tgz")

    def findings_texts(folder: Path) -> dict[str, set[str]]:
        """FINDINGS texts per set of true findings."""
        truth = _truth(folder)["reports"]
        texts: dict[str, set[str]] = {}
        for data in _reports(folder).values():
            root = etree.fromstring(data)
            text = _sections(root)["FINDINGS"]
            if text:
                key = json.dumps(truth[root.find("uId").get("id")]["findings"], sort_keys=True)
                texts.setdefault(key, set()).add(text)
        return texts

    fixed_texts, varied_texts = findings_texts(fixed), findings_texts(varied)
    assert all(len(texts) == 1 for texts in fixed_texts.values()), "fixed wording wrote one set of findings two ways"
    assert any(len(texts) > 1 for texts in varied_texts.values()), "varied wording never varied"


def test_unknown_wording_is_refused(tmp_path):
    with pytest.raises(BadInput, match="wording"):
        synthetic.fetch({"n_reports": 3, "wording": "terse"}, tmp_path / "raw", tmp_path / "cache")
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


# ----------------------------------------------------------------------------- pixels show the findings
# A small, independent image analysis: downsample to 128 px wide, threshold (Otsu), drop the dark
# background connected to the border, and keep in each half of the image the dark region grown from
# its deepest point: the two lungs.

ANALYSIS_WIDTH = 128


def _otsu(values: np.ndarray) -> int:
    hist = np.bincount(values.ravel(), minlength=256).astype(float)
    p = hist / hist.sum()
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return int(np.nanargmax(between))


def _grow(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    reach = seed & mask
    while True:
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= mask
        if (grown == reach).all():
            return reach
        reach = grown


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0] = out[-1] = out[:, 0] = out[:, -1] = False
    return out


class Frontal:
    """Lung masks and the thorax box of a frontal image (image left = patient right)."""

    def __init__(self, png: bytes):
        image = Image.open(io.BytesIO(png)).convert("L")
        image = image.resize((ANALYSIS_WIDTH, round(image.height * ANALYSIS_WIDTH / image.width)), Image.BOX)
        self.pixels = np.asarray(image).astype(float)
        dark = np.asarray(image) < _otsu(np.asarray(image))
        border = np.zeros_like(dark)
        border[0] = border[-1] = border[:, 0] = border[:, -1] = True
        interior = dark & ~_grow(border, dark)
        self.lungs = np.zeros_like(dark)
        columns = np.arange(dark.shape[1])[None, :]
        for half in (columns < ANALYSIS_WIDTH / 2, columns >= ANALYSIS_WIDTH / 2):
            core = interior & half
            while (inner := _erode(core)).any():
                core = inner
            self.lungs |= _grow(core, interior)
        rows = np.flatnonzero(self.lungs.any(axis=1))
        cols = np.flatnonzero(self.lungs.any(axis=0))
        self.top, self.bottom, self.left, self.right = rows[0], rows[-1], cols[0], cols[-1]
        self.mid = (self.left + self.right) / 2
        self.height = self.bottom - self.top

    def cardiothoracic_ratio(self) -> float:
        """Widest gap between the lungs at 60-74 % of the lung height / widest extent of the lungs.

        The heart is widest just above the diaphragm; the band stays above the domes, where the gap
        between the lungs is the heart shadow.
        """
        gaps = []
        for row in range(self.top + int(0.60 * self.height), self.top + int(0.74 * self.height) + 1):
            cols = np.flatnonzero(self.lungs[row])
            image_left, image_right = cols[cols < self.mid], cols[cols > self.mid]
            if len(image_left) and len(image_right):
                gaps.append(image_right[0] - image_left[-1] - 1)
        return max(gaps) / (self.right - self.left + 1) if gaps else float("nan")

    def costophrenic_rise(self, side: str) -> float:
        """How much higher the lowest point of the lateral half of `side`'s lung is than the other's."""
        def lowest(c0: float, c1: float) -> int:
            rows = np.flatnonzero(self.lungs[:, int(c0):int(c1) + 1].any(axis=1))
            return rows[-1] if len(rows) else self.top

        image_left = lowest(self.left, (self.left + self.mid) / 2)
        image_right = lowest((self.mid + self.right) / 2, self.right)
        stated, other = (image_left, image_right) if side == "right" else (image_right, image_left)
        return (other - stated) / self.height

    ZONES = {"upper": (0.12, 0.40), "mid": (0.38, 0.62), "lower": (0.60, 0.85)}

    def zone_contrast(self, side: str, zone: str) -> float:
        """Mean brightness of a box in `side`'s lung zone minus the mirrored box on the other side."""
        f0, f1 = self.ZONES[zone]
        r0, r1 = int(self.top + f0 * self.height), int(self.top + f1 * self.height) + 1
        half = min(self.mid - self.left, self.right - self.mid)
        c0, c1 = int(round(self.mid - 0.85 * half)), int(round(self.mid - 0.30 * half))
        m0, m1 = int(round(2 * self.mid - c1)), int(round(2 * self.mid - c0))
        image_left = self.pixels[r0:r1, c0:c1 + 1].mean()
        image_right = self.pixels[r0:r1, m0:m1 + 1].mean()
        return image_left - image_right if side == "right" else image_right - image_left


def _auc(positives, negatives) -> float:
    pos, neg = np.asarray(positives, float)[:, None], np.asarray(negatives, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


@pytest.fixture(scope="module")
def frontals(stats):
    """(findings of the study, Frontal analysis) for every frontal image of the 300-report set."""
    truth = _truth(stats)
    out = []
    for name, png in sorted(_pngs(stats).items()):
        image = truth["images"][name[:-4]]
        if image["projection"] == "frontal":
            out.append((truth["reports"][image["report"]]["findings"], Frontal(png)))
    return out


def _has(findings: list[dict], kind: str) -> list[dict]:
    return [f for f in findings if f["finding"] == kind]


def _measured(values: list[float]) -> list[float]:
    """The values the analysis could measure (a lung hidden by a lesion leaves no heart border)."""
    kept = [v for v in values if np.isfinite(v)]
    assert len(values) - len(kept) <= max(1, 0.1 * len(values)), f"only {len(kept)} of {len(values)} images measurable"
    return kept


def test_cardiomegaly_widens_the_heart_shadow(frontals):
    enlarged = _measured([a.cardiothoracic_ratio() for f, a in frontals if _has(f, "cardiomegaly")])
    normal = _measured([a.cardiothoracic_ratio() for f, a in frontals if not f])
    others = _measured([a.cardiothoracic_ratio() for f, a in frontals if f and not _has(f, "cardiomegaly")])
    auc, auc_others = _auc(enlarged, normal), _auc(enlarged, others)
    message = (f"measured cardiothoracic ratio: cardiomegaly mean {np.mean(enlarged):.3f} (n={len(enlarged)}), "
               f"normal studies mean {np.mean(normal):.3f} (n={len(normal)}), other findings mean "
               f"{np.mean(others):.3f} (n={len(others)}); AUC vs normal {auc:.3f}, vs other findings {auc_others:.3f}")
    assert len(enlarged) >= 20 and len(normal) >= 50, message
    assert np.mean(normal) < 0.5 < np.mean(enlarged), message
    assert np.mean(enlarged) - np.mean(normal) > 0.1, message
    assert auc > 0.9 and auc_others > 0.85, message


def test_cardiothoracic_ratio_grows_with_severity(frontals):
    by_severity = {s: _measured([a.cardiothoracic_ratio() for f, a in frontals
                                 if any(x["severity"] == s for x in _has(f, "cardiomegaly"))])
                   for s in ("mild", "moderate", "severe")}
    means = {s: round(float(np.mean(v)), 3) for s, v in by_severity.items()}
    assert means["mild"] < means["severe"], f"mean measured ratio by severity: {means}"


def test_effusion_whites_out_the_costophrenic_angle_of_its_side(frontals):
    effusion = [a.costophrenic_rise(e[0]["side"]) for f, a in frontals
                if (e := _has(f, "pleural_effusion")) and e[0]["side"] != "bilateral"]
    dry = [a.costophrenic_rise(side) for f, a in frontals if not _has(f, "pleural_effusion")
           for side in ("left", "right")]
    auc = _auc(effusion, dry)
    message = (f"rise of the stated side's lowest lateral lung point over the other side's, as a share of "
               f"the lung height: effusion mean {np.mean(effusion):.3f} (n={len(effusion)}), no effusion mean "
               f"{np.mean(dry):.3f} (n={len(dry)}); AUC {auc:.3f}")
    assert len(effusion) >= 10, message
    assert auc > 0.9, message


def test_opacity_and_consolidation_brighten_their_zone_and_side(frontals):
    normals = [a for f, a in frontals if not f]
    positives, negatives = [], []
    for findings, analysis in frontals:
        for f in _has(findings, "opacity") + _has(findings, "consolidation"):
            # The same box measured on normal studies: anatomy makes some boxes brighter than their
            # mirror (the heart lies left), so each finding is scored against its own box's spread.
            reference = np.array([n.zone_contrast(f["side"], f["zone"]) for n in normals])
            scale = reference.std()
            positives.append((analysis.zone_contrast(f["side"], f["zone"]) - reference.mean()) / scale)
            negatives += list((reference - reference.mean()) / scale)
    auc = _auc(positives, negatives)
    message = (f"stated zone minus mirrored zone, in standard deviations of normal studies: lesions mean "
               f"{np.mean(positives):.2f} (n={len(positives)}), normal boxes mean {np.mean(negatives):.2f}; "
               f"AUC {auc:.3f}")
    assert len(positives) >= 20, message
    assert np.mean(positives) > 1.5, message
    assert auc > 0.85, message


def test_frontal_and_lateral_differ_in_symmetry(stats):
    """Frontal films are roughly left-right symmetric, laterals are not (spine on one side)."""
    truth = _truth(stats)
    symmetry = {"frontal": [], "lateral": []}
    for name, png in _pngs(stats).items():
        image = Image.open(io.BytesIO(png)).convert("L").resize((64, 64), Image.BOX)
        a = np.asarray(image, float)
        symmetry[truth["images"][name[:-4]]["projection"]].append(np.corrcoef(a.ravel(), a[:, ::-1].ravel())[0, 1])
    auc = _auc(symmetry["frontal"], symmetry["lateral"])
    message = (f"correlation with the mirror image: frontal mean {np.mean(symmetry['frontal']):.3f}, "
               f"lateral mean {np.mean(symmetry['lateral']):.3f}; AUC {auc:.3f}")
    assert auc > 0.9, message
