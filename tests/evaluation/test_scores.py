"""Evaluation metrics: BLEU equal to pycocoevalcap's, METEOR via Java (None without it), ROUGE-L,
CIDEr-D, clinical P/R/F1 with undefined values, bootstrap and paired bootstrap intervals."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from cxrgen.data.extract import parse_report_xml
from cxrgen.data.text import clean
from cxrgen.evaluation.scores import (
    CORRECT,
    GUESS,
    HYP_LEN,
    REF_LEN,
    MeteorScorer,
    ReferenceNgrams,
    ScoringInputError,
    TextScores,
    bleu_statistics,
    bootstrap,
    bootstrap_replicates,
    clinical_metrics,
    corpus_bleu,
    json_ready,
    meteor_safe,
    paired_difference,
    resample_counts,
    study_bleu_statistics,
    text_metrics,
)

NORMAL = (
    "the heart is normal in size . the mediastinum is unremarkable . "
    "the lungs are clear . no pneumothorax or pleural effusion ."
)


# ----------------------------------------------------------------------------- helpers


def _coco_bleu(hypotheses, references) -> list[float]:
    """pycocoevalcap's corpus BLEU-1..4 (references: a string or a list of strings per study)."""
    gts = {i: ([r] if isinstance(r, str) else list(r)) for i, r in enumerate(references)}
    res = {i: [h] for i, h in enumerate(hypotheses)}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return score


def _sample_findings(shared_sample: Path) -> list[str]:
    """Every distinct FINDINGS text of the real sample (XML and R2Gen annotation), R2Gen-cleaned."""
    texts = []
    for path in sorted((shared_sample / "ecgen-radiology").glob("*.xml")):
        findings = parse_report_xml(path.read_bytes(), path.name)["findings"]
        if findings:
            texts.append(findings)
    annotation = json.loads((shared_sample / "annotation_sample.json").read_text())
    texts += [entry["report"] for split in annotation.values() for entry in split]
    cleaned = [clean(text, "r2gen") for text in texts]
    return list(dict.fromkeys(text for text in cleaned if text.split()))


@pytest.fixture(scope="module")
def findings(shared_sample) -> list[str]:
    texts = _sample_findings(shared_sample)
    assert len(texts) >= 50
    return texts


def _shuffled(texts: list[str], seed: int = 0) -> list[str]:
    out = list(texts)
    random.Random(seed).shuffle(out)
    return out


def _need_java():
    if shutil.which("java") is None:
        if os.environ.get("CI"):
            pytest.fail("java is required under CI (bin/setup installs it)")
        pytest.skip("java not on PATH")


def _synthetic_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Report-like random texts: hypotheses share part of their reference's words."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(30)]
    hyps, refs = [], []
    for _ in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(8, 30))]
        hyp = [word if rng.random() < 0.6 else rng.choice(vocab) for word in ref]
        hyp = hyp[: max(1, len(hyp) + rng.randint(-5, 5))]
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


# ----------------------------------------------------------------------------- BLEU


@pytest.mark.parametrize("system", ["shuffled", "constant", "truncated", "some_empty", "identical"])
def test_bleu_equals_pycocoevalcap_on_real_findings(findings, system):
    refs = findings
    hyps = {
        "shuffled": _shuffled(refs),
        "constant": [NORMAL] * len(refs),
        "truncated": [" ".join(r.split()[: len(r.split()) // 2]) for r in refs],  # brevity penalty
        "some_empty": ["" if i % 3 == 0 else h for i, h in enumerate(_shuffled(refs, 1))],
        "identical": list(refs),
    }[system]
    ours, theirs = corpus_bleu(hyps, refs), _coco_bleu(hyps, refs)
    assert ours == pytest.approx(theirs, abs=1e-9, rel=0)
    assert text_metrics(hyps, refs, meteor=False).as_dict()["bleu_4"] == pytest.approx(theirs[3], abs=1e-9, rel=0)


def test_bleu_equals_pycocoevalcap_on_random_tokens():
    rng = random.Random(7)
    for _ in range(300):
        vocab = [f"t{i}" for i in range(rng.randint(2, 12))]

        def text():
            return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 15)))

        n = rng.randint(1, 25)
        hyps = [text() for _ in range(n)]
        refs = [[text() for _ in range(rng.randint(1, 3))] for _ in range(n)]
        refs = [r[0] if len(r) == 1 else r for r in refs]  # mix single strings and lists
        assert corpus_bleu(hyps, refs) == pytest.approx(_coco_bleu(hyps, refs), abs=1e-9, rel=0)


