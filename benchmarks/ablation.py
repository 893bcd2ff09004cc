"""What each model component adds, on the IU-size synthetic run: one row per run, read from the
metrics folders those runs kept.

    bin/python benchmarks/ablation.py LABEL=DIR@COMMIT [LABEL=DIR@COMMIT ...] [--out metrics/iu_size/ablation.json]

DIR is a run's metrics folder as `benchmarks/stage_times.py --keep-metrics DIR` keeps it (the
IU-size synthetic run of that commit, default settings otherwise), COMMIT the commit it ran.
Per run and model, with the default decoding: abnormal-finding F1 with its 95 % bootstrap
interval and as a fraction of the label oracle's, BLEU-4 and its paired difference from the
constant report, CIDEr, distinct reports, mean length, the finding head's own F1 (calibrated)
and the val loss. Written to --out (runs listed in the order given, replacing a run of the same
label) and printed as a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrgen.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("attention", "baseline")


def run_summary(folder: Path) -> dict:
    floors = json.loads((folder / "details/floors.json").read_text())
    data = json.loads((folder / "data.json").read_text())
    if data.get("data_source") != "synthetic" or data.get("counts", {}).get("reports") != 3955:
        raise SystemExit(f"ablation: {folder} is not an IU-size synthetic run's metrics folder")
    oracle = floors["label_oracle"]["abnormal_f1"]
    summary = {}
    for name in MODELS:
        details = json.loads((folder / f"details/{name}.json").read_text())
        trained = json.loads((folder / f"train_{name}.json").read_text())
        chosen, against_constant = details["rerank"], details["rerank_vs_constant"]["bleu_4"]
        summary[name] = {
            "abnormal_f1": round(chosen["abnormal_f1"], 6),
            "abnormal_f1_interval": [round(chosen["abnormal_f1_low"], 6), round(chosen["abnormal_f1_high"], 6)],
            "of_oracle": round(chosen["abnormal_f1"] / oracle, 3),
            "bleu_4": round(chosen["bleu_4"], 6),
            "bleu_4_minus_constant": round(against_constant["difference"], 6),
            "bleu_4_minus_constant_interval": [round(against_constant["low"], 6), round(against_constant["high"], 6)],
            "cider": round(chosen["cider"], 6),
            "distinct_reports": chosen["distinct_reports"],
            "mean_tokens": round(chosen["mean_tokens"], 1),
            "head_alone_abnormal_f1": round(details["finding_head_alone"]["calibrated"]["abnormal_f1"], 6),
            "val_loss": trained["val_loss"],
        }
    summary["label_oracle_abnormal_f1"] = round(oracle, 6)
    return summary


def short(value: float) -> str:
    return f"{value:.3f}".replace("0.", ".", 1) if abs(value) < 1 else f"{value:.3f}"


def table(runs: dict) -> str:
    lines = ["| run | model | abnormal F1 | × oracle | head alone | BLEU-4 (− constant) | CIDEr | distinct | tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, run in runs.items():
        for name in MODELS:
            row = run[name]
            low, high = row["abnormal_f1_interval"]
            b_low, b_high = row["bleu_4_minus_constant_interval"]
            lines.append(f"| {label} ({run['commit'][:7]}) | {name} | {short(row['abnormal_f1'])} [{short(low)}, "
                         f"{short(high)}] | {row['of_oracle']:.2f} | {short(row['head_alone_abnormal_f1'])} | "
                         f"{short(row['bleu_4'])} ({row['bleu_4_minus_constant']:+.3f} [{b_low:+.3f}, {b_high:+.3f}]) | "
                         f"{short(row['cider'])} | {row['distinct_reports']} | {row['mean_tokens']} |")
    return "\n".join(lines).replace("+0.", "+.").replace("-0.", "−.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR@COMMIT")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/iu_size/ablation.json")
    args = parser.parse_args()
    recorded = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for spec in args.runs:
        label, _, rest = spec.partition("=")
        folder, _, commit = rest.rpartition("@")
        if not label or not folder or not commit:
            parser.error(f"{spec!r}: expected LABEL=DIR@COMMIT")
        recorded[label] = {"commit": commit, "run": "benchmarks/stage_times.py --rev COMMIT --keep-metrics DIR "
                                                    "(IU-size synthetic run, default settings of that commit)",
                           **run_summary(Path(folder))}
    write_json_atomic(args.out, recorded)
    print(table(recorded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
