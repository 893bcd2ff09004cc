"""The comparison table says, for every model and floor, whether the model beats it."""

from __future__ import annotations

import pytest

from cxrgen.errors import BadInput
from cxrgen.evaluation.compare import comparison_markdown

METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "micro_f1", "abnormal_f1")


def _row(value: float, meteor=True, distinct=1) -> dict:
    row = {m: value for m in METRICS}
    row.update(micro_precision=value, micro_recall=value, bleu_4_low=value - 0.01, bleu_4_high=value + 0.01,
               micro_f1_low=value - 0.02, micro_f1_high=value + 0.02, abnormal_precision=value,
               abnormal_recall=value, abnormal_macro_f1=value, abnormal_f1_low=value - 0.03,
               abnormal_f1_high=value + 0.03, distinct_reports=distinct, mean_tokens=20.0)
    if not meteor:
        row["meteor"] = None
    return row


def _versus(verdict: str, difference: float) -> dict:
    low, high = {"better": (0.01, 0.2), "worse": (-0.2, -0.01), "not distinguishable": (-0.05, 0.05)}[verdict]
    return {m: {"difference": difference, "low": low, "high": high, "verdict": verdict} for m in METRICS}


def _model(verdicts: dict) -> dict:
    record = {"decode": {"beam_width": 3}, "bootstrap": {"n_resamples": 100, "seed": 0}, "train_seed": 0,
              "data_source": "synthetic", "weights": "random", "test_studies": 30, "reference_mean_tokens": 24.5,
              "greedy": _row(0.2), "beam": _row(0.25, distinct=12)}
    for floor, verdict in verdicts.items():
        record[f"beam_vs_{floor}"] = _versus(verdict, 0.1 if verdict == "better" else -0.1)
    return record


FLOORS = {"constant_report": "no acute disease .", "constant_val_bleu_4": 0.2,
          "constant": _row(0.17, meteor=False), "retrieval": _row(0.12), "label_oracle": _row(0.5, distinct=15),
          "split": {"method": "random", "seed": 0}}


def test_every_model_and_floor_is_in_the_table_with_its_verdict():
    text = comparison_markdown({"attention": _model({"constant": "better", "retrieval": "not distinguishable"}),
                                "baseline": _model({"constant": "worse", "retrieval": "worse"})}, FLOORS)
    assert "| floor: constant |" in text and "| floor: retrieval |" in text
    assert "attention (beam 3; train seed 0)" in text and "baseline (greedy; train seed 0)" in text
    assert "| ceiling: label oracle |" in text
    assert "attention BEATS the constant floor on abnormal-finding F1" in text
    assert "attention does NOT clearly beat the retrieval floor" in text
    assert "baseline does NOT beat (worse than) the constant floor" in text
    assert "0.250 [0.240, 0.260]" in text          # BLEU-4 with its interval
    assert "n/a" in text                            # the constant floor's missing METEOR, not 0
    assert "**synthetic**" in text and "**random**" in text
    assert "0.250 [0.220, 0.280]" in text          # abnormal-finding F1 with its interval
    assert "12 (40%)" in text                       # distinct reports: count and share of the 30 studies
    assert "attention: abnormal-finding F1 0.50 × the label oracle's; 12 distinct reports (oracle 15)" in text
    assert "references 24.5" in text


def test_a_floors_file_without_the_oracle_is_refused():
    floors = {key: value for key, value in FLOORS.items() if key != "label_oracle"}
    with pytest.raises(BadInput, match="label_oracle"):
        comparison_markdown({"attention": _model({"constant": "better", "retrieval": "better"})}, floors)


def test_no_models_is_an_error():
    with pytest.raises(BadInput):
        comparison_markdown({}, FLOORS)


def test_with_reports_chosen_by_the_findings_the_verdicts_are_on_that_decoding():
    record = _model({"constant": "worse", "retrieval": "worse"})          # the beam's verdicts
    record["decode"]["rerank_samples"] = 50
    record["final"] = "rerank"
    record["rerank"] = _row(0.45, distinct=20)
    for floor in ("constant", "retrieval"):
        record[f"rerank_vs_{floor}"] = _versus("better", 0.2)
    text = comparison_markdown({"attention": record}, FLOORS)
    assert "| attention (beam 3 + 50 samples, chosen by the findings; train seed 0) |" in text
    assert "attention BEATS the retrieval floor on abnormal-finding F1" in text
    assert "## In short (abnormal-finding F1; beam 3 + 50 samples, chosen by the findings)" in text
    assert "20 distinct reports (oracle 15)" in text
