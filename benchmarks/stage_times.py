"""Seconds per stage of the IU-size synthetic run, at a given commit: the speed-up's before and after.

    bin/python benchmarks/stage_times.py --label before --rev <commit>
    bin/python benchmarks/stage_times.py --label after            # this checkout's HEAD

Each run clones the commit into a scratch folder (its own empty DVC cache, nothing reused), sets
the IU-size synthetic collection (download.sources=[synthetic], download.synthetic.n_reports=3955;
every other setting is that commit's params.yaml) and runs the stages one by one in dvc.yaml's
order (`dvc repro --single-item`), timing each. It records under metrics/speed.json "stages"
the commit, the machine, the seconds per stage and in all, and what the run produced beside them
(each model's val loss, best epoch, abnormal-finding F1 and BLEU-4), so that a faster run can be
checked to train the same models. With both labels present it adds "after_over_before".

Run the two labels one after the other on an otherwise idle machine: the stages use every core.
The commit's code runs with this environment's Python (bin/python, CXRGEN_VENV); a commit whose
dependencies differ needs its own environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cxrgen.benchmark import describe_machine, record_speed

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"download.sources": "[synthetic]", "download.synthetic.n_reports": "3955"}
MODELS = ("baseline", "attention")


def run(command: list[str], cwd: Path, env: dict | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env)
    if result.returncode != 0:
        raise SystemExit(f"stage_times: {' '.join(command)} failed in {cwd} (exit {result.returncode})")


def output(command: list[str], cwd: Path) -> str:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout


def dvc() -> str:
    here = Path(sys.executable).with_name("dvc")
    return str(here) if here.exists() else "dvc"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (the stages)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage_names(project: Path) -> list[str]:
    """dvc.yaml's stages in file order (foreach stages expanded), which is the pipeline's order."""
    names = output([dvc(), "stage", "list", "--name-only"], project).split()
    if not names:
        raise SystemExit(f"stage_times: no stages in {project}/dvc.yaml")
    return names


def set_params(project: Path, overrides: dict[str, str]) -> None:
    import yaml

    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def results(project: Path) -> dict:
    """What the run produced, to check that a faster run trained the same models."""
    produced = {}
    for model in MODELS:
        train = json.loads((project / f"metrics/train_{model}.json").read_text())
        scores = json.loads((project / f"metrics/{model}.json").read_text())
        produced[model] = {
            "val_loss": train.get("val_loss"),
            "val_loss_blank_images": train.get("val_loss_blank_images"),
            "best_epoch": train.get("best_epoch"),
            "epochs_run": train.get("epochs_run"),
            "abnormal_f1": scores.get("f1_abnormal"),
            "bleu4": scores.get("bleu_4"),
        }
    return produced


def time_stages(rev: str, keep: Path | None, overrides: dict[str, str], keep_models: Path | None = None) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="stage-times-"))
    project = scratch / "project"
    try:
        run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(project)], scratch)
        run(["git", "checkout", "--quiet", rev], project)
        commit = output(["git", "rev-parse", "HEAD"], project).strip()
        set_params(project, overrides)
        env = {**os.environ, "CXRGEN_VENV": os.environ.get("CXRGEN_VENV", str(Path(sys.executable).parents[1]))}
        seconds: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name in stage_names(project):
            print(f"stage_times: {name} ...", file=sys.stderr, flush=True)
            start, used = time.monotonic(), cpu_seconds()
            run([dvc(), "repro", "--single-item", "--no-run-cache", name], project, env)
            seconds[name] = round(time.monotonic() - start, 1)
            cpu[name] = round(cpu_seconds() - used, 1)
            print(f"stage_times: {name} {seconds[name]} s ({cpu[name]} CPU s)", file=sys.stderr, flush=True)
        record = {
            "commit": commit,
            "overrides": overrides,
            "seconds": seconds,
            "total_seconds": round(sum(seconds.values()), 1),
            # User + system CPU seconds of the stage's processes: a second view of the same work,
            # since this kind of machine's wall-clock speed changes from minute to minute.
            "cpu_seconds": cpu,
            "total_cpu_seconds": round(sum(cpu.values()), 1),
            "produced": results(project),
            "machine": describe_machine(),
        }
        if keep:
            shutil.copytree(project / "metrics", keep, dirs_exist_ok=True)
        if keep_models:   # to compare the two runs' models study by study (val losses)
            shutil.copytree(project / "models", keep_models, dirs_exist_ok=True)
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def paired_val_losses(before: Path, after: Path, features: Path, prepared: Path, resamples: int = 2000) -> dict:
    """Each model's val loss, before and after, on the same val studies and features, and the 95 %
    paired bootstrap interval of the difference (after - before) over the val studies: whether
    the faster run's models are as good as the slower run's, beyond which val studies there are."""
    from cxrgen.modeling import train as training
    from cxrgen.modeling.models import load_model

    paired, val_data = {}, {}
    for name in MODELS:
        sums = {}
        for label, folder in (("before", before), ("after", after)):
            model = load_model(folder / f"{name}.keras")
            # Each model reads its own features (a region finding head reads the regions).
            if model.feature_key not in val_data:
                val_data[model.feature_key] = training.load_training_data(features, prepared, model.feature_key,
                                                                          splits=("val",))
            data = val_data[model.feature_key]
            sums[label], counts = training.study_token_losses(model, data.features["val"], data.tokens["val"], 32)
        # The train stage's paired bootstrap of a val-loss difference (there: blank - images).
        low, high = training.gain_interval(sums["after"], sums["before"], counts, n_resamples=resamples)
        paired[name] = {
            "before": round(float(sums["before"].sum() / counts.sum()), 6),
            "after": round(float(sums["after"].sum() / counts.sum()), 6),
            "after_minus_before": round(float((sums["after"].sum() - sums["before"].sum()) / counts.sum()), 6),
            "interval_95": [round(low, 6), round(high, 6)],
        }
    return {"features": str(features), "prepared": str(prepared), "resamples": resamples, "models": paired}


def recorded_stages(out: Path) -> dict:
    """What metrics/speed.json (or --out) already holds under "stages"."""
    return json.loads(out.read_text()).get("stages", {}) if out.is_file() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", help="before | after (or any name); needed unless --paired")
    parser.add_argument("--rev", default="HEAD", help="the commit to time (default: HEAD)")
    parser.add_argument("--out", default=str(ROOT / "metrics/speed.json"))
    parser.add_argument("--keep-metrics", type=Path, help="copy the run's metrics/ folder here")
    parser.add_argument("--keep-models", type=Path, help="copy the run's models/ folder here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another params override (a quick trial of this script; not the benchmark)")
    parser.add_argument("--paired", nargs=4, type=Path, metavar=("BEFORE_MODELS", "AFTER_MODELS", "FEATURES", "PREPARED"),
                        help="instead of timing: the two runs' models (--keep-models) scored on the same val "
                             "studies (a features folder and a prepared folder of the same collection)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.paired:
        stages = recorded_stages(out)
        stages["val_loss_paired"] = paired_val_losses(*args.paired)
        record_speed(out, "stages", stages)
        print(json.dumps(stages["val_loss_paired"], indent=2))
        return 0
    if not args.label:
        parser.error("--label is needed to time a run")
    overrides = {**OVERRIDES, **dict(item.split("=", 1) for item in args.set)}
    record = time_stages(args.rev, args.keep_metrics, overrides, args.keep_models)
    stages = recorded_stages(out)   # read after the run: the file may have changed meanwhile
    stages[args.label] = record
    if "before" in stages and "after" in stages:
        stages["after_over_before"] = round(stages["after"]["total_seconds"] / stages["before"]["total_seconds"], 3)
    record_speed(out, "stages", stages)
    print(json.dumps({args.label: record["seconds"], "total_seconds": record["total_seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
