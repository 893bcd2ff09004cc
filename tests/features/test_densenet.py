"""The features stage: loading Keras 2 (CheXNet-Keras) weight files, refusing wrong ones in one line,
and the stage's outputs (shapes, dtypes, row/view alignment, determinism) on a tiny prepared set.

Weight files are written here with h5py in the layout Keras 2's save_weights wrote (root attrs
layer_names/backend/keras_version, a group per layer with weight_names, datasets "conv1/conv/kernel:0"),
filled with known random values; DenseNet121 is built at 32x32 (weight shapes do not depend on it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from cxrgen.features import densenet  # noqa: E402
from cxrgen.errors import BadInput  # noqa: E402
from cxrgen.features.store import FeatureStore  # noqa: E402

SIZE = 32
# Keras 2's DenseNet121 named its stem "conv1/..."; Keras 3 writes "conv1_...".
KERAS2_NAMES = {"input_layer": "input_1", "conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn",
                "conv1_relu": "conv1/relu"}
CHEXNET = "CheXNet (DenseNet121 + Dense(14))"


def keras2_layers(model, seed: int = 7) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Every layer of `model` under its Keras 2 name, with known random values for its weights."""
    rng = np.random.default_rng(seed)
    layers = []
    for layer in model.layers:
        name = KERAS2_NAMES.get(layer.name, layer.name)
        weights = []
        for variable in layer.weights:
            value = rng.standard_normal(tuple(variable.shape)).astype(np.float32) * 0.05
            if variable.name == "moving_variance":
                value = np.abs(value) + 0.5
            weights.append((f"{name}/{variable.name}:0", value))
        layers.append((name, weights))
    return layers


def write_keras2_file(path: Path, layers, keras_version: str = "2.1.4") -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode("utf8") for name, _ in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras_version.encode("utf8")
        for name, weights in layers:
            group = f.create_group(name)
            # Keras 2 stored an empty float array for layers without weights.
            group.attrs["weight_names"] = (np.array([w.encode("utf8") for w, _ in weights]) if weights
                                           else np.asarray([]))
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=value)
    return path


def values_of(layers) -> dict[str, list[np.ndarray]]:
    return {densenet.normalise_layer_name(name): [v for _, v in weights] for name, weights in layers}


@pytest.fixture(scope="module")
def network():
    """One CheXNet-shaped model for the refusal tests (a refused file leaves it untouched)."""
    return densenet.build_chexnet(SIZE)


@pytest.fixture(scope="module")
def chexnet_layers(network):
    return keras2_layers(network)


@pytest.fixture(scope="module")
def chexnet_file(tmp_path_factory, chexnet_layers) -> Path:
    return write_keras2_file(tmp_path_factory.mktemp("weights") / "best_weights.h5", chexnet_layers)


def refusal(network, path: Path, **kwargs) -> str:
    before = [w.numpy().copy() for w in network.weights[:3]]
    with pytest.raises(BadInput) as caught:
        densenet.load_keras2_weights(network, path, CHEXNET, head=densenet.HEAD_LAYER, **kwargs)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, network.weights[:3])), "half-loaded"
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_chexnet_file_loads_every_weight(chexnet_file, chexnet_layers):
    choice = densenet.resolve_weights({"weights": str(chexnet_file)})
    assert choice.kind == "chexnet"
    assert choice.record() == f"chexnet:best_weights.h5 sha256 {choice.sha256}" and len(choice.sha256) == 64
    loaded = densenet.load_network(choice, SIZE, seed=0)
    expected = values_of(chexnet_layers)
    weighted = [layer for layer in loaded.layers if layer.weights]
    assert len(weighted) == 242      # 120 convolutions + 121 batch norms + the Dense(14)
    for name in ("conv1_conv", "conv1_bn", "conv2_block1_1_conv", "pool3_bn", "conv5_block16_2_conv", "bn",
                 "predictions"):
        actual = [w.numpy() for w in loaded.get_layer(name).weights]
        assert len(actual) == len(expected[name])
        for got, want in zip(actual, expected[name]):
            np.testing.assert_array_equal(got, want)
    kernel, bias = (w.numpy() for w in loaded.get_layer("predictions").weights)
    assert kernel.shape == (1024, 14) and bias.shape == (14,)
    # Every weight arrived, not only the ones looked at above.
    for layer in weighted:
        for got, want in zip(layer.weights, expected[layer.name]):
            assert np.array_equal(got.numpy(), want), layer.name


