"""The whole pipeline on the IU-size synthetic collection, its results kept in metrics/iu_size/.

Runs, in this checkout,

    dvc exp run -n iu-size -S 'download.sources=[synthetic]' -S download.synthetic.n_reports=3955

(3,955 reports like the real collection, 224 px, varied wording, every other setting from
params.yaml; about an hour on 2 CPU cores, stages DVC already has are not rerun) and then copies
what a reader compares into metrics/iu_size/: the headline and detail metrics of both models,
the floors and the label oracle, both training records, the data record and comparison.md, with
run.json saying which command, commit and machine produced them and how long it took.

    bin/python benchmarks/iu_size.py [--name iu-size] [--collect-only]

--collect-only copies the workspace's results of an earlier run of the same command.
--from DIR --commit SHA [--label L] copies them from the metrics folder that `benchmarks/stage_times.py
--label L --keep-metrics DIR` kept from its run of the same settings at commit SHA (so that the
timed run need not be run again; L defaults to after).
Like any `dvc exp run -S`, it leaves params.yaml with the experiment's settings; `git checkout
params.yaml` restores the defaults.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxrgen.benchmark import describe_machine
from cxrgen.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["-S", "download.sources=[synthetic]", "-S", "download.synthetic.n_reports=3955"]
RESULTS = ["metrics/attention.json", "metrics/baseline.json", "metrics/floor_constant.json",
           "metrics/floor_retrieval.json", "metrics/oracle.json", "metrics/details/attention.json",
           "metrics/details/baseline.json", "metrics/details/floors.json", "metrics/train_attention.json",
           "metrics/train_baseline.json", "metrics/data.json", "metrics/comparison.md"]
OUT = ROOT / "metrics/iu_size"


def dvc() -> str:
    here = Path(sys.executable).with_name("dvc")
    return str(here) if here.exists() else "dvc"


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="iu-size", help="the experiment's name")
    parser.add_argument("--collect-only", action="store_true", help="copy an earlier run's results, run nothing")
    parser.add_argument("--from", dest="source", type=Path,
                        help="copy the results from this metrics folder (stage_times.py --keep-metrics), run nothing")
    parser.add_argument("--commit", help="with --from: the commit that run timed")
    parser.add_argument("--label", default="after", help="with --from: the --label that run was timed under")
    args = parser.parse_args()
    if args.source and not args.commit:
        parser.error("--from needs --commit (the commit stage_times.py ran)")
    command = [dvc(), "exp", "run", "-n", args.name, *OVERRIDES]
    seconds = None

    def where(name: str) -> Path:
        # The kept folder is the run's metrics/ itself: metrics/x.json is DIR/x.json there.
        return args.source / Path(name).relative_to("metrics") if args.source else ROOT / name

    if not args.collect_only and not args.source:
        start = time.monotonic()
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            print("iu_size: the pipeline failed; nothing copied", file=sys.stderr)
            return 1
        seconds = round(time.monotonic() - start, 1)
    missing = [name for name in RESULTS if not where(name).is_file()]
    if missing:
        print(f"iu_size: no results to copy ({', '.join(str(where(name)) for name in missing)} missing): "
              + (f"not a --keep-metrics folder: {args.source}" if args.source else "run without --collect-only"),
              file=sys.stderr)
        return 1
    data = json.loads(where("metrics/data.json").read_text())
    if data.get("data_source") != "synthetic" or data.get("counts", {}).get("reports") != 3955:
        print(f"iu_size: the results in {args.source or 'the workspace'} are not of the IU-size synthetic run "
              f"(source {data.get('data_source')}, {data.get('counts', {}).get('reports')} reports)", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for name in RESULTS:
        shutil.copyfile(where(name), OUT / Path(name).name.replace(".json", "_details.json")
                        if name.startswith("metrics/details/") else OUT / Path(name).name)
    if args.source:
        run = {"command": f"bin/python benchmarks/stage_times.py --label {args.label} --keep-metrics DIR "
                          "(the same settings, each stage by dvc repro --single-item from an empty cache)",
               "commit": args.commit, "pipeline_seconds": None,
               "note": f"its seconds per stage: the stages.{args.label} entry of the speed file that run wrote "
                       "(stage_times.py --out)"}
    else:
        run = {"command": " ".join(["dvc", *command[1:]]), "commit": commit(), "pipeline_seconds": seconds,
               "note": "seconds: the dvc exp run's wall time (null with --collect-only); stages DVC had cached "
                       "are not rerun"}
    write_json_atomic(OUT / "run.json", {**run, "machine": describe_machine()})
    print(f"iu_size: results in {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
