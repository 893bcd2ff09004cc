"""Scoring systems the same way, the paired comparison with floors, the predictions table."""

from __future__ import annotations

import numpy as np
import pytest

from cxrgen.data import labeler
from cxrgen.errors import BadInput
from cxrgen.evaluation import evaluate
from cxrgen.tables import read_parquet

SETTINGS = {**evaluate.EVALUATE_DEFAULTS, "n_resamples": 200}
REFERENCES = (["the heart is enlarged . small right pleural effusion ."] * 10
              + ["the heart is normal . the lungs are clear . no pleural effusion ."] * 10
              + ["there is a left basilar opacity . heart size is normal ."] * 10)
CONSTANT = "the heart is normal . the lungs are clear . no pleural effusion ."


def _score(texts):
    reference_labels = labeler.label_matrix(REFERENCES)
    return evaluate.score_system(texts, REFERENCES, reference_labels, SETTINGS, meteor=False)


def test_a_system_that_states_the_findings_beats_the_constant_floor():
    model, floor = _score(list(REFERENCES)), _score([CONSTANT] * len(REFERENCES))
    result = evaluate.versus(model, floor, SETTINGS)
    assert result["bleu_4"]["verdict"] == "better" and result["micro_f1"]["verdict"] == "better"
    assert result["meteor"] is None            # not computed here: reported as missing, not as 0
    assert evaluate.versus(floor, floor, SETTINGS)["bleu_4"]["verdict"] == "not distinguishable"
    reversed_ = evaluate.versus(floor, model, SETTINGS)
    assert reversed_["micro_f1"]["verdict"] == "worse"


def test_summary_has_intervals_around_the_estimates_and_the_clinical_detail():
    scored = _score([CONSTANT] * 15 + list(REFERENCES[15:]))
    row = evaluate.summary(scored, SETTINGS)
    for metric in ("bleu_4", "micro_f1", "rouge_l", "cider"):
        assert row[f"{metric}_low"] <= row[metric] + 1e-9 and row[metric] <= row[f"{metric}_high"] + 1e-9
    assert row["meteor"] is None and "meteor_low" not in row
    assert row["clinical"]["per_observation"]["Cardiomegaly"]["support"] == 10
    assert row["distinct_reports"] == 2     # the constant is also the normal reference
    assert row["distinct_fraction"] == pytest.approx(2 / 30, abs=1e-6)


def test_abnormal_finding_f1_does_not_reward_a_normal_template():
    """The constant normal report is right on every normal study's "No Finding" (14-observation
    micro-F1 well above 0) but states no abnormal finding: abnormal-finding F1 is 0."""
    floor = evaluate.summary(_score([CONSTANT] * len(REFERENCES)), SETTINGS)
    assert floor["micro_f1"] > 0.25
    assert floor["abnormal_f1"] == 0.0 and floor["abnormal_recall"] == 0.0
    perfect = evaluate.summary(_score(list(REFERENCES)), SETTINGS)
    assert perfect["abnormal_f1"] == pytest.approx(1.0)
    assert perfect["abnormal_f1_low"] == pytest.approx(1.0)
    versus = evaluate.versus(_score(list(REFERENCES)), _score([CONSTANT] * len(REFERENCES)), SETTINGS)
    assert versus["abnormal_f1"]["verdict"] == "better"


def test_headline_is_flat_rounded_and_the_same_for_every_system():
    row = evaluate.summary(_score([CONSTANT] * 15 + list(REFERENCES[15:])), SETTINGS)
    head = evaluate.headline(row, {"image_gain": 0.0123})
    assert list(head) == [name for name, _ in evaluate.HEADLINE] + ["image_gain"]
    assert all(not isinstance(v, (dict, list)) for v in head.values())
    assert head["f1_abnormal"] == round(row["abnormal_f1"], 4) and head["distinct"] == round(2 / 30, 4)
    assert head["meteor"] is None          # missing stays missing


def test_true_labels_come_from_mesh_terms():
    import pandas as pd
    studies = pd.DataFrame({"split": ["train", "train", "test"], "text": ["a", "b", "c"],
                            "mesh_major": [["Cardiomegaly/mild"], ["No Indexing"], ["normal"]]})
    labels, indexed = evaluate.true_labels(studies, "train")
    assert indexed.tolist() == [True, False]
    assert labels[0, labeler.OBSERVATIONS.index("Cardiomegaly")] and not labels[1].any()
    labels, indexed = evaluate.true_labels(studies, "test")
    assert labels[0, labeler.OBSERVATIONS.index("No Finding")] and indexed.tolist() == [True]


def test_predictions_table_keeps_every_system_and_label(tmp_path):
    systems = {"greedy": _score(list(REFERENCES)), "beam": _score([CONSTANT] * len(REFERENCES))}
    ids = [f"CXR{i}" for i in range(len(REFERENCES))]
    path = tmp_path / "predictions.parquet"
    evaluate.write_predictions(path, ids, REFERENCES, labeler.label_matrix(REFERENCES), systems)
    table = read_parquet(path)
    assert table["report_id"].tolist() == ids
    assert table["beam"].tolist() == [CONSTANT] * len(REFERENCES)
    first = list(table["labels_reference"][0])
    cardiomegaly = labeler.OBSERVATIONS.index("Cardiomegaly")
    assert first[cardiomegaly] == 1 and len(first) == len(labeler.OBSERVATIONS)
    assert any(v is None or (isinstance(v, float) and np.isnan(v)) for v in first)   # not mentioned stays empty


def test_f1_plot_leaves_out_observations_nobody_states():
    rows = evaluate.f1_plot(_score(list(REFERENCES)))
    names = {row["observation"] for row in rows}
    assert {"Cardiomegaly", "Pleural Effusion"} <= names and "Fracture" not in names
    assert all(row["f1"] == pytest.approx(1.0) for row in rows)


def test_settings_refuse_unknown_keys_and_bad_values():
    with pytest.raises(BadInput, match="unknown keys"):
        evaluate.evaluate_settings({"evaluate": {"n_resample": 10}})
    with pytest.raises(BadInput, match="positive integer"):
        evaluate.evaluate_settings({"evaluate": {"n_resamples": 0}})