def test_head_under_another_name_loads(tmp_path, network, chexnet_layers):
    renamed = [(("dense_1", [(w.replace("predictions", "dense_1"), v) for w, v in weights])
                if name == "predictions" else (name, weights)) for name, weights in chexnet_layers]
    densenet.load_keras2_weights(network, write_keras2_file(tmp_path / "w.h5", renamed), CHEXNET,
                                 head=densenet.HEAD_LAYER)
    np.testing.assert_array_equal(network.get_layer("predictions").weights[1].numpy(), renamed[-1][1][1][1])


def test_truncated_file_is_refused_with_layer_counts(tmp_path, network, chexnet_layers):
    path = write_keras2_file(tmp_path / "truncated.h5", chexnet_layers[:300])
    message = refusal(network, path)
    found = sum(1 for _, weights in chexnet_layers[:300] if weights)
    assert "layer count mismatch" in message and "has 242 layers with weights" in message
    assert f"the file has {found}" in message


def test_imagenet_notop_file_as_chexnet_is_refused_with_a_hint(tmp_path, network, chexnet_layers):
    notop = [layer for layer in chexnet_layers if layer[0] != "predictions"]
    message = refusal(network, write_keras2_file(tmp_path / "notop.h5", notop))
    assert "242" in message and "241" in message and "imagenet" in message.lower()


def test_shape_mismatch_names_the_layer(tmp_path, network, chexnet_layers):
    changed = []
    for name, weights in chexnet_layers:
        if name == "conv2_block1_1_conv":
            weights = [(weights[0][0], np.zeros((1, 1, 64, 96), np.float32))]
        changed.append((name, weights))
    message = refusal(network, write_keras2_file(tmp_path / "shape.h5", changed))
    assert "conv2_block1_1_conv" in message and "kernel" in message
    assert "expected (1, 1, 64, 128), found (1, 1, 64, 96)" in message


def test_missing_layer_names_are_listed(tmp_path, network, chexnet_layers):
    renamed = [(("conv9_block1_1_conv", weights) if name == "conv3_block2_1_conv" else (name, weights))
               for name, weights in chexnet_layers]
    message = refusal(network, write_keras2_file(tmp_path / "names.h5", renamed))
    assert "missing from the file: conv3_block2_1_conv" in message and "conv9_block1_1_conv" in message


def test_not_a_keras2_weight_file_is_refused(tmp_path, network):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    assert "not a readable HDF5" in refusal(network, text)
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers")
        f.create_group("vars")
    assert "no 'layer_names'" in refusal(network, keras3)


def test_imagenet_needs_a_local_file(tmp_path):
    with pytest.raises(BadInput) as caught:
        densenet.resolve_weights({"weights": "imagenet", "imagenet_path": None})
    assert "features.imagenet_path" in str(caught.value) and "nothing is downloaded" in str(caught.value)
    with pytest.raises(BadInput, match="ImageNet weight file not found"):
        densenet.resolve_weights({"weights": "imagenet", "imagenet_path": str(tmp_path / "absent.h5")})
    with pytest.raises(BadInput, match="CheXNet weight file not found"):
        densenet.resolve_weights({"weights": str(tmp_path / "best_weights.h5")})
    assert densenet.resolve_weights({}).record() == "random"


def test_imagenet_notop_file_loads(tmp_path, chexnet_layers):
    notop = [layer for layer in chexnet_layers if layer[0] != "predictions"]
    path = write_keras2_file(tmp_path / "densenet121_notop.h5", notop, keras_version="2.2.4")
    choice = densenet.resolve_weights({"weights": "imagenet", "imagenet_path": str(path)})
    assert choice.record() == "imagenet:densenet121_notop.h5"
    loaded = densenet.load_network(choice, SIZE)
    np.testing.assert_array_equal(loaded.get_layer("conv1_conv").weights[0].numpy(), values_of(notop)["conv1_conv"][0])


