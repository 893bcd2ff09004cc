"""DVC stage `floors`: the constant and retrieval reports every model must beat, scored on test.

Reads params `evaluate` only (not `decode`, not the models): floors do not change with a beam width.
"""

import argparse

from cxrgen.evaluation.evaluate import run_floors
from cxrgen.params import load_params
from cxrgen.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--data-metrics", default="metrics/data.json")
    parser.add_argument("--predictions", default="data/predictions/floors.parquet")
    parser.add_argument("--metrics", default="metrics/floors.json")
    args = parser.parse_args()
    metrics = run_floors(args.prepared, args.features, load_params(args.params), args.data_metrics,
                         args.predictions, args.metrics)
    for name in ("constant", "retrieval"):
        row = metrics[name]
        print(f"floors: {name}: BLEU-4 {row['bleu_4']:.3f}, clinical micro-F1 "
              f"{row['micro_f1'] if row['micro_f1'] is None else round(row['micro_f1'], 3)}", flush=True)


if __name__ == "__main__":
    run_stage("floors", main)
