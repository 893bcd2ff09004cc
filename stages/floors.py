"""DVC stage `floors`: the constant and retrieval reports every model must beat, and the label
oracle (a ceiling), scored on test.

Reads params `evaluate` only (not `decode`, not the models): floors do not change with a beam width.
"""

import argparse

from cxrgen.evaluation.evaluate import run_floors
from cxrgen.evaluation.systems import FLOOR_STAGE_SYSTEMS, score_line
from cxrgen.params import load_params
from cxrgen.quiet import import_tensorflow
from cxrgen.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--data-metrics", default="metrics/data.json")
    parser.add_argument("--predictions", default="data/predictions/floors.parquet")
    parser.add_argument("--metrics", default="metrics/details/floors.json", help="the detailed metrics")
    parser.add_argument("--headline", default="metrics", help="folder for floor_<name>.json and oracle.json")
    args = parser.parse_args()
    import_tensorflow()   # the retrieval floor reads the features through TensorFlow's loader
    metrics = run_floors(args.prepared, args.features, load_params(args.params), args.data_metrics,
                         args.predictions, args.metrics, args.headline)
    for name in FLOOR_STAGE_SYSTEMS:
        row = metrics[name]
        print(f"floors: {name}: {score_line(row)}", flush=True)


if __name__ == "__main__":
    run_stage("floors", main)
