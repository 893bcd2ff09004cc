"""Decoding speed: studies per second for greedy, beam 3 and beam 5 over the test split, the batched
search against the plain per-study reference (cxrgen.decode). Writes metrics/speed.json key "decode"
(other keys, such as "features", are kept).

The reference runs the model once per beam per step, so it is timed on the first
--reference-studies studies only and its rate extrapolated to the split; the output says so.

    python benchmarks/speed_decode.py --model models/attention.keras --model models/baseline.keras
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cxrgen.benchmark import describe_machine, record_speed  # noqa: E402
from cxrgen.data.vocab import Vocab  # noqa: E402
from cxrgen.errors import CxrgenError  # noqa: E402
from cxrgen.features.store import FeatureStore  # noqa: E402
from cxrgen.modeling.decode import DecodeSettings, beam_search, beam_search_reference  # noqa: E402
from cxrgen.modeling.models import load_model, model_name_of  # noqa: E402

WIDTHS = {"greedy": 1, "beam3": 3, "beam5": 5}


def timed(function) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def benchmark_model(model_path: Path, features_dir: Path, split: str, max_len: int, batch_size: int,
                    reference_studies: int) -> dict:
    model = load_model(model_path)
    # The whole split in memory (IU-size: a few hundred studies), so that reading is not timed.
    features = FeatureStore(features_dir).open(split, model.feature_key).read_all().astype(np.float32)
    subset = features[:reference_studies]
    results = {}
    for label, width in WIDTHS.items():
        settings = DecodeSettings(beam_width=width, max_len=max_len)
        # Untimed first runs: tracing the tf.functions is a one-off cost, not decoding speed.
        beam_search(model, features[:batch_size], settings, batch_size)
        beam_search_reference(model, subset[:1], settings)
        batched, batched_s = timed(lambda: beam_search(model, features, settings, batch_size))
        reference, reference_s = timed(lambda: beam_search_reference(model, subset, settings))
        batched_rate = len(features) / batched_s
        reference_rate = len(subset) / reference_s
        same = (batched.tokens[: len(subset)] == reference.tokens).all(axis=1)
        results[label] = {
            "beam_width": width,
            "batched_studies_per_s": round(batched_rate, 2),
            "batched_seconds": round(batched_s, 3),
            "reference_studies_per_s": round(reference_rate, 3),
            "reference_seconds_extrapolated": round(len(features) / reference_rate, 1),
            "speedup": round(batched_rate / reference_rate, 1),
            "same_reports_as_reference": f"{int(same.sum())}/{len(subset)}",
            "mean_generated_tokens": round(float(batched.lengths.mean()), 2),
        }
        print(f"{model_path.name} {label}: batched {batched_rate:.1f} studies/s, reference {reference_rate:.2f} "
              f"studies/s (on {len(subset)} studies), speedup {batched_rate / reference_rate:.1f}x, "
              f"same reports {int(same.sum())}/{len(subset)}", file=sys.stderr, flush=True)
    return {
        "model": model_name_of(model),
        "model_file": str(model_path),
        "split": split,
        "studies": int(len(features)),
        "max_len": max_len,
        "batch_size": batch_size,
        "reference_studies_timed": int(len(subset)),
        "note": (f"the per-study reference was timed on the first {len(subset)} studies; its rate and "
                 f"'reference_seconds_extrapolated' are extrapolated to all {len(features)} studies"),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--model", type=Path, action="append", help="a .keras model (repeat for several); "
                        "default: models/baseline.keras and models/attention.keras")
    parser.add_argument("--vocab", type=Path, default=Path("data/prepared/vocab.json"),
                        help="gives the default --max-len (the vocabulary's, <start> and <end> counted)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-len", type=int, help="default: the vocabulary's max_len, else 60")
    parser.add_argument("--batch-size", type=int, default=64, help="studies decoded together")
    parser.add_argument("--reference-studies", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("metrics/speed.json"))
    args = parser.parse_args()
    models = args.model or [Path("models/baseline.keras"), Path("models/attention.keras")]
    max_len = args.max_len or Vocab.load(args.vocab).max_len or 60
    # What the numbers came from: the features' data source, weights and split sizes.
    info_path = args.features / "features.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    decode = {"machine": describe_machine(), "data": {k: info.get(k) for k in ("data_source", "weights", "counts")},
              "models": {}}
    for path in models:
        result = benchmark_model(path, args.features, args.split, max_len, args.batch_size, args.reference_studies)
        decode["models"][result["model"]] = result
    record_speed(args.out, "decode", decode)
    print(json.dumps(decode, indent=2))


if __name__ == "__main__":
    try:
        main()
    except CxrgenError as exc:
        print(f"speed_decode: error: {exc}", file=sys.stderr)
        sys.exit(1)
