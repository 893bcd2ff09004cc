"""The `features` stage: prepared image pairs → DenseNet121 (CheXNet) feature maps, computed once.

Network: `keras.applications.DenseNet121` without its ImageNet classifier, input (S, S, 3) with S =
params `image.size`. Per image it gives the last dense block's map after the final BN + ReLU
(S/32 x S/32 x 1024: 7x7 at 224, flattened to 49 positions) and its global average (1024).

Weights (params `features.weights`):
- a path to CheXNet-Keras' `best_weights.h5`: Keras 2 saved DenseNet121(include_top=False,
  pooling="avg") followed by Dense(14, sigmoid, name "predictions") as one flat model. The same model
  is built here and the file loaded by layer name (Keras 2 wrote "conv1/conv", Keras 3 calls it
  "conv1_conv"), checking the layer count and every shape first, so a file for another model is
  refused with one line saying why, and nothing is half-loaded. The Dense(14) is loaded (so the file
  must really be CheXNet's) but not used.
- `imagenet`: Keras' DenseNet121 "notop" ImageNet file, which the user must already have
  (`features.imagenet_path`); nothing is ever downloaded.
- `random`: seeded initialisation (`features.seed`), for offline runs and tests; features from it
  carry no medical meaning.

Preprocessing, as CheXNet-Keras trained (and as Keras' DenseNet ImageNet weights expect, "torch"
mode): the grayscale uint8 image is repeated into 3 channels, scaled to [0, 1] by /255, then each
channel is normalised with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

Output: per split, shards of at most `features.shard_studies` studies, one plain float16 .npy file
per shard and key (spatial, pooled), and features.json listing them (cxrgen.features.store). One
process can compute a range of the shards (`--shards START:STOP`), so several can share the work.

Determinism: seeds are fixed, TensorFlow's op determinism is on, the tf.data pipeline keeps order,
and the .npy files have no timestamps, so the same inputs and params give byte-identical files on
the same software and hardware. Features are stored as float16.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from cxrgen.cluster import worker_position
from cxrgen.device import describe_device
from cxrgen.errors import BadInput, CxrgenError
from cxrgen.features import store
from cxrgen.files import sha256_of, write_json_atomic
from cxrgen.params import check_keys

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHEXNET_CLASSES = 14
HEAD_LAYER = "predictions"    # CheXNet-Keras' name for its Dense(14)
SPATIAL_LAYER = "relu"        # DenseNet121's final BN + ReLU, just before the average pooling
POOLED_LAYER = "avg_pool"
WEIGHT_CHOICES = ("random", "imagenet", "<path to CheXNet best_weights.h5>")
FEATURES_KEYS = ("weights", "imagenet_path", "batch_size", "seed", "runtime", "shard_studies", "precision")
# What runs the network: TensorFlow, or OpenVINO's CPU runtime on the same Keras model, converted
# (float32 throughout: outputs agree with TensorFlow's to ~1e-6 relative; the stage ran 1.2-1.4x
# TensorFlow's images/s on 2 idle cores, see metrics/speed.json "features_runtimes"). auto:
# OpenVINO where it is installed and no GPU is visible to TensorFlow, else TensorFlow.
RUNTIMES = ("auto", "tensorflow", "openvino")
# The network's compute dtype under TensorFlow (float32 weights either way): mixed_float16 for GPUs
# (tensor cores), mixed_bfloat16 where a CPU or TPU has bfloat16 units. Features are stored float16.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PREPROCESS_THREADS = max(1, min(8, os.cpu_count() or 1))
PREFETCH_BATCHES = 2


# ---------------------------------------------------------------------------------------------
# Which weights


@dataclass(frozen=True)
class WeightChoice:
    kind: str                  # random | chexnet | imagenet
    path: Path | None = None
    sha256: str | None = None

    def record(self) -> str:
        """How features.json (and the metrics that copy it) name the weights."""
        if self.kind == "chexnet":
            return f"chexnet:{self.path.name} sha256 {self.sha256}"
        if self.kind == "imagenet":
            return f"imagenet:{self.path.name}"
        return "random"


def resolve_weights(cfg: dict, params_path: str | Path = "params.yaml") -> WeightChoice:
    """params `features.weights` (+ `imagenet_path`) → a checked choice; a missing file is one clear error."""
    weights = cfg.get("weights", "random")
    if weights in (None, "", "random"):
        return WeightChoice("random")
    if not isinstance(weights, str):
        raise BadInput(params_path, f"features.weights must be one of {', '.join(WEIGHT_CHOICES)}, not {weights!r}")
    if weights == "imagenet":
        path = cfg.get("imagenet_path")
        if not path:
            raise BadInput(params_path, (
                "features.weights is imagenet but features.imagenet_path is not set: set it to your local copy "
                "of Keras' densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 (nothing is downloaded), "
                "or set features.weights to random or to a CheXNet best_weights.h5 path"))
        path = Path(path)
        if not path.is_file():
            raise BadInput(path, "ImageNet weight file not found (features.imagenet_path); nothing is downloaded")
        return WeightChoice("imagenet", path, sha256_of(path))
    path = Path(weights)
    if not path.is_file():
        raise BadInput(path, (
            "CheXNet weight file not found (features.weights); set it to the path of CheXNet-Keras' "
            "best_weights.h5, or to random or imagenet"))
    return WeightChoice("chexnet", path, sha256_of(path))


# ---------------------------------------------------------------------------------------------
# Keras 2 HDF5 weight files
#
# Layout written by Keras 2 `save_weights` (and inside "model_weights" by `model.save`): root attrs
# `layer_names` (every layer, in model order; long lists are split into layer_names0, 1, ...),
# `backend`, `keras_version`; a group per layer with attr `weight_names` (empty for layers without
# weights) and one dataset per weight, named like "conv1/conv/kernel:0".


def _read_name_list(group: h5py.Group, attr: str) -> list[str]:
    if attr in group.attrs:
        values = list(group.attrs[attr])
    else:
        values, chunk = [], 0
        while f"{attr}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{attr}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _has_names(group: h5py.Group, attr: str) -> bool:
    return attr in group.attrs or f"{attr}0" in group.attrs


def _short_weight_name(name: str) -> str:
    """"conv1/conv/kernel:0" → "kernel" (Keras 3 variables are named like that)."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def normalise_layer_name(name: str) -> str:
    """Keras 2's DenseNet named its first layers "conv1/conv"; Keras 3 calls them "conv1_conv"."""
    return name.replace("/", "_")


