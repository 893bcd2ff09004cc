"""DVC stage `features`: data/prepared images → data/features (DenseNet121 / CheXNet feature maps)."""

import argparse
import json
from pathlib import Path

from cxrgen.quiet import import_tensorflow

import_tensorflow()

from cxrgen.data.split import SPLITS  # noqa: E402
from cxrgen.features.densenet import run_features  # noqa: E402
from cxrgen.params import load_params  # noqa: E402
from cxrgen.stage import run_stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--data-metrics", default="metrics/data.json",
                        help="the prepare stage's metrics, for the data source name")
    parser.add_argument("--out", default="data/features")
    args = parser.parse_args()
    data_metrics = Path(args.data_metrics)
    data_source = json.loads(data_metrics.read_text()).get("data_source") if data_metrics.is_file() else None
    run_features(args.prepared, args.out, load_params(args.params), SPLITS, args.params, data_source)


if __name__ == "__main__":
    run_stage("features", main)
