"""The comparison table: every model, every floor and the label oracle in one Markdown table, scored
by the same code.

Columns are the literature's (BLEU-1..4, METEOR, ROUGE-L, CIDEr), the clinical ones (abnormal-finding
precision / recall / F1 over the 13 observations other than "No Finding", their macro-F1 over the
observations with support, and the 14-observation micro-F1 papers report), how many distinct
reports a system writes and how long they are. BLEU-4 and both F1s carry bootstrap 95% intervals.
Below the table, each model's paired difference to each floor says whether it beats that floor; the
verdicts that matter are on abnormal-finding F1, since a constant normal report already scores well
on BLEU and on the 14-observation F1 ("No Finding" is most studies' label).
"""

from __future__ import annotations

from cxrgen.errors import BadInput
from cxrgen.evaluation.systems import DECODINGS, FLOORS, ORACLE, decoding_label

COLUMNS = (("BLEU-1", "bleu_1"), ("BLEU-2", "bleu_2"), ("BLEU-3", "bleu_3"), ("BLEU-4", "bleu_4"),
           ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"), ("CIDEr", "cider"),
           ("abn. P", "abnormal_precision"), ("abn. R", "abnormal_recall"), ("abn. F1", "abnormal_f1"),
           ("abn. macro-F1", "abnormal_macro_f1"), ("14-obs F1", "micro_f1"),
           ("distinct", "distinct_reports"), ("tokens", "mean_tokens"))
WITH_INTERVAL = ("bleu_4", "abnormal_f1", "micro_f1")
VERDICT_METRIC = "abnormal_f1"
COMPARED = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "abnormal_f1", "micro_f1")


def _cell(row: dict, key: str, n_studies: int | None) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    if key == "distinct_reports":
        return f"{value}" + (f" ({value / n_studies:.0%})" if n_studies else "")
    if key == "mean_tokens":
        return f"{value:.1f}"
    text = f"{value:.3f}"
    if key in WITH_INTERVAL and row.get(f"{key}_low") is not None:
        text += f" [{row[f'{key}_low']:.3f}, {row[f'{key}_high']:.3f}]"
    return text


def _provenance_line(record: dict) -> str:
    split = record.get("split") or {}
    if isinstance(split, dict):
        split = f"{split.get('method')} (seed {split.get('seed')})"
    return (f"data: **{record.get('data_source')}** · feature weights: **{record.get('weights')}** · "
            f"split: {split} · target: {record.get('target')} · cleaning: {record.get('cleaning')} · "
            f"test studies: {record.get('test_studies')}")


def _verdict(d: dict | None) -> str:
    if d is None:
        return "n/a"
    mark = {"better": "**beats**", "worse": "loses", "not distinguishable": "tie"}[d["verdict"]]
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {mark}"


def _ratio(value, ceiling) -> str:
    if value is None or not ceiling:
        return "n/a"
    return f"{value / ceiling:.2f}"


def comparison_markdown(models: dict[str, dict], floors: dict) -> str:
    if not models:
        raise BadInput("metrics", "no model metrics to compare")
    missing = [name for name in (*FLOORS, ORACLE) if name not in floors]
    if missing:
        raise BadInput("metrics/details/floors.json", f"no {', '.join(missing)} (rerun the floors stage)")
    first = next(iter(models.values()))
    final = first.get("final", "beam")
    final_label = decoding_label(first["decode"], final)
    n = first.get("test_studies")
    reference_tokens = first.get("reference_mean_tokens")
    lines = [
        "# Models and floors on the test split",
        "",
        _provenance_line({**floors, **first}),
        "",
        f"Floors: constant = the training report with the best val BLEU-4 "
        f"(val BLEU-4 {floors['constant_val_bleu_4']:.3f}): \"{floors['constant_report']}\"; "
        "retrieval = the report of the nearest training study by image features. "
        "Label oracle (a ceiling, not a floor) = the report of the training study whose true labels "
        "(human MeSH terms) best match the test study's: what a perfect image reader reaches by retrieval.",
        "abn. = abnormal findings: labeler findings of generated vs reference report, micro over the 13 "
        "CheXpert observations other than No Finding (macro-F1: mean over those with support); 14-obs F1 = "
        "micro over all 14, as papers report. distinct = distinct reports written for the test studies; "
        f"tokens = mean report length (references: {reference_tokens if reference_tokens is not None else 'n/a'}). "
        "[low, high] = bootstrap 95% interval over test studies "
        f"({first['bootstrap']['n_resamples']} resamples, seed {first['bootstrap']['seed']}).",
        "",
        "| system | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for floor in FLOORS:
        lines.append(f"| floor: {floor} | " + " | ".join(_cell(floors[floor], key, n) for _, key in COLUMNS) + " |")
    lines.append("| ceiling: label oracle | "
                 + " | ".join(_cell(floors[ORACLE], key, n) for _, key in COLUMNS) + " |")
    for name, record in models.items():
        train = f"train seed {record.get('train_seed')}"
        for decoding in [d for d in DECODINGS if d in record]:
            lines.append(f"| {name} ({decoding_label(record['decode'], decoding)}; {train}) | "
                         + " | ".join(_cell(record[decoding], key, n) for _, key in COLUMNS) + " |")
    names = dict((key, name) for name, key in COLUMNS)
    lines += ["", f"## Does each model beat the floors? ({final_label}; paired bootstrap of model − floor)", "",
              "| model | floor | " + " | ".join(names[key] for key in COMPARED) + " |",
              "|---|---|" + "---|" * len(COMPARED)]
    for name, record in models.items():
        for floor in FLOORS:
            diffs = record[f"{final}_vs_{floor}"]
            lines.append(f"| {name} | {floor} | " + " | ".join(_verdict(diffs.get(key)) for key in COMPARED) + " |")
    oracle = floors[ORACLE]
    lines += ["", f"## In short (abnormal-finding F1; {final_label})", ""]
    for name, record in models.items():
        for floor in FLOORS:
            d = record[f"{final}_vs_{floor}"].get(VERDICT_METRIC)
            if d is None:
                lines.append(f"- {name} vs the {floor} floor on abnormal-finding F1: undefined "
                             "(no abnormal finding stated on either side).")
            else:
                says = {"better": "BEATS", "worse": "does NOT beat (worse than)",
                        "not distinguishable": "does NOT clearly beat"}[d["verdict"]]
                lines.append(f"- {name} {says} the {floor} floor on abnormal-finding F1 "
                             f"({d['difference']:+.3f}, 95% interval [{d['low']:+.3f}, {d['high']:+.3f}]).")
        reported = record[final]
        lines.append(f"- {name}: abnormal-finding F1 {_ratio(reported.get('abnormal_f1'), oracle.get('abnormal_f1'))} "
                     f"× the label oracle's; {reported.get('distinct_reports')} distinct reports "
                     f"(oracle {oracle.get('distinct_reports')}); mean length "
                     f"{_cell(reported, 'mean_tokens', n)} tokens (references {reference_tokens}).")
    return "\n".join(lines) + "\n"
