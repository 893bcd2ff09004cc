"""DVC stage `features`: data/prepared images → data/features (DenseNet121 / CheXNet feature maps,
sharded; see cxrgen.features.store).

`--shards START:STOP` computes only that range of the stage's shards (each split's shards in turn,
then the blank control), so that several processes or machines can share the work on one output
folder: e.g. `--shards 0:5` and `--shards 5:` side by side. The one that finds every shard in place
when it is done writes features.json. `--shards cluster` takes this worker's contiguous share from
TF_CONFIG (the cluster description multi-worker training reads; see the README). Without it (as
DVC runs it) the stage computes them all.
"""

import argparse
import json
from pathlib import Path

from cxrgen.quiet import import_tensorflow

import_tensorflow()

from cxrgen.data.split import SPLITS  # noqa: E402
from cxrgen.features.densenet import run_features  # noqa: E402
from cxrgen.features.store import parse_range  # noqa: E402
from cxrgen.params import load_params  # noqa: E402
from cxrgen.stage import run_stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--data-metrics", default="metrics/data.json",
                        help="the prepare stage's metrics, for the data source name")
    parser.add_argument("--out", default="data/features")
    parser.add_argument("--shards", help="START:STOP: compute only this range of the shards; cluster: this worker's "
                             "share, from TF_CONFIG (default: all)")
    args = parser.parse_args()
    data_metrics = Path(args.data_metrics)
    data_source = json.loads(data_metrics.read_text()).get("data_source") if data_metrics.is_file() else None
    shards = (args.shards if args.shards == "cluster" else parse_range(args.shards)) if args.shards else None
    description = run_features(args.prepared, args.out, load_params(args.params), SPLITS, args.params, data_source,
                               shards=shards)
    if shards is not None:
        print(f"features: shards {args.shards} written; "
              + ("every shard is in place, features.json written" if description
                 else "features.json waits for the other shards"), flush=True)


if __name__ == "__main__":
    run_stage("features", main)
