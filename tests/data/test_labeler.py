"""The CheXpert-style labeler: phrases, negation, uncertainty, aggregation, MeSH agreement, the stage."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest

from cxrgen.data.extract import REPORT_COLUMNS, SECTIONS, parse_report_xml
from cxrgen.data.labeler import (
    OBSERVATIONS,
    Mention,
    agreement_with_mesh,
    find_mentions,
    label_matrix,
    label_report,
    mesh_observations,
    normalise,
    positive_matrix,
)
from cxrgen.data.sources import synthetic_reports
from cxrgen.data.text import clean


def stated(text: str) -> dict[str, int]:
    """The labels that are not None."""
    return {k: v for k, v in label_report(text).items() if v is not None}


def sample_reports(shared_sample) -> list[dict]:
    return [parse_report_xml(path.read_bytes(), path.name)
            for path in sorted((shared_sample / "ecgen-radiology").glob("*.xml"))]


# --------------------------------------------------------------------------- API shape


def test_observations_are_the_fourteen_chexpert_names():
    assert OBSERVATIONS == (
        "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
        "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
        "Pleural Other", "Fracture", "Support Devices",
    )


def test_every_key_present_and_missing_text_gives_nothing():
    for empty in (None, float("nan"), pd.NA, "", "   ", " . ."):
        labels = label_report(empty)
        assert list(labels) == list(OBSERVATIONS)
        assert all(v is None for v in labels.values()), empty
    assert find_mentions(None) == []
    with pytest.raises(TypeError):
        label_report(3)


def test_mentions_are_frozen_and_spans_index_the_normalised_text():
    text = "Heart size is normal. No pleural effusion. Right basilar opacity may represent atelectasis."
    norm = normalise(text)
    mentions = find_mentions(text)
    assert mentions and all(isinstance(m, Mention) for m in mentions)
    for m in mentions:
        assert norm[m.span[0]:m.span[1]] == m.phrase
        assert m.phrase in norm.split(" . ")[m.sentence]
    with pytest.raises(dataclasses.FrozenInstanceError):
        mentions[0].status = "positive"
    by_obs = {m.observation: m for m in mentions}
    assert by_obs["Cardiomegaly"].status == "negative" and by_obs["Cardiomegaly"].sentence == 0
    assert by_obs["Pleural Effusion"].trigger == "no" and by_obs["Pleural Effusion"].sentence == 1
    assert by_obs["Atelectasis"].status == "uncertain" and by_obs["Atelectasis"].trigger == "may"
    assert by_obs["Lung Opacity"].status == "positive" and by_obs["Lung Opacity"].trigger is None


def test_label_matrix_and_positive_matrix():
    texts = ["Cardiomegaly. No pneumothorax.", "Possible pneumonia.", None]
    matrix = label_matrix(texts)
    assert matrix.shape == (3, 14) and matrix.dtype == np.float32
    col = OBSERVATIONS.index
    assert matrix[0, col("Cardiomegaly")] == 1 and matrix[0, col("Pneumothorax")] == 0
    assert math.isnan(matrix[0, col("Edema")])
    assert matrix[1, col("Pneumonia")] == -1
    assert np.isnan(matrix[2]).all()
    strict, lenient = positive_matrix(matrix), positive_matrix(matrix, uncertain_as_positive=True)
    assert strict.dtype == bool and strict.shape == (3, 14)
    assert strict[0, col("Cardiomegaly")] and not strict[0, col("Pneumothorax")]
    assert not strict[1, col("Pneumonia")] and lenient[1, col("Pneumonia")]
    assert not lenient[2].any()
    # The same from label dicts.
    dicts = [label_report(t) for t in texts]
    assert (positive_matrix(dicts, True) == lenient).all()
    assert label_matrix([]).shape == (0, 14)


# --------------------------------------------------------------------------- negation, uncertainty, scope


@pytest.mark.parametrize("text, observation", [
    ("No pleural effusion.", "Pleural Effusion"),
    ("without pneumothorax", "Pneumothorax"),
    ("No evidence of focal consolidation.", "Consolidation"),
    ("Negative for pneumothorax, pleural effusion.", "Pleural Effusion"),
    ("The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.", "Pleural Effusion"),
    ("Lungs are free of focal airspace disease.", "Lung Opacity"),
    ("No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.", "Lung Lesion"),
    ("Pleural effusion is not seen.", "Pleural Effusion"),
    ("The right pleural effusion has resolved.", "Pleural Effusion"),
    ("No suspicious pulmonary nodules.", "Lung Lesion"),
    ("No definite pleural effusion seen.", "Pleural Effusion"),
    ("No focal airspace consolidation to suggest pneumonia.", "Pneumonia"),
    ("No XXXX consolidation.", "Consolidation"),
    ("There isn't any pneumothorax.", "Pneumothorax"),
    ("Interval removal of the endotracheal tube.", "Support Devices"),
])
def test_negation(text, observation):
    assert label_report(text)[observation] == 0, find_mentions(text)


@pytest.mark.parametrize("text, observation", [
    ("Right basilar opacity may represent atelectasis.", "Atelectasis"),
    ("Cannot exclude pneumonia.", "Pneumonia"),
    ("Pneumonia cannot be excluded.", "Pneumonia"),
    ("Early pneumonia is not excluded.", "Pneumonia"),
    ("Possible small left effusion.", "Pleural Effusion"),
    ("Findings suggestive of early edema.", "Edema"),
    ("Opacity concerning for pneumonia.", "Pneumonia"),
    ("Probable left basilar infiltrate versus atelectasis.", "Atelectasis"),
    ("Questionable nodule in the right upper lobe.", "Lung Lesion"),
    ("Borderline cardiomegaly.", "Cardiomegaly"),
    ("Bilateral rib deformities, possibly old fractures.", "Fracture"),
    ("Atelectasis is likely.", "Atelectasis"),
])
def test_uncertainty(text, observation):
    assert label_report(text)[observation] == -1, find_mentions(text)


def test_uncertain_mention_does_not_taint_its_neighbour():
    labels = label_report("Right basilar XXXX opacity may represent atelectasis.")
    assert labels["Lung Opacity"] == 1 and labels["Atelectasis"] == -1
    labels = label_report("Chronic bibasilar pleural abnormality with possible small effusions.")
    assert labels["Pleural Other"] == 1 and labels["Pleural Effusion"] == -1


@pytest.mark.parametrize("text, negative, positive", [
    ("No effusion but there is cardiomegaly.", "Pleural Effusion", "Cardiomegaly"),
    ("There is no pneumothorax, however a small effusion is present.", "Pneumothorax", "Pleural Effusion"),
    ("No pneumothorax. Small right pleural effusion.", "Pneumothorax", "Pleural Effusion"),
    ("No consolidation although there is mild atelectasis.", "Consolidation", "Atelectasis"),
    ("No pleural effusion; right lower lobe pneumonia.", "Pleural Effusion", "Pneumonia"),
])
def test_scope_ends_at_sentence_and_conjunction(text, negative, positive):
    labels = label_report(text)
    assert labels[negative] == 0 and labels[positive] == 1, find_mentions(text)


@pytest.mark.parametrize("text", [
    "No change in the large right pleural effusion.",
    "Right pleural effusion, not significantly changed.",
    "Stable moderate right pleural effusion without interval change.",
])
def test_pseudo_negations_are_not_negations(text):
    assert label_report(text)["Pleural Effusion"] == 1, find_mentions(text)


@pytest.mark.parametrize("text, expected", [
    ("Heart size is normal.", 0),
    ("Normal heart size.", 0),
    ("The heart is not enlarged.", 0),
    ("The heart is not significantly enlarged.", 0),
    ("Heart size within normal limits.", 0),
    ("The heart and mediastinum are unremarkable.", 0),
    ("Cardiac and mediastinal contours are within normal limits.", 0),
    ("Cardiomegaly.", 1),
    ("The heart is mildly enlarged.", 1),
    ("Heart size is moderately enlarged.", 1),
    ("Enlarged cardiac silhouette.", 1),
    ("Moderate enlargement of the cardiac silhouette.", 1),
    ("Heart failure.", None),  # an Edema phrase, no statement about the heart's size
])
def test_heart_size_phrasing(text, expected):
    assert label_report(text)["Cardiomegaly"] == expected, find_mentions(text)


def test_clear_lungs_negate_lung_opacity_only():
    for text in ("The lungs are clear.", "Clear lungs.", "Lungs are clear bilaterally.",
                 "The lungs are well expanded and clear.", "Well-expanded and clear lungs."):
        assert stated(text) == {"Lung Opacity": 0, "No Finding": 1}, text


@pytest.mark.parametrize("text, observation", [
    ("Blunting of the left costophrenic angle.", "Pleural Effusion"),
    ("Mild biapical pleural thickening.", "Pleural Other"),
    ("Widened mediastinum.", "Enlarged Cardiomediastinum"),
    ("Mild pulmonary vascular congestion.", "Edema"),
    ("There is patchy infiltrate in the right lower lobe.", "Lung Opacity"),
    ("Focal airspace disease in the lingula.", "Lung Opacity"),
    ("Left upper lobe mass.", "Lung Lesion"),
    ("Displaced fracture of the right 6th rib.", "Fracture"),
    ("Left chest wall pacemaker with leads in the right ventricle.", "Support Devices"),
    ("Right-sided central line with tip in the SVC.", "Support Devices"),
    ("Median sternotomy wires are intact.", "Support Devices"),
    ("Surgical clips in the right upper quadrant.", "Support Devices"),
    ("Bibasilar atelectatic changes.", "Atelectasis"),
    ("Small apical pneumothorax.", "Pneumothorax"),
    ("Right lower lobe pneumonia.", "Pneumonia"),
])
def test_mention_phrases(text, observation):
    assert label_report(text)[observation] == 1, find_mentions(text)


@pytest.mark.parametrize("text, observation", [
    ("Calcified granuloma in the right upper lobe.", "Lung Lesion"),  # decision: not a lung lesion
    ("Expansile lesion of the right posterior 9th rib.", "Lung Lesion"),
    ("Soft tissue mass of the neck.", "Lung Lesion"),
    ("Small pericardial effusion.", "Pleural Effusion"),
    ("The trachea is midline.", "Support Devices"),
    ("Prominent interstitial markings.", "Lung Opacity"),
])
def test_not_mentions(text, observation):
    assert label_report(text)[observation] is None, find_mentions(text)


def test_deidentification_token_is_no_mention_and_no_scope_break():
    assert stated("XXXX XXXX. xxxx.") == {"No Finding": 1}
    assert find_mentions("The XXXX are intact. XXXX-year-old male.") == []
    assert label_report("xxxx opacity")["Lung Opacity"] == 1
    assert label_report("XXXX opacity in the left base.")["Lung Opacity"] == 1
    assert label_report("No XXXX XXXX consolidation or effusion.")["Pleural Effusion"] == 0
    assert label_report("Mild XXXX opacities in the retrocardiac region.")["Lung Opacity"] == 1


# --------------------------------------------------------------------------- aggregation


def test_positive_beats_uncertain_beats_negative():
    assert label_report("No effusion. Possible effusion. Small effusion.")["Pleural Effusion"] == 1
    assert label_report("No effusion. Possible effusion.")["Pleural Effusion"] == -1
    assert label_report("No effusion. No pleural effusion.")["Pleural Effusion"] == 0


def test_no_finding():
    assert label_report("Heart size normal. Lungs are clear. No effusion.")["No Finding"] == 1
    assert label_report("Degenerative changes of the thoracic spine.")["No Finding"] == 1
    assert label_report("Mild cardiomegaly.")["No Finding"] == 0
    assert label_report("Possible left lower lobe pneumonia.")["No Finding"] == 0  # uncertain counts
    # Support Devices do not count (CheXpert): a pacemaker and nothing else is a normal study.
    labels = label_report("Cardiac pacemaker in place. Lungs are clear.")
    assert labels["Support Devices"] == 1 and labels["No Finding"] == 1


# --------------------------------------------------------------------------- cleaned text


SAMPLE_SENTENCES = (
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "1. Right basilar opacities favored to represent atelectasis. 2. Stigmata of XXXX cell disease.",
    "There isn't any pneumothorax; can't exclude small left effusion. Cardiomegaly (mild).",
    "Heart size and mediastinal contour are stable and within normal limits.&gt;] Lung volumes are low.",
    "Lungs are clear bilaterally with no focal consolidation, pleural effusion, or pneumothoraces.",
)


@pytest.mark.parametrize("scheme", ["r2gen", "default"])
def test_cleaned_text_gives_the_same_labels(scheme):
    for text in SAMPLE_SENTENCES:
        assert label_report(clean(text, scheme)) == label_report(text), (scheme, text, clean(text, scheme))


def test_normalise_is_idempotent():
    for text in SAMPLE_SENTENCES:
        once = normalise(text)
        assert normalise(once) == once
        assert once.endswith(" .") and "," not in once


# --------------------------------------------------------------------------- the real sample


def test_every_field_of_the_real_sample_is_labelled(shared_sample):
    reports = sample_reports(shared_sample)
    assert len(reports) == 63
    fields = 0
    for report in reports:
        for section in SECTIONS:
            text = report[section.lower()]
            labels = label_report(text)
            assert list(labels) == list(OBSERVATIONS)
            assert all(v in (None, 1, 0, -1) for v in labels.values())
            norm = normalise(text)
            for m in find_mentions(text):
                assert norm[m.span[0]:m.span[1]] == m.phrase
            for scheme in ("r2gen", "default"):
                assert label_report(clean(text, scheme)) == labels, (report["report_id"], section, scheme)
            fields += text is not None
        for term in report["mesh_major"]:
            label_report(term)  # odd inputs ("Opacity/lung/base/left") must not break it
    assert fields > 150


def test_known_real_reports(shared_sample):
    by_id = {r["report_id"]: r for r in sample_reports(shared_sample)}

    def positives(report_id):
        r = by_id[report_id]
        text = " . ".join(t for t in (r["findings"], r["impression"]) if t)
        return {k for k, v in label_report(text).items() if v == 1}

    assert positives("CXR3614") == {"Atelectasis", "Pleural Effusion", "Cardiomegaly", "Edema"}
    assert positives("CXR1254") == {"No Finding"}  # "clear of ..., pneumothorax, or pleural effusion"
    assert positives("CXR2660") == {"No Finding"}  # a long negated list
    assert positives("CXR47") == {"Pleural Other", "Support Devices"}
    assert positives("CXR1257") == {"Cardiomegaly", "Lung Opacity"}  # atelectasis only "may represent"


def test_agreement_with_mesh_on_the_real_sample(shared_sample):
    """Bars, from the figures measured on the 53 usable reports (63 less 5 unindexed, 5 without text):
    micro F1 0.962 (14 observations) and 0.931 (13, without No Finding), precision 0.985 / 0.964.
    One more disagreement moves micro-findings F1 by about 0.017, so the bars allow two or three
    new errors and catch a labeler that starts misreading a common IU phrasing. The rules were
    written looking at these reports, so these are in-sample figures, an upper bound."""
    df = pd.DataFrame(sample_reports(shared_sample), columns=REPORT_COLUMNS)
    result = agreement_with_mesh(df)
    assert result["reports_total"] == 63 and result["n_reports"] == 53
    assert result["excluded"] == {"no_mesh_terms": 3, "no_indexing": 2, "no_text": 5}
    assert result["micro"]["f1"] >= 0.93 and result["micro"]["precision"] >= 0.95
    assert result["micro_findings"]["f1"] >= 0.88 and result["micro_findings"]["cohen_kappa"] >= 0.85
    per = result["per_observation"]
    for name in ("Lung Opacity", "Atelectasis", "Cardiomegaly", "Pleural Effusion", "Support Devices"):
        assert per[name]["f1"] >= 0.8, (name, per[name])
    assert per["Pneumothorax"]["labeler_positive"] == 0 and per["Pneumothorax"]["cohen_kappa"] is None


# --------------------------------------------------------------------------- the synthetic grammar


def expected_positives(findings: list[dict]) -> set[str]:
    expected = set(synthetic_reports.chexpert_positive(findings))
    # The grammar lists devices alone as ["Support Devices"]; CheXpert's No Finding ignores devices.
    if expected <= {"Support Devices"}:
        expected.add("No Finding")
    return expected


@pytest.mark.parametrize("seed, wording", [(0, "varied"), (1, "varied"), (2, "fixed")])
def test_recovers_the_synthetic_grammar_labels(seed, wording):
    rng = np.random.default_rng(seed)
    mismatches, n = [], 300
    for _ in range(n):
        findings = synthetic_reports.sample_findings(rng)
        report = synthetic_reports.write_report(findings, rng, wording=wording)
        text = " . ".join(t for t in (report.sections["FINDINGS"], report.sections["IMPRESSION"]) if t)
        labels = label_report(text)
        got = {k for k, v in labels.items() if v == 1}
        if got != expected_positives(findings) or -1 in labels.values():
            mismatches.append((text, sorted(expected_positives(findings)), sorted(got)))
    # Measured: 0 mismatches in 3,000 generated reports (seeds 0-5).
    assert len(mismatches) <= n // 100, mismatches[:5]


# --------------------------------------------------------------------------- MeSH


@pytest.mark.parametrize("terms, expected", [
    (["normal"], {"No Finding"}),
    (["Cardiomegaly/mild"], {"Cardiomegaly"}),
    (["Cardiac Shadow/enlarged"], {"Cardiomegaly"}),
    (["Mediastinum/enlarged"], {"Enlarged Cardiomediastinum"}),
    (["Pulmonary Atelectasis/base/left"], {"Atelectasis"}),
    (["Opacity/lung/base/left", "Infiltrate/lung/lower lobe/right"], {"Lung Opacity"}),
    (["Airspace Disease/lung/middle lobe/right"], {"Lung Opacity"}),
    (["Nodule/lung/upper lobe/right"], {"Lung Lesion"}),
    (["Mass/lung/hilum/left"], {"Lung Lesion"}),
    (["Calcified Granuloma/lung/upper lobe/right"], {"No Finding"}),
    (["Pneumothorax/apex/right"], {"Pneumothorax"}),
    (["Fractures, Bone/ribs/left"], {"Fracture"}),
    (["Pleural Effusion/left/small"], {"Pleural Effusion"}),
    (["Edema"], {"Edema"}),
    (["Pulmonary Edema/interstitial"], {"Edema"}),
    (["Pulmonary Congestion/mild"], {"Edema"}),
    (["Consolidation/lung/base/right"], {"Consolidation"}),
    (["Pneumonia/lung/lower lobe/left"], {"Pneumonia"}),
    (["Thickening/pleura/apex/bilateral/mild"], {"Pleural Other"}),
    (["Catheters, Indwelling"], {"Support Devices", "No Finding"}),
    (["Implanted Medical Device/left", "Medical Device"], {"Support Devices", "No Finding"}),
    (["Lung/hypoinflation", "Thoracic Vertebrae/degenerative"], {"No Finding"}),
    (["Cardiomegaly", "Catheters, Indwelling"], {"Cardiomegaly", "Support Devices"}),
])
def test_mesh_mapping(terms, expected):
    assert mesh_observations(terms) == expected


def test_mesh_unindexed():
    assert mesh_observations([]) is None
    assert mesh_observations(["No Indexing"]) is None
    assert mesh_observations(None) is None


def test_agreement_counts_and_undefined_values():
    df = pd.DataFrame([
        {"findings": "Mild cardiomegaly.", "impression": None, "mesh_major": ["Cardiomegaly/mild"]},
        {"findings": "Heart size normal.", "impression": "No acute disease.", "mesh_major": ["normal"]},
        {"findings": "Cardiomegaly.", "impression": None, "mesh_major": ["normal"]},
        {"findings": None, "impression": "Possible effusion.", "mesh_major": ["Pleural Effusion/left"]},
        {"findings": "Clear.", "impression": None, "mesh_major": ["No Indexing"]},
        {"findings": "Clear.", "impression": None, "mesh_major": []},
        {"findings": None, "impression": None, "mesh_major": ["normal"]},
    ])
    result = agreement_with_mesh(df)
    assert result["n_reports"] == 4 and result["reports_total"] == 7
    assert result["excluded"] == {"no_mesh_terms": 1, "no_indexing": 1, "no_text": 1}
    cardio = result["per_observation"]["Cardiomegaly"]
    assert (cardio["mesh_positive"], cardio["labeler_positive"], cardio["both"]) == (1, 2, 1)
    assert cardio["precision"] == 0.5 and cardio["recall"] == 1.0 and cardio["accuracy"] == 0.75
    assert cardio["f1"] == round(2 / 3, 4)
    effusion = result["per_observation"]["Pleural Effusion"]  # uncertain is not positive by default
    assert effusion["labeler_positive"] == 0 and effusion["precision"] is None and effusion["recall"] == 0.0
    assert effusion["cohen_kappa"] == 0.0  # defined: MeSH varies, the labeler does not
    edema = result["per_observation"]["Edema"]  # nobody says edema: everything undefined but accuracy
    assert edema["precision"] is None and edema["recall"] is None and edema["f1"] is None
    assert edema["cohen_kappa"] is None and edema["accuracy"] == 1.0
    lenient = agreement_with_mesh(df, uncertain_as_positive=True)
    assert lenient["per_observation"]["Pleural Effusion"]["both"] == 1
    assert json.dumps(result)  # JSON-ready, no numpy scalars


# --------------------------------------------------------------------------- the stage


def _run_stage(project_root, python_exe, tmp_path, sample_dir):
    reports = pd.DataFrame([
        {"report_id": "CXR1", "comparison": None, "indication": None, "findings": "Mild cardiomegaly.",
         "impression": None, "mesh_major": ["Cardiomegaly/mild"], "image_ids": ["a"], "source_file": "1.xml"},
        {"report_id": "CXR2", "comparison": None, "indication": None, "findings": "Lungs are clear.",
         "impression": "No acute disease.", "mesh_major": ["normal"], "image_ids": ["b"], "source_file": "2.xml"},
    ], columns=REPORT_COLUMNS)
    reports.to_parquet(tmp_path / "reports.parquet")
    (tmp_path / "params.yaml").write_text(f"labeler:\n  sample_dir: {sample_dir}\n")
    (tmp_path / "extract.json").write_text(json.dumps({"data_source": "synthetic"}))
    out = tmp_path / "metrics" / "labeler.json"
    subprocess.run([python_exe, str(project_root / "stages" / "labeler.py"),
                    "--reports", str(tmp_path / "reports.parquet"), "--params", str(tmp_path / "params.yaml"),
                    "--extract-metrics", str(tmp_path / "extract.json"), "--out", str(out)],
                   check=True, cwd=tmp_path)
    return json.loads(out.read_text())


def test_stage_without_the_sample(project_root, python_exe, tmp_path):
    result = _run_stage(project_root, python_exe, tmp_path, tmp_path / "absent")
    assert result["labeler"]
    assert result["collection"]["data_source"] == "synthetic"
    assert result["collection"]["n_reports"] == 2
    assert result["collection"]["per_observation"]["Cardiomegaly"]["f1"] == 1.0
    assert result["shared_sample"] is None and "absent" in result["shared_sample_missing"]


def test_stage_with_the_sample(project_root, python_exe, tmp_path, shared_sample):
    result = _run_stage(project_root, python_exe, tmp_path, shared_sample)
    assert result["shared_sample"]["reports_total"] == 63
    assert result["shared_sample"]["micro"]["f1"] >= 0.93
    assert "micro" in result["shared_sample"]["with_uncertain_as_positive"]
    assert "shared_sample_missing" not in result