def test_images_of_another_size_are_refused(tmp_path):
    np.save(tmp_path / "images_train.npy", np.zeros((2, 2, 32, 32), np.uint8))
    params = {"image": {"size": 64}, "features": {"weights": "random"}}
    with pytest.raises(BadInput, match=r"images_train.npy: expected uint8 images of shape \(studies, 2, 64, 64\)"):
        densenet.run_features(tmp_path, tmp_path / "out", params, ("train",))


# ---------------------------------------------------------------------------------------------
# The stage end to end on a tiny prepared set (random weights, 64x64 → a 2x2 map)

STAGE_SIZE = 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (4, 2, STAGE_SIZE, STAGE_SIZE), dtype=np.uint8)
    train[1] = 0            # a study of two black images: must match the blank control
    train[2, 0] = 0         # frontal black, lateral not: checks the view order
    arrays = {"train": train, "val": rng.integers(0, 256, (1, 2, STAGE_SIZE, STAGE_SIZE), dtype=np.uint8),
              "test": np.zeros((0, 2, STAGE_SIZE, STAGE_SIZE), np.uint8)}
    (root / "data" / "prepared").mkdir(parents=True)
    for split, array in arrays.items():
        np.save(root / "data" / "prepared" / f"images_{split}.npy", array)
    (root / "metrics").mkdir()
    (root / "metrics" / "data.json").write_text(json.dumps({"data_source": "synthetic"}))
    (root / "params.yaml").write_text(
        f"image:\n  size: {STAGE_SIZE}\nfeatures:\n  weights: random\n  imagenet_path: null\n"
        "  batch_size: 3\n  seed: 0\n  shard_studies: 3\n")
    return root


def run_stage_script(project_root: Path, python_exe: str, root: Path, out: str, *extra: str) -> Path:
    subprocess.run([python_exe, str(project_root / "stages" / "features.py"), "--params", "params.yaml",
                    "--prepared", "data/prepared", "--data-metrics", "metrics/data.json", "--out", out, *extra],
                   cwd=root, check=True, timeout=300)
    return root / out


@pytest.fixture(scope="module")
def two_runs(project_root, python_exe, prepared) -> tuple[Path, Path]:
    return (run_stage_script(project_root, python_exe, prepared, "features_a"),
            run_stage_script(project_root, python_exe, prepared, "features_b"))


def test_outputs_shapes_dtypes_and_description(two_runs, prepared):
    out, _ = two_runs
    store = FeatureStore(out)
    for split, n in (("train", 4), ("val", 1), ("test", 0)):
        spatial, pooled = store.open(split, "spatial").read_all(), store.open(split, "pooled").read_all()
        assert spatial.shape == (n, 2, 4, 1024) and spatial.dtype == np.float16
        assert pooled.shape == (n, 2, 1024) and pooled.dtype == np.float16
        assert np.isfinite(spatial).all()
        # pooled is the average of the map it came from (same row, same view)
        np.testing.assert_allclose(pooled, spatial.astype(np.float32).mean(axis=2), rtol=0.01, atol=1e-3)
    assert store.blank("spatial").shape == (1, 2, 4, 1024) and store.blank("pooled").shape == (1, 2, 1024)
    blank_pooled = store.blank("pooled").astype(np.float32)
    description = json.loads((out / "features.json").read_text())
    assert description["weights"] == "random" and description["weights_sha256"] is None
    assert description["counts"] == {"train": 4, "val": 1, "test": 0}
    # params shard_studies: 3 -> the 4 training studies in two shards
    assert description["shard_studies"] == 3
    assert description["splits"] == {"train": {"studies": 4, "shards": 2}, "val": {"studies": 1, "shards": 1},
                                      "test": {"studies": 0, "shards": 1}, "blank": {"studies": 1, "shards": 1}}
    assert description["image_size"] == STAGE_SIZE and description["grid"] == [2, 2]
    assert description["seed"] == 0 and description["data_source"] == "synthetic"
    assert description["runtime"].startswith(("openvino ", "tensorflow "))   # features.runtime: auto
    assert description["device"]["device"] in ("CPU", "GPU") and description["device"]["tensorflow"]

    pooled = store.open("train", "pooled").read_all().astype(np.float32)
    # rows and views stay aligned with the input: the black study and the black frontal view
    np.testing.assert_allclose(pooled[1], blank_pooled[0], atol=1e-3)
    np.testing.assert_allclose(pooled[2, 0], blank_pooled[0, 0], atol=1e-3)
    assert np.abs(pooled[2, 1] - blank_pooled[0, 1]).max() > 1e-2
    assert np.abs(pooled[0] - pooled[3]).max() > 1e-2