def test_reference_ngrams_give_the_totals_of_one_hypothesis_for_every_study():
    """The constant floor's choice counts the references once (ReferenceNgrams); its totals are
    the ones bleu_statistics sums for [h] * n, on random texts (repeated words: clipping) and on
    the empty hypothesis."""
    rng = random.Random(11)
    for _ in range(200):
        vocab = [f"t{i}" for i in range(rng.randint(2, 8))]

        def text(low=0):
            return " ".join(rng.choice(vocab) for _ in range(rng.randint(low, 14)))

        refs = [text(low=1) for _ in range(rng.randint(1, 12))]
        indexed = ReferenceNgrams(refs)
        for hyp in [text() for _ in range(5)] + [""]:
            expected = bleu_statistics([hyp] * len(refs), refs).sum(axis=0)
            np.testing.assert_array_equal(indexed.totals(hyp), expected)


def test_bleu_statistics_by_hand():
    stats = study_bleu_statistics("a a b c", "a b c d a")
    assert stats[HYP_LEN] == 4 and stats[REF_LEN] == 5
    # 1-grams: a (2, ref 2), b, c -> 4; 2-grams: "a a" 0, "a b" 1, "b c" 1 -> 2; 3-grams: "a b c" 1
    assert list(stats[CORRECT]) == [4, 2, 1, 0]
    assert list(stats[GUESS]) == [4, 3, 2, 1]
    # "closest" reference length, ties to the shorter one; clipping by the max count in any ref
    tie = study_bleu_statistics("a a a", ["a a a a", "a a"])
    assert tie[REF_LEN] == 2 and tie[CORRECT][0] == 3
    # an empty hypothesis adds nothing but its reference's length
    assert list(study_bleu_statistics("", "a b")) == [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    assert bleu_statistics(["a", ""], ["a", "b"]).shape == (2, 10)


def test_perfect_hypotheses_give_bleu_one(findings):
    bleu = corpus_bleu(findings, findings)
    assert bleu == pytest.approx([1.0] * 4, abs=1e-9, rel=0)
    assert corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx([1.0] * 4, abs=1e-9, rel=0)


def test_empty_hypotheses_give_bleu_zero():
    bleu = corpus_bleu(["", ""], ["the heart is normal .", "lungs clear ."])
    assert bleu == pytest.approx([0.0] * 4, abs=1e-12)
    assert bleu == pytest.approx(_coco_bleu(["", ""], ["the heart is normal .", "lungs clear ."]), abs=1e-12)


def test_nltk_agrees_when_every_order_matches(findings):
    """nltk's corpus_bleu uses the same closest-length rule and brevity penalty; it differs only
    by pycocoevalcap's tiny/small constants (relative ~1e-9 / n-gram count)."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    hyps = _shuffled(findings)
    weights = [(1.0,), (0.5, 0.5), (1 / 3,) * 3, (0.25,) * 4]
    theirs = nltk_corpus_bleu([[r.split()] for r in findings], [h.split() for h in hyps], weights=weights)
    assert corpus_bleu(hyps, findings) == pytest.approx(theirs, abs=1e-9, rel=0)


def test_nltk_differs_when_an_order_has_no_match():
    """With no 3- or 4-gram match nltk gives ~0 (and warns); pycocoevalcap's tiny constant keeps a
    small positive value, which we reproduce."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    hyps, refs = ["a b c d", "b a d c"], ["a b x c d y", "b a z d c"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nltk_corpus_bleu([[r.split()] for r in refs], [h.split() for h in hyps], weights=(0.25,) * 4)
    ours = corpus_bleu(hyps, refs)
    assert theirs < 1e-100
    assert 1e-9 < ours[3] < 1e-7
    assert ours == pytest.approx(_coco_bleu(hyps, refs), abs=1e-15, rel=1e-9)


@pytest.mark.parametrize(
    ("hyps", "refs", "match"),
    [
        (["<start> the heart ."], ["the heart ."], "<start>"),
        (["the heart ."], ["the heart . <end>"], "<end>"),
        (["the heart . <pad> <pad>"], ["the heart ."], "<pad>"),
        (["a", "b"], ["a"], "2 hypotheses but 1"),
        ([], [], "no studies"),
        (["a"], ["  "], "empty reference"),
        ([None], ["a"], "not a string"),
    ],
)
def test_text_metrics_refuses_bad_input(hyps, refs, match):
    with pytest.raises(ScoringInputError, match=match):
        text_metrics(hyps, refs, meteor=False)


# ----------------------------------------------------------------------------- ROUGE-L, CIDEr-D


def test_rouge_and_cider_are_pycocoevalcaps(findings):
    hyps = _shuffled(findings)
    scores = text_metrics(hyps, findings, meteor=False)
    gts = {i: [r] for i, r in enumerate(findings)}
    res = {i: [h] for i, h in enumerate(hyps)}
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    assert scores.rouge_l == pytest.approx(rouge, abs=1e-12)
    assert scores.cider == pytest.approx(cider, abs=1e-12)
    np.testing.assert_allclose(scores.rouge_l_per_study, rouge_each, atol=1e-12)
    np.testing.assert_allclose(scores.cider_per_study, cider_each, atol=1e-12)
    assert scores.n_studies == len(findings) == len(scores.bleu_stats)
    assert scores["cider"] == scores.cider and set(scores.as_dict()) == {
        "bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"
    }
    json.dumps(json_ready(scores))


# ----------------------------------------------------------------------------- METEOR


def test_meteor_is_none_with_a_warning_without_java(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    with caplog.at_level(logging.WARNING, logger="cxrgen.evaluation.scores"):
        with pytest.warns(RuntimeWarning, match="METEOR unavailable.*java"):
            scores = text_metrics(["the heart is normal ."], ["the heart is normal ."])
    assert scores.meteor is None and scores.meteor_per_study is None
    assert "java" in scores.meteor_note
    assert any("METEOR unavailable" in r.message and "java" in r.message for r in caplog.records)
    assert scores.bleu_1 == pytest.approx(1.0) and scores.rouge_l == pytest.approx(1.0)
    assert bootstrap(scores, n_resamples=20)["meteor"] is None
    assert json_ready(scores)["meteor"] is None


def test_meteor_is_none_when_the_jar_fails(monkeypatch, tmp_path):
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    fake_java = tmp_path / "java"
    fake_java.write_text("#!/bin/sh\necho 'Error: Unable to access jarfile meteor-1.5.jar' >&2\nexit 1\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    with pytest.warns(RuntimeWarning, match="Unable to access jarfile"):
        scores = text_metrics(["lungs clear ."], ["lungs clear ."])
    assert scores.meteor is None and "Unable to access jarfile" in scores.meteor_note
    assert len(started) == 1 and started[0].poll() is not None


def test_meteor_real_value_and_no_leaked_process(findings, monkeypatch):
    _need_java()
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    hyps = _shuffled(findings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "METEOR unavailable" warning allowed
        scores = text_metrics(hyps, findings)
    assert scores.meteor is not None and 0.05 < scores.meteor < 0.6
    assert scores.meteor_note is None
    assert scores.meteor_per_study.shape == (len(findings),)
    assert ((scores.meteor_per_study >= 0) & (scores.meteor_per_study <= 1)).all()
    # corpus METEOR aggregates statistics: close to, but not, the mean of segment scores
    assert abs(scores.meteor - scores.meteor_per_study.mean()) < 0.1
    assert len(started) == 1 and started[0].poll() is not None, "the Java process was left running"
    interval = bootstrap(scores, n_resamples=200)["meteor"]
    assert interval["estimate"] == scores.meteor  # the jar's corpus score, not the segment mean
    assert interval["low"] < scores.meteor < interval["high"]
    counts = resample_counts(len(findings), 1, seed=0)
    counts[:] = 1  # the "resample" that is the full set gives the corpus score back
    assert bootstrap_replicates(scores, None, counts)["meteor"][0] == pytest.approx(scores.meteor)


def test_meteor_survives_line_protocol_breakers(findings):
    _need_java()
    refs = findings[:10]
    hyps = _shuffled(refs)
    broken = [h.replace(" . ", " ||| . \n", 1) + "\r\n|||| \u2028" for h in hyps]
    with MeteorScorer() as meteor:
        clean_scores = meteor.score(hyps, refs)
        broken_scores = meteor.score(broken, [r + " |||" for r in refs])
        perfect = meteor.score(refs, refs)
        process = meteor.process
        reused = text_metrics(hyps, refs, meteor=meteor)  # a scorer passed in stays open
        assert process.poll() is None
    assert process.poll() is not None
    assert broken_scores[0] == pytest.approx(clean_scores[0], abs=1e-12)
    np.testing.assert_allclose(broken_scores[1], clean_scores[1], atol=1e-12)
    assert perfect[0] > clean_scores[0]
    assert reused.meteor == pytest.approx(clean_scores[0], abs=1e-12)
    assert meteor_safe("a ||| b\nc||||d\r\n") == "a b c d"


# ----------------------------------------------------------------------------- clinical

OBS = ["A", "B", "C", "D", "E"]
nan = np.nan
GEN = np.array(
    [
        # A    B    C    D    E
        [1, 0, nan, 1, 0],
        [1, -1, nan, 0, 0],
        [0, nan, nan, 0, 0],
        [nan, 1, nan, 0, 0],
    ],
    dtype=np.float32,
)
REF = np.array(
    [
        [1, 1, nan, 0, 1],
        [0, -1, 0, 0, nan],
        [1, nan, nan, 0, nan],
        [nan, nan, 0, 0, nan],
    ],
    dtype=np.float32,
)


def test_clinical_metrics_by_hand():
    m = clinical_metrics(GEN, REF, OBS)
    per = m["per_observation"]
    assert per["A"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "generated": 2,
                        "tp": 1, "fp": 1, "fn": 1}
    assert (per["B"]["precision"], per["B"]["recall"], per["B"]["f1"]) == (0.0, 0.0, 0.0)
    # no positive on either side: everything undefined, never 0
    assert (per["C"]["precision"], per["C"]["recall"], per["C"]["f1"]) == (None, None, None)
    # generated positive, no reference positive: precision 0, recall undefined, F1 0
    assert (per["D"]["precision"], per["D"]["recall"], per["D"]["f1"]) == (0.0, None, 0.0)
    # reference positive, none generated: precision undefined, recall 0, F1 0
    assert (per["E"]["precision"], per["E"]["recall"], per["E"]["f1"]) == (None, 0.0, 0.0)
    assert m["micro_precision"] == m["micro_recall"] == m["micro_f1"] == pytest.approx(0.25)
    assert m["macro_f1"] == pytest.approx(0.125) and m["macro_f1_n"] == 4
    assert m["macro_precision"] == pytest.approx(0.5 / 3) and m["macro_precision_n"] == 3
    assert m["macro_recall"] == pytest.approx(0.5 / 3) and m["macro_recall_n"] == 3
    assert m["positives_generated"] == 4 and m["positives_reference"] == 4
    assert m["per_study"]["tp"].shape == (4, 5)
    assert m["per_study"]["tp"].sum() == 1 and m["per_study"]["fp"].sum() == 3 and m["per_study"]["fn"].sum() == 3
    json.dumps(json_ready(m))


def test_clinical_uncertain_as_positive():
    m = clinical_metrics(GEN, REF, OBS, uncertain_as_positive=True)
    b = m["per_observation"]["B"]
    assert (b["tp"], b["fp"], b["fn"], b["f1"]) == (1, 1, 1, 0.5)
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 3))  # D adds a fp, E a fn
    assert m["uncertain_as_positive"] is True
    # bool matrices are already-decided positives
    same = clinical_metrics(GEN == 1, REF == 1, OBS)
    assert same["micro_f1"] == clinical_metrics(GEN, REF, OBS)["micro_f1"]


def test_clinical_all_undefined_and_bad_input():
    none = np.full((3, 2), nan)
    m = clinical_metrics(none, np.zeros((3, 2)), ["X", "Y"])
    assert m["micro_precision"] is None and m["micro_recall"] is None and m["micro_f1"] is None
    assert m["macro_f1"] is None and m["macro_f1_n"] == 0
    assert bootstrap(None, m, n_resamples=10)["micro_f1"] is None
    with pytest.raises(ScoringInputError, match="shape"):
        clinical_metrics(np.zeros((3, 3)), np.zeros((3, 3)), ["X", "Y"])
    with pytest.raises(ScoringInputError, match="1, 0, -1 or nan"):
        clinical_metrics(np.full((1, 2), 2.0), np.zeros((1, 2)), ["X", "Y"])
    with pytest.raises(ScoringInputError, match="rows"):
        clinical_metrics(np.zeros((2, 2)), np.zeros((3, 2)), ["X", "Y"])


# ----------------------------------------------------------------------------- bootstrap


def _random_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.choice([1.0, 0.0, -1.0, nan], p=[0.2, 0.3, 0.1, 0.4], size=(n, 14))
    gen = np.where(rng.random((n, 14)) < 0.7, ref, rng.choice([1.0, 0.0, nan], size=(n, 14)))
    return gen, ref


def test_resample_counts():
    counts = resample_counts(50, 300, seed=3)
    assert counts.shape == (300, 50) and (counts.sum(axis=1) == 50).all()
    assert np.array_equal(counts, resample_counts(50, 300, seed=3))
    assert not np.array_equal(counts, resample_counts(50, 300, seed=4))


def test_bootstrap_replicates_are_the_metrics_of_each_resample():
    """Vectorised replicates equal the metrics recomputed on explicitly resampled studies."""
    hyps, refs = _synthetic_pairs(40, seed=1)
    scores = text_metrics(hyps, refs, meteor=False)
    gen, ref = _random_labels(40, seed=1)
    clinical = clinical_metrics(gen, ref, [f"o{i}" for i in range(14)])
    counts = resample_counts(40, 5, seed=9)
    reps = bootstrap_replicates(scores, clinical, counts)
    assert reps["meteor"] is None
    for b in range(5):
        idx = np.repeat(np.arange(40), counts[b])
        resampled_h, resampled_r = [hyps[i] for i in idx], [refs[i] for i in idx]
        coco = _coco_bleu(resampled_h, resampled_r)
        for k in range(4):
            assert reps[f"bleu_{k + 1}"][b] == pytest.approx(coco[k], abs=1e-9, rel=0)
        assert reps["rouge_l"][b] == pytest.approx(scores.rouge_l_per_study[idx].mean())
        assert reps["cider"][b] == pytest.approx(scores.cider_per_study[idx].mean())  # fixed idf
        resampled_clinical = clinical_metrics(gen[idx], ref[idx], [f"o{i}" for i in range(14)])
        assert reps["micro_f1"][b] == pytest.approx(resampled_clinical["micro_f1"])
        # no "No Finding" among these names: every observation counts as abnormal
        assert reps["abnormal_f1"][b] == pytest.approx(resampled_clinical["abnormal_f1"])


def test_abnormal_findings_leave_no_finding_out_by_hand():
    names = ["No Finding", "A", "B"]
    #            study 1: normal, said normal    study 2: A, said normal    study 3: A and B, said A
    ref = np.array([[1, nan, nan], [nan, 1, nan], [nan, 1, 1]])
    gen = np.array([[1, nan, nan], [1, nan, nan], [nan, 1, nan]])
    m = clinical_metrics(gen, ref, names)
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))        # tp 2 (NF, A), fp 1, fn 2
    assert m["abnormal_precision"] == 1.0 and m["abnormal_recall"] == pytest.approx(1 / 3)
    assert m["abnormal_f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    assert m["abnormal_macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2) and m["abnormal_macro_f1_n"] == 2
    assert "abnormal_columns" not in json_ready(m)
    counts = resample_counts(3, 4, seed=0)
    reps = bootstrap_replicates(None, m, counts)
    for b in range(4):
        idx = np.repeat(np.arange(3), counts[b])
        again = clinical_metrics(gen[idx], ref[idx], names)["abnormal_f1"]
        assert (np.isnan(reps["abnormal_f1"][b]) and again is None) or reps["abnormal_f1"][b] == pytest.approx(again)


