"""Scoring report generators and floors on the test split, the same way for every system.

Every system (a model's greedy, beam and findings-chosen output, the constant and retrieval floors,
the label oracle) is scored by
`score_system`: the literature's text metrics (cxrgen.evaluation.scores, pycocoevalcap-compatible) on the
cleaned reports, and clinical correctness (cxrgen.data.labeler on generated vs reference report →
precision / recall / F1 over the 14 CheXpert observations), each with bootstrap 95% intervals over
test studies. A model's metrics also hold, for each floor, the paired bootstrap difference
(model − floor) on every metric, so "beats the floor" is a statement with an interval.

The test split is only read here: nothing in training or floor choice looks at it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cxrgen.data import labeler
from cxrgen.device import describe_device
from cxrgen.errors import BadInput
from cxrgen.evaluation import floors, scores
from cxrgen.evaluation.systems import DECODINGS, FLOOR_STAGE_SYSTEMS, FLOORS, ORACLE, RERANK_AT_HALF, RERANK_FIRST
from cxrgen.features.store import FeatureStore, return_large_buffers_to_the_system
from cxrgen.files import read_json, write_json_atomic
from cxrgen.params import with_defaults
from cxrgen.tables import read_parquet, write_parquet

DECODE_CHUNK_BATCHES = 8   # test studies read and decoded at once: this many batches of evaluate.batch_size
EVALUATE_DEFAULTS = {"n_resamples": 1000, "seed": 0, "uncertain_as_positive": False, "batch_size": 64}
MAIN_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "micro_f1", "abnormal_f1")
# What DVC shows as metrics (`dvc metrics show`, `dvc exp show`, `dvc metrics diff`): one flat file per
# system with the same keys, so models and floors line up as rows of one narrow table. Everything
# else (greedy decoding, intervals, per-observation counts, paired differences) is in metrics/details/.
HEADLINE = (("bleu_1", "bleu_1"), ("bleu_2", "bleu_2"), ("bleu_3", "bleu_3"), ("bleu_4", "bleu_4"),
            ("meteor", "meteor"), ("rouge_l", "rouge_l"), ("cider", "cider"),
            ("f1_abnormal", "abnormal_f1"), ("f1_14", "micro_f1"), ("distinct", "distinct_fraction"),
            ("tokens", "mean_tokens"))


def evaluate_settings(params: dict) -> dict:
    settings = with_defaults(params, "evaluate", EVALUATE_DEFAULTS)
    for key in ("n_resamples", "batch_size"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise BadInput("params.yaml", f"evaluate.{key} must be a positive integer, not {settings[key]!r}")
    return settings


# ---------------------------------------------------------------------------------------------
# Inputs


def _read_json(path: Path) -> dict:
    return read_json(path, "not found (run the stages before evaluate)")


def load_studies(prepared_dir: str | Path) -> pd.DataFrame:
    path = Path(prepared_dir) / "studies.parquet"
    if not path.exists():
        raise BadInput(path, "not found (run the prepare stage)")
    return read_parquet(path)


def split_texts(studies: pd.DataFrame, split: str) -> tuple[list[str], list[str]]:
    rows = studies[studies["split"] == split]
    if rows.empty:
        raise BadInput("studies.parquet", f"the {split} split is empty")
    return rows["report_id"].tolist(), rows["text"].tolist()


def provenance(data_metrics: dict, features_info: dict, train_metrics: dict | None = None) -> dict:
    """What every number came from: data source, feature weights, split, seeds."""
    record = {
        "data_source": data_metrics.get("data_source"),
        "weights": features_info.get("weights"),
        "features_seed": features_info.get("seed"),
        "split": data_metrics.get("split"),
        "target": data_metrics.get("target"),
        "cleaning": data_metrics.get("cleaning"),
    }
    if train_metrics is not None:
        record["train_seed"] = train_metrics.get("train_seed")
    return record


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scored:
    texts: list[str]
    labels: np.ndarray            # (n, 14) labeler output, nan = not mentioned
    text: scores.TextScores
    clinical: dict


def score_system(texts: list[str], references: list[str], reference_labels: np.ndarray, settings: dict,
                 meteor: scores.MeteorScorer) -> Scored:
    labels = labeler.label_matrix(texts)
    text = scores.text_metrics(texts, references, meteor=meteor)
    clinical = scores.clinical_metrics(labels, reference_labels, labeler.OBSERVATIONS,
                                       uncertain_as_positive=settings["uncertain_as_positive"])
    return Scored(texts, labels, text, clinical)


def summary(scored: Scored, settings: dict) -> dict:
    """Point estimates, intervals, clinical detail and lengths of one system (JSON-ready)."""
    intervals = scores.bootstrap(scored.text, scored.clinical, settings["n_resamples"], settings["seed"])
    clinical = scores.json_ready(scored.clinical)
    result = {**scores.json_ready(scored.text), "micro_f1": clinical["micro_f1"],
              "micro_precision": clinical["micro_precision"], "micro_recall": clinical["micro_recall"],
              "macro_f1": clinical["macro_f1"]}
    for metric, interval in intervals.items():
        if interval is not None:
            result[f"{metric}_low"] = round(interval["low"], 6)
            result[f"{metric}_high"] = round(interval["high"], 6)
    for key in ("abnormal_f1", "abnormal_precision", "abnormal_recall", "abnormal_macro_f1", "abnormal_macro_f1_n"):
        result[key] = clinical[key]
    result["mean_tokens"] = mean_tokens(scored.texts)
    result["distinct_reports"] = len(set(scored.texts))
    result["distinct_fraction"] = round(result["distinct_reports"] / len(scored.texts), 6) if scored.texts else None
    result["clinical"] = clinical
    return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in result.items()}


def _round6(value):
    return None if value is None else round(float(value), 6)


def head_alone_scores(probabilities: np.ndarray, thresholds: np.ndarray, reference_labels: np.ndarray,
                      settings: dict) -> dict:
    """The finding head's own labels (probability above its calibrated threshold, and above 0.5)
    scored against the references like a report's: what a decoder that states exactly what the head
    reads would reach. Not a report; it tells reading the image apart from writing the report."""
    result = {}
    for name, cut in (("calibrated", thresholds), ("at_0.5", 0.5)):
        clinical = scores.clinical_metrics(np.asarray(probabilities) > cut, reference_labels, labeler.OBSERVATIONS,
                                           uncertain_as_positive=settings["uncertain_as_positive"])
        interval = scores.bootstrap(None, clinical, settings["n_resamples"], settings["seed"]).get("abnormal_f1")
        ready = scores.json_ready(clinical)
        result[name] = {"abnormal_f1": _round6(ready["abnormal_f1"]), "micro_f1": _round6(ready["micro_f1"]),
                        "abnormal_f1_low": None if interval is None else round(interval["low"], 6),
                        "abnormal_f1_high": None if interval is None else round(interval["high"], 6)}
    result["thresholds"] = {name: round(float(t), 2) for name, t in zip(labeler.OBSERVATIONS, thresholds)}
    return result


def mean_tokens(texts: list[str]) -> float | None:
    """Mean report length in words (tokens of the cleaned text), to 3 places; None for no reports."""
    return round(float(np.mean([len(t.split()) for t in texts])), 3) if texts else None


def versus(a: Scored, b: Scored, settings: dict) -> dict:
    """Paired bootstrap of a − b on every main metric: estimate, interval, and a plain verdict."""
    diffs = scores.paired_difference(a.text, b.text, a.clinical, b.clinical,
                                     settings["n_resamples"], settings["seed"])
    out = {}
    for metric in MAIN_METRICS:
        d = diffs.get(metric)
        if d is None:
            out[metric] = None
            continue
        verdict = "better" if d["low"] > 0 else "worse" if d["high"] < 0 else "not distinguishable"
        out[metric] = {"difference": round(d["estimate"], 6), "low": round(d["low"], 6),
                       "high": round(d["high"], 6), "verdict": verdict}
    return out


def headline(record: dict, extra: dict | None = None) -> dict:
    """The few numbers DVC shows for one system (rounded to 4 places), from its `summary`."""
    out = {}
    for name, key in HEADLINE:
        value = record.get(key)
        out[name] = round(value, 4) if isinstance(value, float) else value
    return {**out, **(extra or {})}


def _label_lists(labels: np.ndarray) -> list[list[int | None]]:
    return [[None if np.isnan(v) else int(v) for v in row] for row in labels]


def write_predictions(path: str | Path, report_ids: list[str], references: list[str], reference_labels: np.ndarray,
                      systems: dict[str, Scored]) -> None:
    """One row per test study: reference and every system's report and labels (CheXpert order)."""
    frame = {"report_id": report_ids, "reference": references, "labels_reference": _label_lists(reference_labels)}
    fields = [pa.field("report_id", pa.string()), pa.field("reference", pa.string()),
              pa.field("labels_reference", pa.list_(pa.int8()))]
    for name, scored in systems.items():
        frame[name] = scored.texts
        frame[f"labels_{name}"] = _label_lists(scored.labels)
        fields += [pa.field(name, pa.string()), pa.field(f"labels_{name}", pa.list_(pa.int8()))]
    write_parquet(pd.DataFrame(frame), path, schema=pa.schema(fields))


