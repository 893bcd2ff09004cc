"""Mean ± std over training seeds, from DVC's own experiment table (`dvc exp show --json`).

Run several seeds as experiments, then summarise:

    for s in 0 1 2; do .venv/bin/dvc exp run -n seed$s -S train.seed=$s; done
    .venv/bin/cxrgen seeds             # → metrics/seeds.md

Experiments are grouped by every parameter except `train.seed`, so runs with other settings are
never averaged together; each group lists its seeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxrgen.errors import CxrgenError
from cxrgen.files import atomic_path

MODELS = ("baseline", "attention")
# (label, key in metrics/<model>.json, the headline DVC records); the reported decoding, test split.
METRICS = (("BLEU-4", "bleu_4"), ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"), ("CIDEr", "cider"),
           ("abnormal F1", "f1_abnormal"), ("14-obs F1", "f1_14"), ("distinct", "distinct"),
           ("val loss gain", "image_gain"))
VERSUS_RETRIEVAL = "abnormal F1 − retrieval floor"
SEED_KEY = ("train", "seed")


def _get(data: dict, path: tuple):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _runs(exp_show: list) -> list[dict]:
    """Every finished run in the table (the baseline commits and their experiments), with a name."""
    runs = []
    for commit in exp_show:
        if commit.get("rev") == "workspace":
            continue
        entries = [(commit.get("name") or commit["rev"][:7], commit.get("data"))]
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                entries.append((rev.get("name") or rev["rev"][:7], rev.get("data")))
        for name, data in entries:
            if data:
                runs.append({"name": name, "data": data})
    return runs


def collect(exp_show: list) -> dict[str, list[dict]]:
    """{settings key: [{"name", "seed", "<model> <metric>": value}]}, one row per run with metrics."""
    groups: dict[str, list[dict]] = {}
    for run in _runs(exp_show):
        params = _get(run["data"], ("params", "params.yaml", "data")) or {}
        metrics = run["data"].get("metrics") or {}
        row = {"name": run["name"], "seed": _get(params, SEED_KEY)}
        retrieval = _get(metrics, ("metrics/floor_retrieval.json", "data")) or {}
        for model in MODELS:
            evaluated = _get(metrics, (f"metrics/{model}.json", "data")) or {}
            for label, key in METRICS:
                if evaluated.get(key) is not None:
                    row[f"{model} {label}"] = evaluated[key]
            if evaluated.get("f1_abnormal") is not None and retrieval.get("f1_abnormal") is not None:
                row[f"{model} {VERSUS_RETRIEVAL}"] = evaluated["f1_abnormal"] - retrieval["f1_abnormal"]
        if len(row) == 2:
            continue   # a run without evaluation metrics
        settings = json.loads(json.dumps(params))
        settings.get("train", {}).pop("seed", None)
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(row)
    return groups


def summary_markdown(groups: dict[str, list[dict]]) -> str:
    if not groups:
        raise CxrgenError("no experiments with evaluation metrics in `dvc exp show` (run some first)")
    lines = ["# Mean ± std over training seeds (sample std; beam decoding, test split)", ""]
    for number, rows in enumerate(groups.values(), 1):
        seeds = ", ".join(f"{r['seed']} ({r['name']})" for r in rows)
        lines += [f"## Settings group {number}: {len(rows)} run(s), seeds {seeds}", "",
                  "| model | metric | mean ± std | n |", "|---|---|---|---|"]
        for model in MODELS:
            for label in [label for label, _ in METRICS] + [VERSUS_RETRIEVAL]:
                values = [r[f"{model} {label}"] for r in rows if f"{model} {label}" in r]
                if not values:
                    continue
                spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else " (one run)"
                lines.append(f"| {model} | {label} | {np.mean(values):.3f}{spread} | {len(values)} |")
        lines.append("")
    return "\n".join(lines)


def exp_show(project: str | Path = ".") -> list:
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise CxrgenError(f"dvc exp show failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def write_summary(project: str | Path = ".", out: str | Path = "metrics/seeds.md") -> str:
    text = summary_markdown(collect(exp_show(project)))
    with atomic_path(Path(project) / out) as tmp:
        tmp.write_text(text)
    return text
