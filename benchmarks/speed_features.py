"""How close the features stage's throughput comes to the bare network's.

Measures, on prepared images (data/prepared/images_*.npy), with the weights and batch size of
params.yaml `features`:
- stage: `FeatureExtractor.extract`, what the stage runs: uint8 arrays → tf.data (chunking,
  preprocessing in parallel, prefetch) → network → float16 numpy arrays;
- network: the same compiled forward function on the same batches, already preprocessed and placed
  on the compute device, results fetched to host memory (as model.predict_on_batch would);
- pipeline: the tf.data input pipeline alone (no network), to show how much headroom it has.
Both are warmed up first (tracing excluded) and timed `--repeats` times, interleaved with the order
swapped every round; the median time of each counts (on a shared machine single runs vary by tens of
percent, so the per-run seconds and the load average are recorded too). The ratio stage / network should be at least 0.9 (the
input pipeline hides behind the network). The result goes into metrics/speed.json under
"features"; other keys are kept.

    python benchmarks/speed_features.py [--prepared data/prepared] [--max-studies 32] [--repeats 5]

It also times the stage with each runtime of params `features.runtime` (TensorFlow, OpenVINO when
installed), interleaved the same way, and checks that their features agree within 1e-3 relative
(largest difference over the largest value); that goes under "features_runtimes".
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxrgen.benchmark import describe_machine, record_speed  # noqa: E402
from cxrgen.data.split import SPLITS  # noqa: E402
from cxrgen.errors import BadInput, CxrgenError  # noqa: E402
from cxrgen.features.densenet import (  # noqa: E402
    FeatureExtractor,
    load_images,
    load_network,
    openvino_available,
    resolve_weights,
)
from cxrgen.params import load_params  # noqa: E402

TARGET_RATIO = 0.9


def load_studies(prepared: Path, max_studies: int) -> np.ndarray:
    """Up to `max_studies` studies, taken from the splits in order."""
    parts, total = [], 0
    for split in SPLITS:
        path = prepared / f"images_{split}.npy"
        if not path.is_file() or total >= max_studies:
            continue
        part = load_images(path)[: max_studies - total]
        parts.append(np.asarray(part))
        total += len(part)
    if not total:
        raise BadInput(prepared, "no prepared images found (run the prepare stage, or give --prepared)")
    return np.concatenate(parts)


def time_stage(extractor: FeatureExtractor, images: np.ndarray) -> float:
    start = time.perf_counter()
    extractor.extract(images, desc="stage pipeline")
    return time.perf_counter() - start


def time_network(extractor: FeatureExtractor, batches: list) -> float:
    start = time.perf_counter()
    for batch in batches:
        spatial, pooled = extractor.forward(batch)
        spatial.numpy(), pooled.numpy()     # wait for the result, as the stage does
    return time.perf_counter() - start


def time_pipeline(extractor: FeatureExtractor, images: np.ndarray) -> float:
    start = time.perf_counter()
    for _ in extractor.dataset(images):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="metrics/speed.json")
    parser.add_argument("--max-studies", type=int, default=32, help="studies to time (2 images each)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: params features.batch_size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtimes-only", action="store_true",
                        help="only the comparison of the runtimes (features_runtimes)")
    args = parser.parse_args()

    load_before = describe_machine()   # before this process loads the CPU itself
    params = load_params(args.params)
    cfg = params.get("features") or {}
    image_size = int((params.get("image") or {}).get("size", 224))
    batch_size = args.batch_size or int(cfg.get("batch_size", 16))
    choice = resolve_weights(cfg, args.params)
    images = load_studies(Path(args.prepared), args.max_studies)
    network = load_network(choice, image_size, int(cfg.get("seed", 0)))
    if args.runtimes_only:
        data_path = Path(args.prepared).parent.parent / "metrics" / "data.json"
        data = json.loads(data_path.read_text()) if data_path.exists() else {}
        about = {"machine": load_before, "weights": choice.record(), "image_size": image_size,
                 "data": {"data_source": data.get("data_source"), "reports": (data.get("counts") or {}).get("reports")}}
        compare_runtimes(network, batch_size, images, args.repeats, Path(args.out), about)
        return
    extractor = FeatureExtractor(network, batch_size, runtime="tensorflow")

    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    with tf.device(device):     # the bare network's input is already where it computes
        batches = [tf.identity(batch) for batch in extractor.dataset(images)]
    extractor.extract(images[: max(1, batch_size // 2)], desc="warm-up")   # traces the forward function
    time_network(extractor, batches[:1])

    pipeline_time = min(time_pipeline(extractor, images) for _ in range(args.repeats))
    stage_times, network_times = [], []
    for round_ in range(args.repeats):
        if round_ % 2:
            network_times.append(time_network(extractor, batches))
            stage_times.append(time_stage(extractor, images))
        else:
            stage_times.append(time_stage(extractor, images))
            network_times.append(time_network(extractor, batches))
    n_images = 2 * len(images)
    stage_rate = n_images / float(np.median(stage_times))
    network_rate = n_images / float(np.median(network_times))
    data_path = Path(args.prepared).parent.parent / "metrics" / "data.json"
    data = json.loads(data_path.read_text()) if data_path.exists() else {}
    result = {
        "machine": load_before,
        "data": {"data_source": data.get("data_source"), "reports": (data.get("counts") or {}).get("reports")},
        "device": device,
        "weights": choice.record(),
        "image_size": image_size,
        "batch_size": batch_size,
        "studies": int(len(images)),
        "images": n_images,
        "repeats": args.repeats,
        "statistic": "median",
        "stage_images_per_s": round(stage_rate, 2),
        "network_images_per_s": round(network_rate, 2),
        "pipeline_only_images_per_s": round(n_images / pipeline_time, 2),
        "ratio": round(stage_rate / network_rate, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": stage_rate / network_rate >= TARGET_RATIO,
        "stage_seconds": [round(t, 3) for t in stage_times],
        "network_seconds": [round(t, 3) for t in network_times],
    }
    out = Path(args.out)
    record_speed(out, "features", result)
    print(f"features: stage {stage_rate:.1f} img/s, bare network {network_rate:.1f} img/s, "
          f"ratio {stage_rate / network_rate:.3f} (target {TARGET_RATIO}) on {device}; written to {out}")
    compare_runtimes(network, batch_size, images, args.repeats, out, {k: result[k] for k in ("machine", "data", "weights", "image_size")})


def compare_runtimes(network, batch_size: int, images: np.ndarray, repeats: int, out: Path, about: dict) -> None:
    """Stage throughput per runtime (median of interleaved repeats) and the features' agreement."""
    runtimes = ["tensorflow"] + (["openvino"] if openvino_available() else [])
    extractors = {name: FeatureExtractor(network, batch_size, runtime=name) for name in runtimes}
    features = {name: extractor.extract(images, desc=f"warm-up {name}") for name, extractor in extractors.items()}
    seconds = {name: [] for name in runtimes}
    for round_ in range(repeats):
        for name in (runtimes if round_ % 2 == 0 else runtimes[::-1]):
            seconds[name].append(time_stage(extractors[name], images))
    n_images = 2 * len(images)
    result = {**about, "images": n_images, "batch_size": batch_size, "repeats": repeats, "statistic": "median",
              "runtimes": {}}
    for name in runtimes:
        entry = {"runtime": extractors[name].describe_runtime(),
                 "stage_images_per_s": round(n_images / float(np.median(seconds[name])), 2),
                 "stage_seconds": [round(t, 3) for t in seconds[name]]}
        if name != "tensorflow":
            entry["max_relative_difference"] = {
                key: float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max() / np.abs(a.astype(np.float32)).max())
                for key, a, b in zip(("spatial", "pooled"), features["tensorflow"], features[name])}
            entry["agrees_within_1e-3"] = all(v <= 1e-3 for v in entry["max_relative_difference"].values())
            entry["speedup_over_tensorflow"] = round(entry["stage_images_per_s"]
                                                     / result["runtimes"]["tensorflow"]["stage_images_per_s"], 2)
        result["runtimes"][name] = entry
    record_speed(out, "features_runtimes", result)
    print("features by runtime: " + ", ".join(f"{name} {entry['stage_images_per_s']} img/s"
                                              for name, entry in result["runtimes"].items()))


if __name__ == "__main__":
    try:
        main()
    except CxrgenError as exc:
        print(f"speed_features: error: {exc}", file=sys.stderr)
        sys.exit(1)