def f1_plot(scored: Scored) -> list[dict]:
    """F1 per observation (observations no report states on either side are left out)."""
    rows = []
    for name in labeler.OBSERVATIONS:
        entry = scored.clinical["per_observation"][name]
        if entry["f1"] is not None:
            rows.append({"observation": name, "f1": round(entry["f1"], 6), "support": entry["support"]})
    return rows


def length_plot(scored: Scored, references: list[str]) -> list[dict]:
    return [{"reference_tokens": len(r.split()), "generated_tokens": len(t.split())}
            for r, t in zip(references, scored.texts)]


# ---------------------------------------------------------------------------------------------
# The floors stage


def _pooled(features_dir: Path, split: str):
    """The split's pooled features in the feature store (opened, read a chunk at a time)."""
    return FeatureStore(features_dir).open(split, "pooled")


def true_labels(studies: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 14) bool positives from the human MeSH terms of a split's studies, and which rows had terms.

    Rows without MeSH terms (unindexed reports) are all False and flagged False in the second array.
    """
    rows = studies[studies["split"] == split]
    labels = np.zeros((len(rows), len(labeler.OBSERVATIONS)), bool)
    indexed = np.zeros(len(rows), bool)
    if "mesh_major" in rows:
        for i, terms in enumerate(rows["mesh_major"].tolist()):
            stated = labeler.mesh_observations(None if terms is None else list(terms))
            if stated is not None:
                indexed[i] = True
                labels[i] = [name in stated for name in labeler.OBSERVATIONS]
    return labels, indexed


def floor_reports(studies: pd.DataFrame, features_dir: str | Path) -> tuple[dict[str, list[str]], dict]:
    features_dir = Path(features_dir)
    _, train_texts = split_texts(studies, "train")
    _, val_texts = split_texts(studies, "val")
    _, test_texts = split_texts(studies, "test")
    constant, val_bleu_4 = floors.constant_report(train_texts, val_texts)
    retrieved = floors.retrieval_reports(_pooled(features_dir, "train"), train_texts, _pooled(features_dir, "test"))
    # The oracle's truth is the human MeSH indexing (the synthetic source writes MeSH terms from the
    # findings it drew); a test study without terms falls back to the labeler's reading of its report.
    train_truth, train_indexed = true_labels(studies, "train")
    test_truth, test_indexed = true_labels(studies, "test")
    if not train_indexed.any():
        raise BadInput("studies.parquet", "no training study has MeSH terms: the label oracle has no truth to match")
    fallback = labeler.positive_matrix(labeler.label_matrix(test_texts))
    test_truth = np.where(test_indexed[:, None], test_truth, fallback)
    oracle = floors.label_oracle_reports(train_truth[train_indexed],
                                         [t for t, ok in zip(train_texts, train_indexed) if ok], test_truth)
    chosen = {"constant_report": constant, "constant_val_bleu_4": round(val_bleu_4, 6),
              "retrieval": "nearest training study by cosine of whitened pooled features (both views)",
              "label_oracle": "training study whose MeSH-derived labels differ from the test study's true "
                              "labels in the fewest of the 14 observations",
              "label_oracle_truth": {"test_studies_with_mesh": int(test_indexed.sum()),
                                     "test_studies_labeler_fallback": int((~test_indexed).sum()),
                                     "training_candidates": int(train_indexed.sum())}}
    return {"constant": [constant] * len(test_texts), "retrieval": retrieved, ORACLE: oracle}, chosen


def run_floors(prepared_dir: str | Path, features_dir: str | Path, params: dict, data_metrics_path: str | Path,
               predictions_path: str | Path, metrics_path: str | Path, headline_dir: str | Path) -> dict:
    """Score the floors and the label oracle; details to `metrics_path`, one headline file per system
    (`<headline_dir>/floor_<name>.json`, the oracle's `oracle.json`) for DVC."""
    settings = evaluate_settings(params)
    studies = load_studies(prepared_dir)
    report_ids, references = split_texts(studies, "test")
    reference_labels = labeler.label_matrix(references)
    texts, chosen = floor_reports(studies, features_dir)
    with scores.MeteorScorer() as meteor:
        systems = {name: score_system(texts[name], references, reference_labels, settings, meteor)
                   for name in FLOOR_STAGE_SYSTEMS}
    write_predictions(predictions_path, report_ids, references, reference_labels, systems)
    metrics = {
        **provenance(_read_json(Path(data_metrics_path)), _read_json(Path(features_dir) / "features.json")),
        "test_studies": len(references),
        "reference_mean_tokens": mean_tokens(references),
        "labeler": labeler.LABELER_VERSION,
        "bootstrap": {"n_resamples": settings["n_resamples"], "seed": settings["seed"]},
        **chosen,
        **{name: summary(scored, settings) for name, scored in systems.items()},
    }
    for name in FLOOR_STAGE_SYSTEMS:
        filename = "oracle.json" if name == ORACLE else f"floor_{name}.json"
        write_json_atomic(Path(headline_dir) / filename, headline(metrics[name]))
    write_json_atomic(metrics_path, metrics)
    return metrics


def load_floors(predictions_path: str | Path, report_ids: list[str]) -> dict[str, list[str]]:
    """The floors' reports (what a model is compared with; the oracle is scored by the floors stage alone)."""
    table = read_parquet(predictions_path)
    if table["report_id"].tolist() != report_ids:
        raise BadInput(predictions_path, "its test studies differ from data/prepared's (rerun the floors stage)")
    missing = [name for name in FLOORS if name not in table]
    if missing:
        raise BadInput(predictions_path, f"no {', '.join(missing)} column (rerun the floors stage)")
    return {name: table[name].tolist() for name in FLOORS}


# ---------------------------------------------------------------------------------------------
# The evaluate stage (one model)


def run_evaluate(model_name: str, params: dict, model_path: str | Path, prepared_dir: str | Path,
                 features_dir: str | Path, floors_path: str | Path, data_metrics_path: str | Path,
                 train_metrics_path: str | Path, predictions_path: str | Path, metrics_path: str | Path,
                 plots_dir: str | Path, headline_path: str | Path) -> dict:
    """Decode the test split (greedy, beam, and chosen by the findings when decode.rerank_samples > 0)
    and score it beside the floors; details to `metrics_path`, the last decoding's headline (plus the
    training run's image gain) to `headline_path` for DVC."""
    from cxrgen.data.vocab import Vocab
    from cxrgen.modeling.decode import (
        Candidates,
        DecodeSettings,
        Decoded,
        beam_search,
        greedy,
        rerank_candidates,
    )
    from cxrgen.modeling.models import load_model

    settings = evaluate_settings(params)
    decode = DecodeSettings.from_params(params)
    return_large_buffers_to_the_system()   # peak memory must not creep with the number of batches
    prepared_dir, features_dir, plots_dir = Path(prepared_dir), Path(features_dir), Path(plots_dir)
    studies = load_studies(prepared_dir)
    report_ids, references = split_texts(studies, "test")
    vocab = Vocab.load(prepared_dir / "vocab.json")
    model = load_model(model_path)
    features = FeatureStore(features_dir).open("test", model.feature_key)
    if len(features) != len(report_ids):
        raise BadInput(features.shards[0].path.parent,
                       f"{len(features)} rows but {len(report_ids)} test studies (rerun the features stage)")

    # The test split is read and decoded a chunk of DECODE_CHUNK_BATCHES batches at a time: what is
    # kept per study is its decoded tokens and candidates, never its features. Every decoding works
    # batch by batch and samples per study (seeded by its number in the split), so the chunks give
    # the reports one pass over the split would.
    parts: dict[str, list] = {"greedy": [], "beam": [], "candidates": []}
    chunk = settings["batch_size"] * DECODE_CHUNK_BATCHES
    chunks = features.chunks(chunk, desc="evaluate: test studies") if len(features) else [(0, features.read(0, 0))]
    for start, rows in chunks:
        # The attention weights (23 KB a study) are not scored: they are dropped chunk by chunk.
        parts["greedy"].append(replace(greedy(model, rows, decode.max_len, decode.no_repeat_ngram,
                                              settings["batch_size"]), attention=None))
        parts["beam"].append(replace(beam_search(model, rows, decode, settings["batch_size"]), attention=None))
        if decode.rerank_samples:
            parts["candidates"].append(rerank_candidates(model, rows, parts["beam"][-1].texts(vocab), vocab, decode,
                                                         first_study=start))
    decoded = {name: Decoded.concatenate(parts[name]) for name in ("greedy", "beam")}
    texts = {name: d.texts(vocab) for name, d in decoded.items()}
    # The headline reports the last decoding: the beam's, or the one chosen by the findings among the
    # beam's and sampled reports (decode.rerank_samples > 0).
    decodings = DECODINGS if decode.rerank_samples else ("greedy", "beam")
    final = decodings[-1]
    reference_labels = labeler.label_matrix(references)
    head_alone = None
    if decode.rerank_samples:
        candidates = Candidates.concatenate(parts["candidates"])
        thresholds = model.decision_thresholds()
        texts[RERANK_AT_HALF] = candidates.choose(None)
        texts[RERANK_FIRST] = candidates.choose(thresholds, consensus=False)
        texts["rerank"] = candidates.choose(thresholds)
        head_alone = head_alone_scores(candidates.probabilities, thresholds, reference_labels, settings)
    texts.update(load_floors(floors_path, report_ids))
    with scores.MeteorScorer() as meteor:
        systems = {name: score_system(t, references, reference_labels, settings, meteor) for name, t in texts.items()}

    data_metrics = _read_json(Path(data_metrics_path))
    train_metrics = _read_json(Path(train_metrics_path))
    metrics = {
        "model": model_name,
        **provenance(data_metrics, _read_json(features_dir / "features.json"), train_metrics),
        "decode": {"beam_width": decode.beam_width, "length_penalty": decode.length_penalty,
                   "no_repeat_ngram": decode.no_repeat_ngram, "max_len": decode.max_len,
                   "rerank_samples": decode.rerank_samples, "rerank_temperature": decode.rerank_temperature,
                   "rerank_seed": decode.rerank_seed},
        "final": final,
        "device": describe_device(),
        "test_studies": len(references),
        "reference_mean_tokens": mean_tokens(references),
        "labeler": labeler.LABELER_VERSION,
        "bootstrap": {"n_resamples": settings["n_resamples"], "seed": settings["seed"]},
        **{decoding: summary(systems[decoding], settings) for decoding in decodings},
    }
    if head_alone is not None:
        metrics["finding_head_alone"] = head_alone
    for decoding in decodings:
        for floor in FLOORS:
            metrics[f"{decoding}_vs_{floor}"] = versus(systems[decoding], systems[floor], settings)

    write_predictions(predictions_path, report_ids, references, reference_labels,
                      {name: systems[name] for name in decodings})
    write_json_atomic(plots_dir / f"f1_{model_name}.json", f1_plot(systems[final]))
    write_json_atomic(plots_dir / f"length_{model_name}.json", length_plot(systems[final], references))
    gain = train_metrics.get("val_loss_gain")
    write_json_atomic(headline_path, headline(metrics[final], {"image_gain": None if gain is None else round(gain, 4)}))
    write_json_atomic(metrics_path, metrics)
    return metrics
