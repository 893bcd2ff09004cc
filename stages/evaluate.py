"""DVC stage `evaluate`: one model's greedy and beam reports on the test split, scored beside the floors."""

import argparse

from cxrgen.evaluation.systems import decoding_label, score_line
from cxrgen.params import load_params
from cxrgen.quiet import import_tensorflow
from cxrgen.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=["baseline", "attention"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--floors", default="data/predictions/floors.parquet")
    parser.add_argument("--data-metrics", default="metrics/data.json")
    parser.add_argument("--plots", default="metrics/plots")
    parser.add_argument("--details", default="metrics/details", help="folder for the detailed metrics")
    args = parser.parse_args()
    params = load_params(args.params)

    import_tensorflow()   # TensorFlow loads here, after the arguments are checked
    from cxrgen.evaluation.evaluate import run_evaluate

    metrics = run_evaluate(
        args.model, params, f"models/{args.model}.keras", args.prepared, args.features, args.floors,
        args.data_metrics, f"metrics/train_{args.model}.json", f"data/predictions/{args.model}.parquet",
        f"{args.details}/{args.model}.json", args.plots, f"metrics/{args.model}.json")
    final = metrics["final"]
    print(f"evaluate: {args.model} ({decoding_label(metrics['decode'], final)}): {score_line(metrics[final])} "
          f"for {metrics['test_studies']} studies", flush=True)


if __name__ == "__main__":
    run_stage("evaluate", main)
