"""Peak memory of `train` and `evaluate` on a synthetic collection 10x larger than another.

Writes, in a scratch folder, two synthetic collections laid out as the pipeline's stages leave
them (data/prepared: studies.parquet with synthetic report texts and vocab.json; data/features:
the feature store's shards of random float16 features of DenseNet121's real shapes, 2 x 49 x 1024
spatial and 2 x 1024 pooled per study; metrics/data.json; a floors table), for --sizes studies
(default 4,000 and 40,000; split 80/10/10). On each it runs, each in a fresh process as DVC would
(`bin/python stages/train.py`, `bin/python stages/evaluate.py`, in the collection's folder):

- `train` of --model (default attention, which streams the spatial maps: 200 KB per study) for a
  fixed --steps training batches (params train.max_steps; the blank-image twin the same), then its
  full passes: whitening statistics, train and val losses, the finding head on val;
- `evaluate`, decoding and scoring the whole test split (400 and 4,000 studies), with lighter
  decoding than params.yaml so that the large run takes minutes (--beam-width 2, no reranking,
  --resamples 100 bootstrap resamples): the memory question is how the features are read, not how
  a study is decoded.

Peak RSS is the child's ru_maxrss (os.wait4), which counts every page the process had resident,
mapped files included. The figures, their ratio (large / small) and the command go to
metrics/speed.json key "memory_scale" (other keys kept). The scratch data (~9 GB for 40,000
studies) is deleted at the end unless --keep.

    bin/python benchmarks/memory_scale.py [--sizes 4000 40000] [--scratch /tmp/cxrgen-memory-scale]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from cxrgen.benchmark import describe_machine, record_speed
from cxrgen.data.text import tokenize
from cxrgen.data.vocab import build_vocab
from cxrgen.errors import CxrgenError
from cxrgen.features import store
from cxrgen.files import write_json_atomic
from cxrgen.tables import write_parquet

PROJECT = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
REGIONS, CHANNELS = 49, 1024
SENTENCES = [
    "the heart is normal in size .", "the heart size is enlarged .", "mild cardiomegaly .",
    "the lungs are clear .", "no focal consolidation .", "there is a right lower lobe opacity .",
    "no pleural effusion or pneumothorax .", "small left pleural effusion .", "no pneumothorax .",
    "the mediastinum is unremarkable .", "degenerative changes of the spine .", "no acute osseous abnormality .",
    "there is mild pulmonary edema .", "calcified granuloma in the left upper lobe .",
    "no acute cardiopulmonary abnormality .", "stable appearance of the chest .",
]
CHUNK = 512   # studies of random features generated and written at a time


def write_collection(root: Path, studies: int, seed: int, shard_studies: int) -> dict:
    """data/prepared, data/features, metrics/data.json and data/predictions/floors.parquet for
    `studies` synthetic studies under `root`; returns the split sizes."""
    rng = np.random.default_rng(seed)
    counts = {"train": int(studies * FRACTIONS["train"]), "val": int(studies * FRACTIONS["val"])}
    counts["test"] = studies - counts["train"] - counts["val"]
    rows = []
    for split, count in counts.items():
        for _ in range(count):
            picked = rng.choice(len(SENTENCES), size=int(rng.integers(3, 7)), replace=False)
            text = " ".join(SENTENCES[i] for i in picked)
            rows.append({"report_id": f"CXR{len(rows) + 1}", "split": split, "text": text,
                         "n_tokens": len(tokenize(text))})
    table = pd.DataFrame(rows)
    prepared = root / "data" / "prepared"
    write_parquet(table, prepared / "studies.parquet")
    train_texts = table.loc[table["split"] == "train", "text"]
    build_vocab([tokenize(t) for t in train_texts], min_count=1, max_len=60).save(prepared / "vocab.json")

    features = root / "data" / "features"
    layout = {}
    with tqdm(total=studies, desc=f"features for {studies} studies", unit=" studies", file=sys.stderr,
              mininterval=2) as bar:
        for split, count in counts.items():
            for index, (start, stop) in enumerate(store.shard_ranges(count, shard_studies)):
                _write_random_shard(features, split, index, stop - start, rng, bar)
            layout[split] = {"studies": count, "shards": store.shard_count(count, shard_studies)}
    _write_random_shard(features, store.BLANK, 0, 1, rng, None)
    layout[store.BLANK] = {"studies": 1, "shards": 1}
    write_json_atomic(features / "features.json", {
        "weights": "random", "weights_sha256": None, "seed": 0, "image_size": 224, "grid": [7, 7],
        "dtype": "float16", "data_source": "synthetic-memory-scale", "counts": counts,
        "shard_studies": shard_studies, "splits": layout})
    write_json_atomic(root / "metrics" / "data.json", {"data_source": "synthetic-memory-scale", "counts": counts})
    test = table[table["split"] == "test"]
    constant = train_texts.iloc[0]
    floors = pd.DataFrame({"report_id": test["report_id"].tolist(), "reference": test["text"].tolist(),
                           "constant": [constant] * len(test), "retrieval": [constant] * len(test)})
    write_parquet(floors, root / "data" / "predictions" / "floors.parquet")
    return counts


def _write_random_shard(features: Path, split: str, index: int, rows: int, rng, bar) -> None:
    """Random post-ReLU-like float16 features, written a chunk at a time straight into the .npy
    files (open_memmap: format 1.0, the store's layout), then renamed into place."""
    final = {key: store.shard_path(features, split, key, index) for key in store.KEYS}
    shapes = {"spatial": (rows, 2, REGIONS, CHANNELS), "pooled": (rows, 2, CHANNELS)}
    partial = {key: path.with_name(f".{path.name}.partial") for key, path in final.items()}
    for path in partial.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    maps = {key: np.lib.format.open_memmap(partial[key], mode="w+", dtype=np.float16, shape=shapes[key])
            for key in store.KEYS}
    for start in range(0, rows, CHUNK):
        stop = min(start + CHUNK, rows)
        spatial = rng.random((stop - start, 2, REGIONS, CHANNELS), dtype=np.float32)
        maps["spatial"][start:stop] = spatial
        maps["pooled"][start:stop] = spatial.mean(axis=2)
        for array in maps.values():
            array.flush()
            # Let the kernel drop the written pages from this (generating) process.
            array._mmap.madvise(mmap.MADV_DONTNEED)
        if bar is not None:
            bar.update(stop - start)
    for key in store.KEYS:
        del maps[key]
        os.replace(partial[key], final[key])


def run_measured(command: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run `command` in a fresh process; (peak RSS in MiB, wall seconds). Its output goes to `log`."""
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise CxrgenError(f"{' '.join(command[1:3])} failed in {cwd} (exit {process.returncode}):\n{tail}")
    return usage.ru_maxrss / 1024.0, seconds   # ru_maxrss is in KiB on Linux


def benchmark_size(scratch: Path, studies: int, args, base_params: dict) -> dict:
    root = scratch / f"studies_{studies}"
    if root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    counts = write_collection(root, studies, args.seed, args.shard_studies)
    written = time.monotonic() - started
    params = json.loads(json.dumps(base_params))   # a copy
    params["train"].update({"max_steps": args.steps})
    params["decode"].update({"beam_width": args.beam_width, "rerank_samples": 0})
    params["evaluate"].update({"n_resamples": args.resamples})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    python = str(PROJECT / "bin" / "python")
    train_rss, train_s = run_measured([python, str(PROJECT / "stages" / "train.py"), "--model", args.model],
                                      root, root / "train.log")
    evaluate_rss, evaluate_s = run_measured([python, str(PROJECT / "stages" / "evaluate.py"), "--model", args.model],
                                            root, root / "evaluate.log")
    disk = sum(p.stat().st_size for p in (root / "data" / "features").rglob("*.npy"))
    result = {"studies": studies, "splits": counts, "feature_bytes": disk,
              "train": {"peak_rss_mib": round(train_rss, 1), "seconds": round(train_s, 1)},
              "evaluate": {"peak_rss_mib": round(evaluate_rss, 1), "seconds": round(evaluate_s, 1)},
              "write_seconds": round(written, 1)}
    print(f"memory_scale: {studies} studies ({disk / 2**30:.1f} GiB of features): train peak "
          f"{train_rss:.0f} MiB ({train_s:.0f} s), evaluate peak {evaluate_rss:.0f} MiB ({evaluate_s:.0f} s)",
          flush=True)
    if not args.keep:
        shutil.rmtree(root)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[4000, 40000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--scratch", default="/tmp/cxrgen-memory-scale")
    parser.add_argument("--model", default="attention", choices=["baseline", "attention"])
    parser.add_argument("--steps", type=int, default=50, help="training batches per fit (train.max_steps)")
    parser.add_argument("--beam-width", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=100, help="evaluate.n_resamples")
    parser.add_argument("--shard-studies", type=int, default=store.DEFAULT_SHARD_STUDIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default=str(PROJECT / "params.yaml"))
    parser.add_argument("--out", default=str(PROJECT / "metrics" / "speed.json"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch collections")
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    base_params = yaml.safe_load(Path(args.params).read_text())
    need = args.sizes[1] * 2 * (REGIONS + 1) * CHANNELS * 2 * 1.05
    free = shutil.disk_usage(scratch).free
    if free < need:
        raise CxrgenError(f"{scratch}: {free / 2**30:.1f} GiB free, the {args.sizes[1]}-study collection needs "
                          f"~{need / 2**30:.1f} GiB; choose another --scratch or smaller --sizes")
    runs = [benchmark_size(scratch, studies, args, base_params) for studies in args.sizes]
    small, large = runs
    result = {
        "command": "bin/python benchmarks/memory_scale.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "train_steps": args.steps,
        "decode": {"beam_width": args.beam_width, "rerank_samples": 0, "n_resamples": args.resamples},
        "shard_studies": args.shard_studies,
        "shuffle_buffer": base_params.get("train", {}).get("shuffle_buffer"),
        "runs": runs,
        "ratio": {stage: round(large[stage]["peak_rss_mib"] / small[stage]["peak_rss_mib"], 3)
                  for stage in ("train", "evaluate")},
        "machine": describe_machine(),
    }
    record_speed(args.out, "memory_scale", result)
    print(f"memory_scale: peak RSS ratio {large['studies']} / {small['studies']} studies: "
          f"train {result['ratio']['train']}, evaluate {result['ratio']['evaluate']} (written to {args.out})",
          flush=True)


if __name__ == "__main__":
    try:
        main()
    except CxrgenError as exc:
        print(f"memory_scale: error: {exc}", file=sys.stderr)
        sys.exit(1)
