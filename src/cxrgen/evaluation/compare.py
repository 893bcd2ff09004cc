"""The comparison table: every model and every floor in one Markdown table, scored by the same code.

Columns are the literature's (BLEU-1..4, METEOR, ROUGE-L, CIDEr) plus clinical micro-F1 (with its
precision and recall); BLEU-4 and micro-F1 carry their bootstrap 95% intervals. Below the table,
each model's paired difference to each floor says whether it beats that floor, on every metric.
"""

from __future__ import annotations

from cxrgen.errors import BadInput

COLUMNS = (("BLEU-1", "bleu_1"), ("BLEU-2", "bleu_2"), ("BLEU-3", "bleu_3"), ("BLEU-4", "bleu_4"),
           ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"), ("CIDEr", "cider"), ("CE P", "micro_precision"),
           ("CE R", "micro_recall"), ("CE F1", "micro_f1"))
WITH_INTERVAL = ("bleu_4", "micro_f1")


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
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


def comparison_markdown(models: dict[str, dict], floors: dict) -> str:
    if not models:
        raise BadInput("metrics", "no model metrics to compare")
    first = next(iter(models.values()))
    beam = first["decode"]["beam_width"]
    lines = [
        "# Models and floors on the test split",
        "",
        _provenance_line({**floors, **first}),
        "",
        f"Floors: constant = the training report with the best val BLEU-4 "
        f"(val BLEU-4 {floors['constant_val_bleu_4']:.3f}): \"{floors['constant_report']}\"; "
        "retrieval = the report of the nearest training study by image features.",
        "CE = clinical efficacy: labeler findings of generated vs reference report, micro over 14 CheXpert "
        "observations. [low, high] = bootstrap 95% interval over test studies "
        f"({first['bootstrap']['n_resamples']} resamples, seed {first['bootstrap']['seed']}).",
        "",
        "| system | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for floor in ("constant", "retrieval"):
        lines.append(f"| floor: {floor} | " + " | ".join(_cell(floors[floor], key) for _, key in COLUMNS) + " |")
    for name, record in models.items():
        train = f"train seed {record.get('train_seed')}"
        for decoding, label in (("greedy", "greedy"), ("beam", f"beam {beam}")):
            lines.append(f"| {name} ({label}; {train}) | "
                         + " | ".join(_cell(record[decoding], key) for _, key in COLUMNS) + " |")
    lines += ["", f"## Does each model beat the floors? (beam {beam}; paired bootstrap of model − floor)", ""]
    compared = [(name, key) for name, key in COLUMNS if key not in ("micro_precision", "micro_recall")]
    keys = [key for _, key in compared]
    lines.append("| model | floor | " + " | ".join(name for name, _ in compared) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for name, record in models.items():
        for floor in ("constant", "retrieval"):
            diffs = record[f"beam_vs_{floor}"]
            cells = []
            for key in keys:
                d = diffs.get(key)
                if d is None:
                    cells.append("n/a")
                else:
                    mark = {"better": "**beats**", "worse": "loses", "not distinguishable": "tie"}[d["verdict"]]
                    cells.append(f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {mark}")
            lines.append(f"| {name} | {floor} | " + " | ".join(cells) + " |")
    lines += ["", "## In short", ""]
    for name, record in models.items():
        for floor in ("constant", "retrieval"):
            d = record[f"beam_vs_{floor}"].get("micro_f1")
            if d is None:
                lines.append(f"- {name} vs the {floor} floor on clinical micro-F1: undefined (no positive findings).")
            else:
                says = {"better": "BEATS", "worse": "does NOT beat (worse than)",
                        "not distinguishable": "does NOT clearly beat"}[d["verdict"]]
                lines.append(f"- {name} {says} the {floor} floor on clinical micro-F1 "
                             f"({d['difference']:+.3f}, 95% interval [{d['low']:+.3f}, {d['high']:+.3f}]).")
    return "\n".join(lines) + "\n"