def test_bootstrap_is_deterministic_and_contains_the_estimate(findings):
    scores = text_metrics([NORMAL] * len(findings), findings, meteor=False)
    gen, ref = _random_labels(len(findings), seed=0)
    clinical = clinical_metrics(gen, ref, [f"o{i}" for i in range(14)])
    first = bootstrap(scores, clinical, n_resamples=500, seed=0)
    assert first == bootstrap(scores, clinical, n_resamples=500, seed=0)
    assert first != bootstrap(scores, clinical, n_resamples=500, seed=1)
    assert set(first) >= {"bleu_1", "bleu_4", "rouge_l", "cider", "meteor", "micro_f1"}
    assert first["bleu_4"]["estimate"] == scores.bleu_4
    assert first["micro_f1"]["estimate"] == clinical["micro_f1"]
    for name, entry in first.items():
        if entry is None:
            assert name == "meteor"
            continue
        assert entry["low"] <= entry["estimate"] <= entry["high"], name
        assert entry["low"] < entry["high"], name


def test_bootstrap_narrower_with_more_studies():
    widths = {}
    for n in (40, 640):
        hyps, refs = _synthetic_pairs(n, seed=n)
        gen, ref = _random_labels(n, seed=n)
        intervals = bootstrap(
            text_metrics(hyps, refs, meteor=False),
            clinical_metrics(gen, ref, [f"o{i}" for i in range(14)]),
            n_resamples=400,
        )
        widths[n] = {k: v["high"] - v["low"] for k, v in intervals.items() if v is not None}
    for name in widths[40]:
        # 16x the studies: about 4x narrower; 2x is a safe bound
        assert widths[640][name] < widths[40][name] / 2, name


