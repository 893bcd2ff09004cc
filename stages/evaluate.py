"""DVC stage `evaluate`: one model's greedy and beam reports on the test split, scored beside the floors."""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrgen.params import load_params  # noqa: E402
from cxrgen.stage import run_stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=["baseline", "attention"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--floors", default="data/predictions/floors.parquet")
    parser.add_argument("--data-metrics", default="metrics/data.json")
    parser.add_argument("--plots", default="metrics/plots")
    args = parser.parse_args()
    params = load_params(args.params)

    from cxrgen.evaluation.evaluate import (
        run_evaluate,  # TensorFlow loads here, after the arguments are checked
    )

    metrics = run_evaluate(
        args.model, params, f"models/{args.model}.keras", args.prepared, args.features, args.floors,
        args.data_metrics, f"metrics/train_{args.model}.json", f"data/predictions/{args.model}.parquet",
        f"metrics/{args.model}.json", args.plots)
    beam = metrics["beam"]
    print(f"evaluate: {args.model} (beam {metrics['decode']['beam_width']}): BLEU-4 {beam['bleu_4']:.3f}, "
          f"clinical micro-F1 {beam['micro_f1']}", flush=True)


if __name__ == "__main__":
    run_stage("evaluate", main)
