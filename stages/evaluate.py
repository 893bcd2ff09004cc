"""DVC stage `evaluate`: one model's greedy and beam reports on the test split, scored beside the floors."""

import argparse

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
    beam = metrics[metrics["final"]]
    how = f"beam {metrics['decode']['beam_width']}"
    if metrics["final"] == "rerank":
        how += f" + {metrics['decode']['rerank_samples']} samples, chosen by the findings"
    print(f"evaluate: {args.model} ({how}): BLEU-4 {beam['bleu_4']:.3f}, "
          f"abnormal-finding F1 {_rounded(beam['abnormal_f1'])}, 14-observation micro-F1 "
          f"{_rounded(beam['micro_f1'])}, {beam['distinct_reports']} distinct reports for "
          f"{metrics['test_studies']} studies", flush=True)


def _rounded(value):
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    run_stage("evaluate", main)
