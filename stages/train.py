"""DVC stage `train`: features + prepared reports → one trained report generator, its metrics and curves.

Reads params `train` and `model.<name>` only (never `decode`: a new beam width must not retrain).
"""

import argparse
import sys

from cxrgen.params import check_keys, load_params
from cxrgen.quiet import import_tensorflow
from cxrgen.stage import run_stage


MODEL_NAMES = ["baseline", "attention"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", help="model file (default models/<model>.keras)")
    parser.add_argument("--metrics", help="metrics file (default metrics/train_<model>.json)")
    parser.add_argument("--live", help="dvclive folder (default dvclive/<model>)")
    args = parser.parse_args()
    params = load_params(args.params)
    check_keys(params.get("model"), MODEL_NAMES, "model", args.params)  # model.<typo> must not be ignored

    import_tensorflow()   # TensorFlow loads here, after the arguments are checked
    from cxrgen.modeling.train import train

    metrics = train(
        args.model, params, args.features, args.prepared,
        model_path=args.out or f"models/{args.model}.keras",
        metrics_path=args.metrics or f"metrics/train_{args.model}.json",
        live_dir=args.live or f"dvclive/{args.model}",
        verbose=2,
    )
    summary = f"train: {args.model}: val loss {metrics['val_loss']:.4f} (best epoch {metrics['best_epoch']})"
    if "val_loss_blank_images" in metrics:
        low, high = metrics["val_loss_gain_interval"]
        summary += (f", blank images {metrics['val_loss_blank_images']:.4f},"
                    f" gain {metrics['val_loss_gain']:+.4f} (95% [{low:+.4f}, {high:+.4f}] over val studies)")
    print(summary, flush=True)
    interval = metrics.get("val_loss_gain_interval")
    if interval and interval[1] < 0:
        print(f"train: warning: the {args.model} model is clearly WORSE with the images than with blank ones "
              "(the whole gain interval is below zero): it learns something from the training images that "
              "does not hold on val", file=sys.stderr, flush=True)
    elif not metrics.get("uses_images", True):
        print(f"train: warning: the {args.model} model is not clearly better with the images than with blank "
              "ones (the gain's interval reaches zero)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_stage("train", main)