def read_keras2_weights(path: str | Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The layers with weights of a Keras 2 HDF5 file, in file order: (layer name, {weight: array})."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise BadInput(path, f"not a readable HDF5 weight file ({str(exc).splitlines()[0]})") from None
    with f:
        group = f
        if not _has_names(f, "layer_names") and isinstance(f.get("model_weights"), h5py.Group):
            group = f["model_weights"]     # a whole model saved by Keras 2 model.save()
        if not _has_names(group, "layer_names"):
            hint = (" (this looks like a Keras 3 .weights.h5 file)" if "vars" in f or "layers" in f else "")
            raise BadInput(path, f"not a Keras 2 HDF5 weight file: no 'layer_names' attribute{hint}")
        layers = []
        for layer_name in _read_name_list(group, "layer_names"):
            layer_group = group.get(layer_name)
            if not isinstance(layer_group, h5py.Group):
                raise BadInput(path, f"layer {layer_name} is listed in 'layer_names' but has no group")
            weight_names = _read_name_list(layer_group, "weight_names")
            if not weight_names:
                continue
            values = {}
            for weight_name in weight_names:
                dataset = layer_group.get(weight_name)
                if not isinstance(dataset, h5py.Dataset):
                    raise BadInput(path, f"layer {layer_name}: weight {weight_name} is listed but missing")
                values[_short_weight_name(weight_name)] = np.asarray(dataset)
            if len(values) != len(weight_names):
                raise BadInput(path, f"layer {layer_name}: two weights share a name ({weight_names})")
            layers.append((layer_name, values))
    return layers


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_keras2_weights(model: keras.Model, path: str | Path, description: str,
                        head: str | None = None) -> None:
    """Check a Keras 2 weight file against `model` completely, then assign every weight.

    `head` names a layer the file may call differently (CheXNet-Keras' Dense(14)); any other layer
    must be present under its own name. Raises BadInput(path, why) on any mismatch; the model is
    untouched then.
    """
    path = Path(path)
    expected = [layer for layer in model.layers if layer.weights]
    saved = read_keras2_weights(path)
    if len(saved) != len(expected):
        hint = ""
        if head and len(saved) == len(expected) - 1:
            hint = ("; it looks like DenseNet121 without CheXNet's Dense(14) (an ImageNet notop file? "
                    "use features.weights: imagenet with features.imagenet_path)")
        elif not head and len(saved) == len(expected) + 1:
            hint = "; it looks like DenseNet121 with a classifier (a CheXNet file? set features.weights to its path)"
        raise BadInput(path, f"layer count mismatch: {description} has {len(expected)} layers with weights, "
                             f"the file has {len(saved)}{hint}")

    by_name = {normalise_layer_name(name): (name, values) for name, values in saved}
    if len(by_name) != len(saved):
        raise BadInput(path, "two layers in the file have the same name")
    model_names = {layer.name for layer in expected}
    missing = [layer.name for layer in expected if layer.name not in by_name]
    unexpected = [original for name, (original, _) in by_name.items() if name not in model_names]
    if head and missing == [head] and len(unexpected) == 1:
        by_name[head] = by_name.pop(normalise_layer_name(unexpected[0]))   # the head under another name
        missing = []
    if missing:
        raise BadInput(path, f"not {description}: layers missing from the file: {_listing(missing)} "
                             f"(the file has instead: {_listing(unexpected)})")

    assignments = []
    for layer in expected:
        file_name, values = by_name[layer.name]
        variables = {variable.name: variable for variable in layer.weights}
        if set(values) != set(variables):
            raise BadInput(path, f"layer {file_name}: weights {sorted(values)} in the file, "
                                 f"{sorted(variables)} expected")
        for weight, variable in variables.items():
            found, wanted = tuple(values[weight].shape), tuple(variable.shape)
            if found != wanted:
                raise BadInput(path, f"shape mismatch in layer {file_name}, weight {weight}: "
                                     f"expected {wanted}, found {found}")
            assignments.append((variable, values[weight]))
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))


