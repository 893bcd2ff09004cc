"""Mean ± std over seeds from `dvc exp show --json` (the structure DVC 3 writes, trimmed)."""

from __future__ import annotations

import pytest

from cxrgen.errors import CxrgenError
from cxrgen.evaluation.seeds import collect, summary_markdown


def _run(name: str, seed: int, f1: float, bleu: float, epochs: int = 6) -> dict:
    return {"rev": f"{seed:040d}", "name": name, "data": {
        "params": {"params.yaml": {"data": {"train": {"seed": seed, "epochs": epochs}, "decode": {"beam_width": 3}}}},
        "metrics": {
            "metrics/attention.json": {"data": {"bleu_4": bleu, "f1_abnormal": f1, "meteor": None,
                                                "image_gain": 0.01 * seed}},
            "metrics/floor_retrieval.json": {"data": {"bleu_4": 0.1, "f1_abnormal": 0.3}},
        }}}


def _table(*runs) -> list:
    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "a" * 40, "name": "main", "data": {"params": {}, "metrics": {}},
             "experiments": [{"name": r["name"], "executor": None, "revs": [r]} for r in runs]}]


def test_mean_and_sample_std_per_metric_and_model():
    groups = collect(_table(_run("s0", 0, 0.4, 0.10), _run("s1", 1, 0.5, 0.12), _run("s2", 2, 0.6, 0.14)))
    (rows,) = groups.values()
    assert [r["seed"] for r in rows] == [0, 1, 2]
    text = summary_markdown(groups)
    assert "| attention | abnormal F1 | 0.500 ± 0.100 | 3 |" in text
    assert "| attention | abnormal F1 − retrieval floor | 0.200 ± 0.100 | 3 |" in text
    assert "| attention | val loss gain | 0.010 ± 0.010 | 3 |" in text
    assert "| attention | BLEU-4 | 0.120 ± 0.020 | 3 |" in text
    assert "METEOR" not in text                       # null everywhere: not shown as a number
    assert "seeds 0 (s0), 1 (s1), 2 (s2)" in text


def test_other_settings_are_never_averaged_together():
    groups = collect(_table(_run("a", 0, 0.4, 0.1), _run("b", 1, 0.6, 0.1), _run("c", 0, 0.9, 0.3, epochs=40)))
    assert sorted(len(rows) for rows in groups.values()) == [1, 2]
    assert "(one run)" in summary_markdown(groups)


def test_no_evaluated_runs_is_a_clear_error():
    with pytest.raises(CxrgenError, match="no experiments"):
        summary_markdown(collect(_table()))