OUTPUT_FILES = ["blank/pooled-00000.npy", "blank/spatial-00000.npy", "features.json",
                "test/pooled-00000.npy", "test/spatial-00000.npy",
                "train/pooled-00000.npy", "train/pooled-00001.npy", "train/spatial-00000.npy",
                "train/spatial-00001.npy", "val/pooled-00000.npy", "val/spatial-00000.npy"]


def output_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_two_runs_give_identical_bytes(two_runs):
    first, second = two_runs
    assert output_files(first) == OUTPUT_FILES == output_files(second)
    for name in OUTPUT_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_shard_ranges_computed_apart_give_the_same_store(project_root, python_exe, prepared, two_runs):
    """Two processes each computing a range of the shards (train 0-1, then val, test and blank) give
    the files of one run; features.json waits for the last of them."""
    reference, _ = two_runs
    out = run_stage_script(project_root, python_exe, prepared, "features_split", "--shards", "0:2")
    assert output_files(out) == [name for name in OUTPUT_FILES if name.startswith("train/")]
    run_stage_script(project_root, python_exe, prepared, "features_split", "--shards", "2:")
    assert output_files(out) == OUTPUT_FILES
    for name in OUTPUT_FILES:
        if name != "features.json":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    description = json.loads((out / "features.json").read_text())
    assert description["splits"] == json.loads((reference / "features.json").read_text())["splits"]
    result = subprocess.run([python_exe, str(project_root / "stages" / "features.py"), "--params", "params.yaml",
                             "--out", "features_bad", "--shards", "4:9"], cwd=prepared, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "features: error: --shards: 4:9 is not a range of this collection's 5 shards "
        "(0:5; 3 studies per shard, the blank control last)")