# ---------------------------------------------------------------------------------------------
# The network


def configure_determinism(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_backbone(image_size: int) -> keras.Model:
    return keras.applications.DenseNet121(include_top=False, weights=None, pooling="avg",
                                          input_shape=(image_size, image_size, 3))


def build_chexnet(image_size: int) -> keras.Model:
    """The model CheXNet-Keras saved: DenseNet121 + Dense(14, sigmoid), one flat functional model."""
    backbone = build_backbone(image_size)
    head = keras.layers.Dense(CHEXNET_CLASSES, activation="sigmoid", name=HEAD_LAYER)(backbone.output)
    return keras.Model(backbone.input, head, name="chexnet")


def load_network(choice: WeightChoice, image_size: int, seed: int = 0, precision: str = "float32") -> keras.Model:
    """The DenseNet121 with the chosen weights (random ones seeded by `seed`), its layers
    computing in `precision` (see PRECISIONS)."""
    if image_size < 32:
        raise BadInput("params.yaml", f"image.size {image_size} is below DenseNet121's minimum of 32")
    if precision not in PRECISIONS:
        raise BadInput("params.yaml", f"features.precision must be one of {PRECISIONS}, not {precision!r}")
    configure_determinism(seed)
    # keras.applications builds under the global dtype policy: set it for the build only.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return _build_network(choice, image_size)
    finally:
        keras.config.set_dtype_policy(previous)


def _build_network(choice: WeightChoice, image_size: int) -> keras.Model:
    if choice.kind == "chexnet":
        network = build_chexnet(image_size)
        load_keras2_weights(network, choice.path, "CheXNet (DenseNet121 + Dense(14))", head=HEAD_LAYER)
    elif choice.kind == "imagenet":
        network = build_backbone(image_size)
        load_keras2_weights(network, choice.path, "DenseNet121 without top (ImageNet notop)")
    else:
        network = build_backbone(image_size)
    return network


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def choose_runtime(requested: str, precision: str = "float32") -> str:
    """tensorflow | openvino for params `features.runtime` (see RUNTIMES); mixed precision is
    TensorFlow's (OpenVINO runs here in float32)."""
    if requested not in RUNTIMES:
        raise BadInput("params.yaml", f"features.runtime must be one of {RUNTIMES}, not {requested!r}")
    if requested == "auto":
        cpu_only = not tf.config.list_logical_devices("GPU")
        return "openvino" if openvino_available() and cpu_only and precision == "float32" else "tensorflow"
    if requested == "openvino" and precision != "float32":
        raise BadInput("params.yaml", f"features.precision {precision} runs on the TensorFlow runtime only "
                                      "(set features.runtime: tensorflow or auto, or features.precision: float32)")
    if requested == "openvino" and not openvino_available():
        raise BadInput("params.yaml", "features.runtime is openvino, but the openvino package is not installed "
                                      "(bin/setup installs it on x86_64; or set features.runtime: tensorflow)")
    return requested


def preprocess(gray: tf.Tensor) -> tf.Tensor:
    """uint8 (batch, S, S) → float32 (batch, S, S, 3): [0, 1], then ImageNet mean/std per channel."""
    x = tf.cast(gray, tf.float32) / 255.0
    x = tf.repeat(x[..., tf.newaxis], 3, axis=-1)
    return (x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def check_images(images: np.ndarray, source: str | Path, size: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (2, size, size):
        raise BadInput(source, f"expected uint8 images of shape (studies, 2, {size}, {size}), "
                               f"found {images.dtype} {images.shape} (image.size changed? rerun prepare)")


class FeatureExtractor:
    """Runs prepared (studies, 2, S, S) uint8 arrays through the network, batch by batch."""

    def __init__(self, network: keras.Model, batch_size: int = 16, runtime: str = "tensorflow"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput("params.yaml", f"features.batch_size must be a positive integer, not {batch_size!r}")
        self.precision = network.dtype_policy.name   # load_network's precision
        self.runtime = choose_runtime(runtime, self.precision)
        self.image_size = int(network.input_shape[1])
        self.batch_size = batch_size
        self.model = keras.Model(network.input, [network.get_layer(SPATIAL_LAYER).output,
                                                 network.get_layer(POOLED_LAYER).output])
        _, height, width, self.channels = self.model.outputs[0].shape
        self.grid = (int(height), int(width))
        self.positions = self.grid[0] * self.grid[1]
        if self.runtime == "openvino":
            self.forward = self._openvino_forward()
        else:
            # One trace for every batch size (the last batch is smaller).
            self.forward = tf.function(self._forward, input_signature=[
                tf.TensorSpec((None, self.image_size, self.image_size, 3), tf.float32)])

    def _forward(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        spatial, pooled = self.model(x, training=False)
        spatial = tf.reshape(spatial, (-1, self.positions, self.channels))
        return tf.cast(spatial, tf.float16), tf.cast(pooled, tf.float16)

    def _openvino_forward(self):
        """The same Keras model converted to OpenVINO and compiled for the CPU in float32 (its
        default there may be bfloat16, which would move the features by ~0.5 %)."""
        import openvino

        spec = tf.TensorSpec((None, self.image_size, self.image_size, 3), tf.float32)
        network = tf.function(lambda x: self.model(x, training=False)).get_concrete_function(spec)
        converted = openvino.convert_model(network)
        compiled = openvino.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                    "PERFORMANCE_HINT": "LATENCY"})
        spatial_port, pooled_port = compiled.outputs

        def forward(x) -> tuple[np.ndarray, np.ndarray]:
            out = compiled(np.asarray(x, np.float32))
            spatial = out[spatial_port].reshape(-1, self.positions, self.channels)
            return spatial.astype(np.float16), out[pooled_port].astype(np.float16)

        return forward

    def describe_runtime(self) -> str:
        if self.runtime == "openvino":
            import openvino

            return f"openvino {openvino.__version__.split('-')[0]} (CPU, float32)"
        return f"tensorflow {tf.__version__}" + ("" if self.precision == "float32" else f" ({self.precision})")

    def dataset(self, images: np.ndarray) -> tf.data.Dataset:
        """Preprocessed batches, images in study order, frontal then lateral, prepared in parallel.

        The source is the array itself (from_tensor_slices, one copy of the split's uint8 images, a
        few hundred MB at most), not a Python generator: under op determinism tf.data runs a pipeline
        holding a stateful op (from_generator's py_func) serially and without prefetch, which would
        stop preprocessing from overlapping the network. Order is kept (deterministic=True).
        """
        size = self.image_size
        flat = np.ascontiguousarray(images).reshape(-1, size, size)
        options = tf.data.Options()
        # Fixed parallelism and buffers instead of the autotuner: elementwise preprocessing needs
        # little, and on a small CPU machine every extra thread competes with the network.
        options.autotune.enabled = False
        return (tf.data.Dataset.from_tensor_slices(flat)
                .batch(self.batch_size)
                .map(preprocess, num_parallel_calls=PREPROCESS_THREADS, deterministic=True)
                .prefetch(PREFETCH_BATCHES)
                .with_options(options))

    def extract(self, images: np.ndarray, desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
        """(studies, 2, S, S) uint8 → spatial (studies, 2, positions, 1024), pooled (studies, 2, 1024), float16."""
        check_images(images, desc, self.image_size)
        n_images = 2 * len(images)
        spatial = np.empty((n_images, self.positions, self.channels), np.float16)
        pooled = np.empty((n_images, self.channels), np.float16)
        done = 0
        with tqdm(total=n_images, desc=desc, unit=" img", file=sys.stderr, mininterval=2,
                  disable=n_images == 0) as bar:
            for batch in self.dataset(images) if n_images else ():
                batch_spatial, batch_pooled = (np.asarray(t) for t in self.forward(batch))
                if not (np.isfinite(batch_spatial).all() and np.isfinite(batch_pooled).all()):
                    raise CxrgenError(f"{desc}: features overflow float16 (are the weights right?)")
                count = len(batch_spatial)
                spatial[done:done + count] = batch_spatial
                pooled[done:done + count] = batch_pooled
                done += count
                bar.update(count)
        if done != n_images:
            raise CxrgenError(f"{desc}: the input pipeline gave {done} images, expected {n_images}")
        return (spatial.reshape(len(images), 2, self.positions, self.channels),
                pooled.reshape(len(images), 2, self.channels))


# ---------------------------------------------------------------------------------------------
# Output files (see cxrgen.features.store for the layout)


def load_images(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise BadInput(path, "prepared images not found (run the prepare stage first)") from None
    except ValueError as exc:
        raise BadInput(path, f"not a readable .npy array ({exc})") from None


def feature_arrays(spatial: np.ndarray, pooled: np.ndarray) -> dict[str, np.ndarray]:
    return {"spatial": spatial, "pooled": pooled}


def shard_plan(counts: dict[str, int], shard_studies: int) -> list[tuple[str, int, int, int]]:
    """Every shard the stage writes, in the order it writes them: (split, index, first row, stop row)
    for each split's shards in turn, then the blank control's one. `--shards START:STOP` picks a
    range of this list."""
    plan = [(split, index, start, stop) for split, count in counts.items()
            for index, (start, stop) in enumerate(store.shard_ranges(count, shard_studies))]
    return plan + [(store.BLANK, 0, 0, 1)]


def _complete(out_dir: Path, plan: list[tuple[str, int, int, int]]) -> bool:
    return all(store.shard_path(out_dir, split, key, index).is_file()
               for split, index, _, _ in plan for key in store.KEYS)


def run_features(prepared_dir: str | Path, out_dir: str | Path, params: dict, splits: tuple[str, ...],
                 params_path: str | Path = "params.yaml", data_source: str | None = None,
                 shards: tuple[int, int] | str | None = None) -> dict | None:
    """The stage: every split's shards, the blank control, and the description (returned and written).

    shards=(start, stop): only those entries of shard_plan (stop -1: to the end), so that several
    processes or machines can share the work on one folder; "cluster": this worker's contiguous
    share of them, from TF_CONFIG (the cluster multi-worker training uses); the one that finds every shard in place
    when it is done writes features.json (and returns the description; the others return None).
    """
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    cfg = check_keys(params.get("features"), FEATURES_KEYS, "features", params_path)
    image_size = int(check_keys(params.get("image"), ("size",), "image", params_path).get("size", 224))
    seed = int(cfg.get("seed", 0))
    shard_studies = store.check_shard_studies(cfg.get("shard_studies", store.DEFAULT_SHARD_STUDIES), params_path)
    choice = resolve_weights(cfg, params_path)
    # Fail on a missing or mismatched input before spending minutes on the network.
    images = {split: load_images(prepared_dir / f"images_{split}.npy") for split in splits}
    for split, array in images.items():
        check_images(array, prepared_dir / f"images_{split}.npy", image_size)
    plan = shard_plan({split: len(array) for split, array in images.items()}, shard_studies)
    if shards == "cluster":   # this worker's share of the shards (TF_CONFIG, as multi-worker training)
        position, members = worker_position("--shards cluster")
        start, stop = position * len(plan) // members, (position + 1) * len(plan) // members
    else:
        start, stop = shards if shards is not None else (0, len(plan))
        stop = len(plan) if stop < 0 else stop
    if shards == "cluster" and start == stop:
        pass   # more workers than shards: nothing for this one to compute
    elif not 0 <= start < stop <= len(plan):
        raise BadInput("--shards", f"{start}:{stop} is not a range of this collection's {len(plan)} shards "
                                   f"(0:{len(plan)}; {shard_studies} studies per shard, the blank control last)")
    extractor = FeatureExtractor(load_network(choice, image_size, seed, cfg.get("precision", "float32")),
                                 cfg.get("batch_size", 16), cfg.get("runtime", "auto"))

    blank = np.zeros((1, 2, image_size, image_size), np.uint8)   # two all-black images: the control
    for split, index, first, last in plan[start:stop]:
        source = blank if split == store.BLANK else images[split][first:last]
        label = f"features {split}" + (f" shard {index}" if split != store.BLANK and len(plan) > len(splits) + 1 else "")
        store.write_shard(out_dir, split, index, feature_arrays(*extractor.extract(source, desc=label)))
    if not _complete(out_dir, plan):
        return None

    counts = {split: int(len(array)) for split, array in images.items()}
    description = {
        "weights": choice.record(),
        "weights_sha256": choice.sha256,
        "seed": seed,
        "image_size": image_size,
        "grid": list(extractor.grid),
        "batch_size": extractor.batch_size,
        "runtime": extractor.describe_runtime(),
        "precision": extractor.precision,
        "dtype": "float16",
        "network": "DenseNet121 (keras.applications), final BN+ReLU map and its global average",
        "preprocessing": "gray repeated to RGB, /255, ImageNet mean/std per channel",
        "counts": counts,
        "shard_studies": shard_studies,
        "splits": {**{split: {"studies": count, "shards": store.shard_count(count, shard_studies)}
                      for split, count in counts.items()},
                   store.BLANK: {"studies": 1, "shards": 1}},
        "data_source": data_source,
        "device": describe_device(),
    }
    write_json_atomic(out_dir / "features.json", description)
    return description
