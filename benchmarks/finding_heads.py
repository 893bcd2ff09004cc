"""A region-wise finding head on cached region features: how well could a head read the findings?

    bin/python benchmarks/finding_heads.py FEATURES PREPARED [--hidden 256] [--epochs 30] [--pool lse]
                                           [--learning-rate 0.001]

FEATURES: a features stage's folder (data/features), PREPARED: the prepare stage's (data/prepared),
of one collection. A shared MLP scores each of the 2 x 49 regions of a study (DenseNet channels
standardised as the models do → ReLU layer → one logit per observation), the regions' logits are pooled
(log-sum-exp, max or mean) and added to a linear read-out of the mean region. It is fitted on the
training split's labeler findings, its thresholds are calibrated on the val split as the models'
heads are (cxrgen.modeling.train.calibrate_thresholds), and it is scored on the test split:
abnormal-finding micro-F1 and F1 per observation, written to metrics/finding_heads.json (one entry
per head setting). The probe that chose the models' region head (`finding_head: regions`, which
is this head cross-fitted and trained alongside the decoder); here it is fitted alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

from cxrgen.benchmark import describe_machine
from cxrgen.evaluation.scores import clinical_metrics
from cxrgen.files import write_json_atomic
from cxrgen.modeling import train as training
from cxrgen.modeling.whitening import channel_statistics
from cxrgen.observations import OBSERVATIONS

ROOT = Path(__file__).resolve().parents[1]
POOLS = ("lse", "max", "mean")
BATCH = 32


def region_head(mean: np.ndarray, std: np.ndarray, regions: int, channels: int, hidden: int, pool: str) -> keras.Model:
    inputs = keras.Input((regions, channels))
    x = keras.layers.Dropout(0.3)((inputs - mean) / std)
    h = keras.layers.Dropout(0.3)(keras.layers.Dense(hidden, activation="relu",
                                                     kernel_regularizer=keras.regularizers.L2(1e-4))(x))
    region_logits = keras.layers.Dense(len(OBSERVATIONS))(h)                       # (N, regions, findings)
    if pool == "lse":
        pooled = keras.ops.logsumexp(region_logits, axis=1) - np.log(float(regions))
    elif pool == "max":
        pooled = keras.ops.max(region_logits, axis=1)
    else:
        pooled = keras.ops.mean(region_logits, axis=1)
    linear = keras.layers.Dense(len(OBSERVATIONS), kernel_regularizer=keras.regularizers.L2(2e-3))(keras.ops.mean(x, axis=1))
    return keras.Model(inputs, pooled + linear)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pool", choices=POOLS, default="lse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the first rate of the cosine schedule")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/finding_heads.json")
    args = parser.parse_args()
    data = training.load_training_data(args.features, args.prepared, "spatial", splits=("train", "val", "test"))
    x = {split: data.features[split].read_all() for split in ("train", "val", "test")}
    x = {split: array.reshape(len(array), -1, array.shape[-1]) for split, array in x.items()}   # (N, 98, F)
    y = data.findings
    # The models' standardisation of the regions (each channel's mean and floored spread).
    mean, std = (array.astype(np.float32) for array in channel_statistics(x["train"]))
    keras.utils.set_random_seed(args.seed)
    model = region_head(mean, std, x["train"].shape[1], x["train"].shape[2], args.hidden, args.pool)
    schedule = training.learning_rate({"lr_schedule": "cosine", "learning_rate": args.learning_rate, "epochs": args.epochs,
                                       "batch_size": BATCH, "max_steps": 0}, len(x["train"]))
    model.compile(keras.optimizers.Adam(schedule), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    start = time.monotonic()
    model.fit(x["train"], y["train"], batch_size=BATCH, epochs=args.epochs, verbose=2, shuffle=True)
    seconds = round(time.monotonic() - start, 1)

    def probabilities(split: str) -> np.ndarray:
        return 1 / (1 + np.exp(-model.predict(x[split], batch_size=128, verbose=0)))

    val, test = probabilities("val"), probabilities("test")
    thresholds = training.calibrate_thresholds(val, y["val"])
    # Scored as the evaluation scores reports' labels (its per-observation and abnormal micro-F1).
    scores = clinical_metrics(test > thresholds, y["test"] > 0, OBSERVATIONS)
    per_observation = {name: {"support": row["support"], "f1": round(row["f1"], 4)}
                       for name, row in scores["per_observation"].items() if row["support"]}
    record = {
        "head": {"hidden": args.hidden, "pool": args.pool, "epochs": args.epochs, "learning_rate": args.learning_rate,
                 "seed": args.seed},
        "features": str(args.features), "prepared": str(args.prepared),
        "data_source": data.info.get("data_source"), "weights": data.info.get("weights"),
        "studies": {split: int(len(y[split])) for split in ("train", "val", "test")},
        "val_auc_macro": training.finding_head_auc(val, y["val"])["macro"],
        "test_abnormal_f1": {"calibrated": round(scores["abnormal_f1"], 4),
                             "at_0.5": round(clinical_metrics(test > 0.5, y["test"] > 0, OBSERVATIONS)["abnormal_f1"], 4)},
        "test_f1_per_observation": per_observation,
        "fit_seconds": seconds, "machine": describe_machine(),
    }
    runs = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs[f"{args.pool}_{args.hidden}_{args.epochs}_lr{args.learning_rate:g}_seed{args.seed}"] = record
    write_json_atomic(args.out, runs)
    print(json.dumps({"test_abnormal_f1": record["test_abnormal_f1"], "per_observation": per_observation}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