def test_workers_of_a_cluster_share_the_shards(project_root, python_exe, prepared, two_runs):
    """`--shards cluster`: each worker of TF_CONFIG's cluster takes its contiguous share of the 5
    shards (2 of 3 here: 1:3), and the three together give the files of one run."""
    reference, _ = two_runs
    workers = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]

    def worker(index: int) -> None:
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": index}})}
        subprocess.run([python_exe, str(project_root / "stages" / "features.py"), "--params", "params.yaml",
                        "--out", "features_cluster", "--shards", "cluster"], cwd=prepared, check=True, timeout=300,
                       env=env, capture_output=True)

    out = prepared / "features_cluster"
    worker(1)
    assert output_files(out) == [name for name in OUTPUT_FILES if name.startswith(("train/spatial-00001", "train/pooled-00001", "val/"))]
    worker(0)
    worker(2)
    assert output_files(out) == OUTPUT_FILES
    for name in OUTPUT_FILES:
        if name != "features.json":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    result = subprocess.run([python_exe, str(project_root / "stages" / "features.py"), "--params", "params.yaml",
                             "--out", "features_nocluster", "--shards", "cluster"], cwd=prepared, capture_output=True,
                            text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    assert result.returncode == 1 and "TF_CONFIG is not set" in result.stderr.strip().splitlines()[-1]


def test_stage_reports_a_bad_weight_file_in_one_line(project_root, python_exe, prepared, tmp_path):
    bad = tmp_path / "best_weights.h5"
    write_keras2_file(bad, [("conv1/conv", [("conv1/conv/kernel:0", np.zeros((7, 7, 3, 64), np.float32))])])
    params = prepared / "params_bad.yaml"
    params.write_text(f"image:\n  size: {STAGE_SIZE}\nfeatures:\n  weights: {bad}\n  batch_size: 3\n  seed: 0\n")
    result = subprocess.run([python_exe, str(project_root / "stages" / "features.py"), "--params", str(params),
                             "--out", str(tmp_path / "out")], cwd=prepared, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"features: error: {bad}: layer count mismatch: {CHEXNET} has 242 layers with weights, "
                    "the file has 1")
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# The OpenVINO runtime: the same features as TensorFlow's


def needs_openvino():
    if not densenet.openvino_available():
        if os.environ.get("CI"):
            pytest.fail("openvino is not installed (bin/setup installs it on x86_64; required under CI)")
        pytest.skip("openvino is not installed (bin/setup installs it on x86_64)")


def test_openvino_gives_tensorflows_features():
    needs_openvino()
    network = densenet.load_network(densenet.WeightChoice("random"), STAGE_SIZE, seed=0)
    images = np.random.default_rng(4).integers(0, 256, (3, 2, STAGE_SIZE, STAGE_SIZE), dtype=np.uint8)
    with_tf = densenet.FeatureExtractor(network, batch_size=2, runtime="tensorflow")
    with_ov = densenet.FeatureExtractor(network, batch_size=2, runtime="openvino")
    assert (with_tf.runtime, with_ov.runtime) == ("tensorflow", "openvino")
    assert with_ov.describe_runtime().startswith("openvino ") and "float32" in with_ov.describe_runtime()
    for a, b in zip(with_tf.extract(images), with_ov.extract(images)):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float16
        a, b = a.astype(np.float32), b.astype(np.float32)
        # Within 1e-3 relative (float16 storage alone rounds at ~5e-4), and not merely close in bulk.
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
        assert np.abs(a - b).mean() <= 1e-4 * np.abs(a).mean() + 1e-8


def test_mixed_precision_features_are_close_to_float32s():
    """features.precision: mixed_bfloat16 (a CPU runs it; mixed_float16 is for GPUs). Not the same
    numbers (bfloat16 keeps 8 bits of mantissa), but the same features to within a few percent,
    named in the description; the global dtype policy is left as it was."""
    images = np.random.default_rng(5).integers(0, 256, (2, 2, STAGE_SIZE, STAGE_SIZE), dtype=np.uint8)
    exact = densenet.FeatureExtractor(densenet.load_network(densenet.WeightChoice("random"), STAGE_SIZE, seed=0),
                                      batch_size=2, runtime="tensorflow")
    mixed = densenet.FeatureExtractor(densenet.load_network(densenet.WeightChoice("random"), STAGE_SIZE, seed=0,
                                                            precision="mixed_bfloat16"), batch_size=2, runtime="auto")
    assert keras.config.dtype_policy().name == "float32"
    assert mixed.runtime == "tensorflow" and mixed.describe_runtime().endswith("(mixed_bfloat16)")
    for a, b in zip(exact.extract(images), mixed.extract(images)):
        a, b = a.astype(np.float32), b.astype(np.float32)
        assert not np.array_equal(a, b)
        assert np.abs(a - b).mean() <= 0.05 * np.abs(a).mean()
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    with pytest.raises(BadInput, match="features.precision"):
        densenet.load_network(densenet.WeightChoice("random"), STAGE_SIZE, precision="float16")
    with pytest.raises(BadInput, match="TensorFlow runtime only"):
        densenet.choose_runtime("openvino", "mixed_float16")


def test_runtime_choice():
    assert densenet.choose_runtime("tensorflow") == "tensorflow"
    expected = "openvino" if densenet.openvino_available() else "tensorflow"
    assert densenet.choose_runtime("auto") == expected    # this machine has no GPU
    with pytest.raises(BadInput, match="features.runtime must be one of"):
        densenet.choose_runtime("onnx")