def test_bootstrap_refuses_mismatched_study_counts():
    hyps, refs = _synthetic_pairs(10, seed=0)
    gen, ref = _random_labels(11, seed=0)
    with pytest.raises(ScoringInputError, match="different numbers of studies"):
        bootstrap(text_metrics(hyps, refs, meteor=False), clinical_metrics(gen, ref, list("abcdefghijklmn")))


def test_paired_difference(findings):
    model = text_metrics(findings, findings, meteor=False)  # a perfect "model"
    floor = text_metrics([NORMAL] * len(findings), findings, meteor=False)
    gen, ref = _random_labels(len(findings), seed=2)
    obs = [f"o{i}" for i in range(14)]
    model_ce = clinical_metrics(ref, ref, obs)
    floor_ce = clinical_metrics(gen, ref, obs)

    same = paired_difference(floor, floor, floor_ce, floor_ce, n_resamples=300)
    for name, entry in same.items():
        if entry is None:
            continue
        assert entry["estimate"] == 0 and entry["low"] == 0 and entry["high"] == 0, name
        assert not entry["a_better"] and not entry["b_better"]

    diff = paired_difference(model, floor, model_ce, floor_ce, n_resamples=300)
    assert diff["bleu_4"]["estimate"] == pytest.approx(model.bleu_4 - floor.bleu_4)
    assert diff["bleu_4"]["a_better"] and diff["micro_f1"]["a_better"]
    assert diff["meteor"] is None
    reverse = paired_difference(floor, model, floor_ce, model_ce, n_resamples=300)
    assert reverse["bleu_4"]["b_better"]
    assert reverse["bleu_4"]["low"] == pytest.approx(-diff["bleu_4"]["high"])

    other = text_metrics(findings[:-1] + ["x"], findings[:-1] + ["y"], meteor=False)
    with pytest.raises(ScoringInputError, match="same references"):
        paired_difference(model, other)
    assert isinstance(model, TextScores) and not math.isnan(model.cider)


def test_meteor_timeout_kills_the_process():
    """A jar that does not answer in time (here: still starting) gives None, and is killed."""
    _need_java()
    with MeteorScorer(timeout_s=0.2) as meteor:
        process = meteor.process
        with pytest.warns(RuntimeWarning, match="did not answer within 0.2 s"):
            assert meteor.score(["lungs clear ."], ["lungs clear ."]) is None
        assert process.poll() is not None
        with pytest.warns(RuntimeWarning, match="did not answer"):  # later calls: None again
            assert meteor.score(["lungs clear ."], ["lungs clear ."]) is None
