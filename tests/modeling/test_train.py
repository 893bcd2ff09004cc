"""The train stage on small learnable data: the loss falls, images beat blank images, early stopping
and the kept weights follow the val split, curves reach dvclive, runs repeat exactly, MirroredStrategy
runs on two logical CPU devices."""

from __future__ import annotations

import csv
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
import tensorflow as tf  # noqa: E402
from synthetic_captions import SIZES, write_dataset  # noqa: E402

from cxrgen.data.vocab import END_ID, PAD_ID, START_ID, build_vocab  # noqa: E402
from cxrgen.errors import BadInput  # noqa: E402
from cxrgen.features.store import KEYS, FeatureStore, write_store  # noqa: E402
from cxrgen.modeling.train import (  # noqa: E402
    abnormal_micro_f1,
    calibrate_thresholds,
    finding_head_epochs,
    fit,
    gain_interval,
    head_probabilities,
    learning_rate,
    load_training_data,
    make_dataset,
    roc_auc,
    study_folds,
    token_loss,
    token_matrix,
    train,
    train_settings,
)
from cxrgen.tables import read_parquet, write_parquet  # noqa: E402
from cxrgen.observations import OBSERVATIONS  # noqa: E402
from cxrgen.modeling.models import load_model  # noqa: E402

COUNTS = {"train": 128, "val": 32, "test": 8}
# After the first epoch (tracing) an epoch takes a fraction of a second: enough of them to learn.
# The default cosine schedule takes the rate from 0.06 down to 0 over the 15 epochs (0.03 on average).
TRAIN = {"seed": 0, "epochs": 15, "batch_size": 16, "learning_rate": 0.06, "patience": 3,
         "finding_learning_rate": 0.03, "finding_min_steps": 0}   # few steps here: larger rates than the defaults


def params(**train_overrides) -> dict:
    return {"train": {**TRAIN, **train_overrides}, "model": SIZES}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Train and val features only: training must never need the test split."""
    return write_dataset(tmp_path_factory.mktemp("data"), COUNTS)


def read_curve(path: Path) -> list[float]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(row["step"]) for row in rows] == list(range(1, len(rows) + 1))
    return [float(row[path.stem]) for row in rows]


def check_run(metrics: dict, model_name: str, out: Path, dataset) -> None:
    features, prepared = dataset
    live = out / "dvclive"
    assert metrics["model"] == model_name
    assert metrics["device"]["device"] in ("CPU", "GPU") and metrics["device"]["tensorflow_build"] in ("cpu", "cuda")
    val_curve = read_curve(live / "plots/metrics/val_loss.tsv")
    assert len(read_curve(live / "plots/metrics/loss.tsv")) == len(val_curve) == metrics["epochs_run"]
    blank_curve = read_curve(live / "plots/metrics/blank_images/val_loss.tsv")
    # Learning happened, and the kept epoch is the best val epoch.
    assert metrics["best_epoch"] == int(np.argmin(val_curve)) + 1
    assert metrics["val_loss"] < 0.5 * val_curve[0]
    assert metrics["val_loss"] == pytest.approx(min(val_curve), rel=0.02)
    # The images are used: the blank-image twin does clearly worse.
    assert metrics["val_loss_blank_images"] == pytest.approx(min(blank_curve), rel=0.02)
    gain = metrics["val_loss_blank_images"] - metrics["val_loss"]
    assert metrics["val_loss_gain"] == pytest.approx(gain, abs=1e-5)
    assert metrics["val_loss_gain"] > 0.05  # about 0.13 nats per token here
    low, high = metrics["val_loss_gain_interval"]
    assert 0 < low < metrics["val_loss_gain"] < high and metrics["uses_images"] is True
    # Provenance copied from features.json.
    provenance = (metrics["data_source"], metrics["weights"], metrics["features_seed"])
    assert provenance == ("synthetic-test", "random", 7)
    # The saved file is the kept model, and loads in safe mode.
    model = keras.models.load_model(out / "model.keras", safe_mode=True)
    assert model.count_params() == metrics["params"]
    data = load_training_data(features, prepared, model.feature_key)
    saved_val_loss = token_loss(model, data.features["val"], data.tokens["val"], 16)
    assert saved_val_loss == pytest.approx(metrics["val_loss"], abs=1e-6)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert not list(out.glob(".*partial*"))


def test_attention_model_learns_and_reads_the_images(dataset, tmp_path):
    features, prepared = dataset
    metrics = train("attention", params(), features, prepared, tmp_path / "model.keras", tmp_path / "metrics.json",
                    tmp_path / "dvclive")
    check_run(metrics, "attention", tmp_path, dataset)


@pytest.mark.parametrize("name,head", [("baseline", {"direct_features": False}),
                                       ("attention", {"region_input": "findings"})])
def test_through_the_finding_head_alone_the_images_still_reach_the_words(name, head, dataset, tmp_path):
    """The defaults of params.yaml: the image reaches the decoder only through the finding head.
    Here the labeler reads Cardiomegaly off "heart is enlarged" (the frontal regions 20-24 show it)."""
    sizes = {**SIZES[name], "finding_weight": 1.0, "finding_l2": 0.002, "finding_folds": 4, **head}
    setting = {**params(), "model": {name: sizes}}
    features, prepared = dataset
    metrics = train(name, setting, features, prepared, tmp_path / "model.keras", tmp_path / "metrics.json",
                    tmp_path / "dvclive")
    check_run(metrics, name, tmp_path, dataset)
    assert metrics["val_finding_auc"]["Cardiomegaly"] > 0.95, metrics["val_finding_auc"]
    assert metrics["val_finding_auc_macro"] is not None
    # the thresholds chosen on the val studies travel with the saved model, and do not read worse
    assert set(metrics["finding_thresholds"]) == set(OBSERVATIONS)
    head_f1 = metrics["val_head_abnormal_f1"]
    assert head_f1["calibrated"] >= head_f1["at_0.5"] and head_f1["calibrated"] > 0.5, head_f1
    saved = load_model(tmp_path / "model.keras").decision_thresholds()
    np.testing.assert_allclose(saved, [metrics["finding_thresholds"][o] for o in OBSERVATIONS], atol=0.005)


def run_stage_script(project_root: Path, *args: str) -> None:
    """stages/train.py as `python stages/train.py ARGS` runs it, in this process (no second TF start)."""
    argv = sys.argv
    sys.argv = ["stages/train.py", *args]
    try:
        runpy.run_path(str(project_root / "stages/train.py"), run_name="__main__")
    finally:
        sys.argv = argv


def test_stage_script_trains_the_baseline(dataset, tmp_path, project_root, capsys):
    features, prepared = dataset
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    run_stage_script(project_root, "--model", "baseline", "--params", str(tmp_path / "params.yaml"),
                     "--features", str(features), "--prepared", str(prepared),
                     "--out", str(tmp_path / "model.keras"), "--metrics", str(tmp_path / "metrics.json"),
                     "--live", str(tmp_path / "dvclive"))
    assert "train: baseline: val loss" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    check_run(metrics, "baseline", tmp_path, dataset)


def test_stage_script_reports_missing_inputs_in_one_line(tmp_path, project_root, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    with pytest.raises(SystemExit) as exit_info:
        run_stage_script(project_root, "--model", "attention", "--params", str(tmp_path / "params.yaml"),
                         "--features", str(tmp_path / "features"), "--prepared", str(tmp_path / "prepared"),
                         "--out", str(tmp_path / "model.keras"))
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("train: error: ") and "run the prepare stage" in stderr[0]
    assert not (tmp_path / "model.keras").exists()


def test_early_stopping_and_the_kept_weights_follow_the_val_split(dataset, tmp_path):
    """Val reports that state the opposite of what the images show: the val loss falls while the model
    learns the wording, then rises as it learns to read the images. Training must stop `patience`
    epochs after the val minimum and keep that epoch's weights, whatever the train loss does."""
    features, prepared = dataset
    studies = read_parquet(prepared / "studies.parquet")
    swap = {"normal": "enlarged", "enlarged": "normal", "clear": "hazy", "hazy": "clear"}
    is_val = studies["split"] == "val"
    studies.loc[is_val, "text"] = [" ".join(swap.get(word, word) for word in text.split())
                                   for text in studies.loc[is_val, "text"]]
    contrary = tmp_path / "prepared"
    write_parquet(studies, contrary / "studies.parquet")
    shutil.copy(prepared / "vocab.json", contrary / "vocab.json")
    metrics = train("baseline", params(patience=2, epochs=30, image_control=False), features, contrary,
                    tmp_path / "model.keras", tmp_path / "metrics.json", tmp_path / "dvclive")
    val_curve = read_curve(tmp_path / "dvclive/plots/metrics/val_loss.tsv")
    train_curve = read_curve(tmp_path / "dvclive/plots/metrics/loss.tsv")
    assert metrics["epochs_run"] == metrics["best_epoch"] + 2 < 30
    assert min(val_curve) < val_curve[-1] and train_curve[-1] < train_curve[metrics["best_epoch"] - 1]
    assert metrics["val_loss"] == pytest.approx(min(val_curve), rel=0.02)
    assert metrics["train_loss"] > min(train_curve)  # not the last (better on train) weights
    assert "val_loss_blank_images" not in metrics
    assert not (tmp_path / "dvclive/plots/metrics/blank_images").exists()


def test_training_repeats_exactly(dataset, tmp_path):
    features, prepared = dataset
    runs = []
    for run in ("a", "b"):
        out = tmp_path / run
        metrics = train("baseline", params(epochs=1, image_control=False), features, prepared,
                        out / "model.keras", out / "metrics.json", out / "dvclive")
        runs.append((metrics, (out / "model.keras").read_bytes(),
                     (out / "dvclive/plots/metrics/val_loss.tsv").read_text()))
    assert runs[0] == runs[1]


def test_sharded_features_train_the_same_model_as_one_shard(dataset, tmp_path):
    """The store split into shards of 48 studies (train: 3 shards) streams the same rows in the same
    order as one shard, and the shuffle covers the whole split: the same weights, the same metrics."""
    features, prepared = dataset
    sharded, _ = write_dataset(tmp_path / "sharded", COUNTS, shard_studies=48)
    assert FeatureStore(sharded).info["splits"]["train"] == {"studies": 128, "shards": 3}
    runs = []
    for name, folder in (("one", features), ("sharded", sharded)):
        out = tmp_path / name
        runs.append(train("attention", params(epochs=2, image_control=False), folder, prepared,
                          out / "model.keras", out / "metrics.json", out / "dvclive"))
    assert runs[0]["weights_sha256"] == runs[1]["weights_sha256"]
    assert runs[0] == runs[1]


def test_streamed_batches_with_a_small_shuffle_buffer_see_every_study_once(dataset):
    features, prepared = dataset
    data = load_training_data(features, prepared, "pooled")
    array, tokens = data.features["train"], data.tokens["train"]
    marker = np.arange(len(tokens), dtype=np.float32)[:, None].repeat(len(OBSERVATIONS), axis=1)
    epochs = []
    dataset_ = make_dataset(array, tokens, 16, shuffle=True, seed=3, findings=marker, shuffle_buffer=10,
                            length_grouping=2)
    for _ in range(2):
        seen = []
        for x, *_ in dataset_:
            rows = x["findings"].numpy()[:, 0].astype(int)
            seen.extend(rows)
            # the features stay with their study
            np.testing.assert_array_equal(x["features"].numpy(), array.read_all()[rows].astype(np.float32))
        epochs.append(seen)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(len(tokens)))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(len(tokens)))   # shuffled, anew each epoch
    # A buffer of 10: no study comes out more than 10 + a window of 32 rows ahead of its place in the files.
    assert max(epochs[0][: len(tokens) // 2]) < len(tokens) // 2 + 10 + 32


def test_max_steps_trains_a_fixed_number_of_batches(dataset, tmp_path):
    features, prepared = dataset
    metrics = train("baseline", params(max_steps=3, image_control=False), features, prepared,
                    tmp_path / "model.keras", tmp_path / "metrics.json", tmp_path / "dvclive")
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    # Two logical CPU devices, set before TensorFlow initialises its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    from synthetic_captions import SIZES
    from cxrgen.modeling.train import train
    features, prepared, out, model = sys.argv[2:6]
    # With a cross-fitted region finding head, fitted first (its own loop, also across the replicas).
    sizes = {**SIZES, "attention": {**SIZES["attention"], "finding_weight": 1.0, "finding_head": "regions",
                                    "finding_hidden": 8, "finding_folds": 2}}
    params = {"train": {"seed": 0, "epochs": 3, "batch_size": 16, "learning_rate": 0.03, "patience": 3,
                        "strategy": "mirrored", "image_control": False, "finding_epochs": 3,
                        "finding_learning_rate": 0.03, "finding_min_steps": 0}, "model": sizes}
    metrics = train(model, params, features, prepared, out + "/model.keras", out + "/metrics.json",
                    out + "/dvclive")
    print(json.dumps({"devices": len(tf.config.list_logical_devices("CPU")), **metrics}))
""")


def test_mirrored_strategy_on_two_logical_cpu_devices(dataset, tmp_path, project_root):
    features, prepared = dataset
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(project_root / "tests"), str(features), str(prepared), str(tmp_path),
         "attention"],  # the scan over time steps inside each replica is the part worth checking
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["devices"] == 2 and metrics["replicas"] == 2
    assert metrics["finding_head_epochs"] == 3 and metrics["val_finding_auc"]["Cardiomegaly"] > 0.9
    val_curve = read_curve(tmp_path / "dvclive/plots/metrics/val_loss.tsv")
    assert metrics["val_loss"] < 0.8 * val_curve[0]
    model = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert model.count_params() == metrics["params"]


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_mixed_precision_trains_and_saves_a_float32_model(name, dataset, tmp_path):
    """train.precision: mixed_bfloat16 here (a CPU runs it; mixed_float16 is the GPUs' and adds
    Keras's loss scaling). The model learns, the metrics name the precision, and the saved model
    computes in float32 with the trained weights: its val loss is the one recorded, to bfloat16's
    rounding."""
    features, prepared = dataset
    setting = params(precision="mixed_bfloat16", image_control=False, finding_epochs=5)
    setting["model"] = {name: {**SIZES[name], **REGION_HEAD}}   # its heads fitted first, in bfloat16 too
    metrics = train(name, setting, features, prepared,
                    tmp_path / "model.keras", tmp_path / "metrics.json", tmp_path / "dvclive")
    assert metrics["precision"] == "mixed_bfloat16" and metrics["finding_head_epochs"] == 5
    assert metrics["val_finding_auc"]["Cardiomegaly"] > 0.9
    val_curve = read_curve(tmp_path / "dvclive/plots/metrics/val_loss.tsv")
    assert metrics["val_loss"] < 0.6 * val_curve[0]
    model = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert model.dtype_policy.name == "float32" and model.compute_dtype == "float32"
    assert all(layer.compute_dtype == "float32" for layer in model._flatten_layers())
    data = load_training_data(features, prepared, model.feature_key)
    saved_val_loss = token_loss(model, data.features["val"], data.tokens["val"], 16)
    assert saved_val_loss == pytest.approx(metrics["val_loss"], rel=0.03)


REGION_HEAD = {"finding_weight": 1.0, "finding_head": "regions", "finding_hidden": 8, "finding_folds": 2}


class HeadWatch(keras.callbacks.Callback):
    """The finding heads' weights when the decoder's training begins and ends."""

    def on_train_begin(self, logs=None):
        self.begin = [np.array(v) for v in self.model.finding_head_variables()]
        self.trainable = {id(v) for v in self.model.trainable_variables}

    def on_train_end(self, logs=None):
        self.end = [np.array(v) for v in self.model.finding_head_variables()]


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_the_finding_heads_are_fitted_first_then_frozen_while_the_decoder_trains(name, dataset):
    features, prepared = dataset
    settings = train_settings(params(finding_epochs=6))
    data = load_training_data(features, prepared, "spatial")
    watch = HeadWatch()
    result = fit(name, {**SIZES[name], **REGION_HEAD}, settings, data, tf.distribute.get_strategy(), callbacks=[watch])
    assert len(result.head_losses) == 6 and result.head_losses[-1] < 0.8 * result.head_losses[0]
    assert not any(id(v) in watch.trainable for v in result.model.finding_head_variables())
    for before, after in zip(watch.begin, watch.end):
        np.testing.assert_array_equal(before, after)
    # ... fitted before: they read the heart already when the decoder starts.
    probabilities = head_probabilities(result.model, data.features["val"], 16)
    cardiomegaly = OBSERVATIONS.index("Cardiomegaly")
    assert roc_auc(data.findings["val"][:, cardiomegaly], probabilities[:, cardiomegaly]) > 0.9
    # The blank-image twin's heads (one constant input) learn alongside its decoder, not first.
    assert fit(name, {**SIZES[name], **REGION_HEAD}, {**settings, "epochs": 1}, data,
               tf.distribute.get_strategy(), blank=True).head_losses == []


def test_token_matrix_pads_to_the_longest_report():
    vocab = build_vocab([["a", "b", "c"]], min_count=1, max_len=4)
    matrix = token_matrix(["a b", "c", "a b c"], vocab)
    a, b, c = (vocab.ids[word] for word in "abc")
    assert matrix.dtype == np.int32
    assert matrix.tolist() == [[START_ID, a, b, END_ID], [START_ID, c, END_ID, PAD_ID], [START_ID, a, b, END_ID]]


def test_batches_pair_each_word_with_the_next_and_are_cut_to_their_longest_report():
    tokens = np.array([[1, 5, 2, 0, 0, 0], [1, 5, 6, 7, 2, 0], [1, 2, 0, 0, 0, 0]], dtype=np.int32)
    features = np.arange(3 * 2 * 4, dtype=np.float16).reshape(3, 2, 4)
    batches = [(x["features"].numpy(), x["tokens"].numpy().tolist(), y.numpy().tolist())
               for x, y in make_dataset(features, tokens, batch_size=2)]
    assert batches[0][1:] == ([[1, 5, 2, 0], [1, 5, 6, 7]], [[5, 2, 0, 0], [5, 6, 7, 2]])
    assert batches[1][1:] == ([[1]], [[2]])
    assert batches[0][0].dtype == np.float32 and (batches[1][0] == features[2]).all()
    blank = [x["features"].numpy() for x, _ in make_dataset(features[:1], tokens, batch_size=2, blank=True)]
    assert [len(b) for b in blank] == [2, 1] and all((b == features[0]).all() for b in blank)


def test_cross_fitting_folds_are_equal_shares_fixed_by_the_seed():
    folds = study_folds(10, 4, seed=0)
    assert folds.dtype == np.int32 and sorted(np.bincount(folds).tolist()) == [2, 2, 3, 3]
    assert (study_folds(10, 4, seed=0) == folds).all()
    assert not (study_folds(10, 4, seed=1) == folds).all()
    assert (study_folds(5, 1, seed=0) == 0).all()
    # The folds travel with the finding targets, study by study, through the shuffle.
    tokens = np.array([[1, 2, 0], [1, 3, 2], [1, 4, 2], [1, 2, 0]], dtype=np.int32)
    features = np.zeros((4, 2, 3), np.float16)
    findings = np.arange(4, dtype=np.float32)[:, None]
    folds = np.array([3, 2, 1, 0], np.int32)
    rows = [(x["findings"].numpy()[:, 0].tolist(), x["folds"].numpy().tolist())
            for x, _ in make_dataset(features, tokens, 2, shuffle=True, findings=findings, folds=folds)]
    pairs = [(f, k) for found, kept in rows for f, k in zip(found, kept)]
    assert sorted(pairs) == [(0.0, 3), (1.0, 2), (2.0, 1), (3.0, 0)]
    with pytest.raises(ValueError, match="folds"):
        make_dataset(features, tokens, 2, folds=folds)


def test_length_grouped_batches_see_every_study_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, 200)
    tokens = np.zeros((200, 41), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = np.arange(1, n + 1) % 50 + 1       # <pad> (0) only after the words
    features = np.arange(200, dtype=np.float16)[:, None, None] * np.ones((1, 2, 3), np.float16)
    findings = np.arange(200, dtype=np.float32)[:, None]

    def epochs(grouping, seed=0, n=2):
        dataset = make_dataset(features, tokens, 8, shuffle=True, seed=seed, findings=findings,
                               length_grouping=grouping)
        return [[(x["findings"].numpy()[:, 0].astype(int).tolist(), x["tokens"].shape[1]) for x, *_ in dataset]
                for _ in range(n)]

    grouped, plain = epochs(4), epochs(0)
    for epoch in grouped:   # every study exactly once per epoch, features and labels together
        studies = [i for ids, _ in epoch for i in ids]
        assert sorted(studies) == list(range(200))
    first, second = ([i for ids, _ in epoch for i in ids] for epoch in grouped)
    assert first != second                                   # a new order every epoch
    assert grouped == epochs(4)                              # the same order for the same seed
    assert grouped != epochs(4, seed=1)

    def steps(epoch):
        return sum(width for _, width in epoch)

    # Fewer decoder steps in all: each batch runs to its own longest report.
    assert steps(grouped[0]) < 0.8 * steps(plain[0])
    for ids, width in grouped[0]:
        assert width == lengths[ids].max() - 1              # trimmed to the batch's longest report
    # The features stay with their study through the sorting.
    batches = list(make_dataset(features, tokens, 8, shuffle=True, findings=findings, length_grouping=4))
    for x, _, _ in batches:
        np.testing.assert_array_equal(x["features"].numpy()[:, 0, 0], x["findings"].numpy()[:, 0])
    # Each batch's loss weighs its real tokens against the split's mean, so that over the epoch
    # every token counts the same: the weights are equal within a batch, and tokens x 1 / mean.
    mean = (lengths - 1).mean()
    for _, targets, weights in batches:
        weights = weights.numpy()
        assert np.all(weights == weights[0])
        assert weights[0] == pytest.approx((targets.numpy() != PAD_ID).sum() / (len(weights) * mean), rel=1e-5)
    total = sum(w.numpy()[0] * len(w) for _, _, w in batches)
    assert total == pytest.approx(len(lengths), rel=1e-5)   # sums to one weight per study


def test_settings_are_checked():
    assert train_settings({})["strategy"] == "none"
    with pytest.raises(BadInput, match="unknown keys"):
        train_settings({"train": {"epoch": 3}})
    with pytest.raises(BadInput, match="strategy"):
        train_settings({"train": {"strategy": "tpu"}})
    with pytest.raises(BadInput, match="epochs"):
        train_settings({"train": {"epochs": 0}})
    with pytest.raises(BadInput, match="length_grouping"):
        train_settings({"train": {"length_grouping": -1}})
    with pytest.raises(BadInput, match="shuffle_buffer"):
        train_settings({"train": {"shuffle_buffer": 0}})
    with pytest.raises(BadInput, match="max_steps"):
        train_settings({"train": {"max_steps": -1}})
    with pytest.raises(BadInput, match="precision"):
        train_settings({"train": {"precision": "float16"}})
    with pytest.raises(BadInput, match="lr_schedule"):
        train_settings({"train": {"lr_schedule": "linear"}})
    with pytest.raises(BadInput, match="finding_epochs"):
        train_settings({"train": {"finding_epochs": -1}})
    with pytest.raises(BadInput, match="finding_learning_rate"):
        train_settings({"train": {"finding_learning_rate": 0}})
    with pytest.raises(BadInput, match="finding_min_steps"):
        train_settings({"train": {"finding_min_steps": 1.5}})


def test_the_heads_fit_for_their_epochs_or_at_least_their_minimum_of_steps():
    settings = train_settings({"train": {"finding_epochs": 30, "finding_min_steps": 2000, "batch_size": 32}})
    assert finding_head_epochs(settings, 2376) == 30      # IU-size: 75 batches an epoch, 2,250 steps
    assert finding_head_epochs(settings, 290) == 200      # the demo: 10 batches an epoch
    assert finding_head_epochs({**settings, "finding_min_steps": 0}, 290) == 30


def test_cosine_learning_rate_falls_to_zero_at_the_last_epoch_or_max_step():
    settings = train_settings({"train": {"lr_schedule": "cosine", "learning_rate": 0.002, "epochs": 12,
                                         "batch_size": 32}})
    schedule = learning_rate(settings, 2376)   # 75 batches an epoch (the last one short)
    value = lambda step: float(schedule(step))  # noqa: E731
    assert value(0) == pytest.approx(0.002)
    assert value(450) == pytest.approx(0.001, rel=1e-5)      # half-way: half the rate
    assert value(899) > 0 and value(900) == pytest.approx(0.0, abs=1e-9) and value(2000) == pytest.approx(0.0, abs=1e-9)
    assert all(value(step) > value(step + 75) for step in range(0, 900 - 75, 75))   # falls every epoch
    fixed = learning_rate({**settings, "max_steps": 10}, 2376)
    assert float(fixed(5)) == pytest.approx(0.001, rel=1e-5) and float(fixed(10)) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate({**settings, "lr_schedule": "constant"}, 2376) == 0.002


def test_misaligned_or_missing_features_are_refused(dataset, tmp_path):
    features, prepared = dataset
    with pytest.raises(BadInput, match="run the features stage"):
        load_training_data(tmp_path, prepared, "pooled")
    # A val split one study short (its features.json agrees with its shards, not with studies.parquet)
    short = tmp_path / "short"
    store = FeatureStore(features)
    write_store(short, {split: {key: store.open(split, key).read_all()[: -1 if split == "val" else None]
                                for key in KEYS} for split in ("train", "val")},
                {key: store.blank(key) for key in KEYS})
    with pytest.raises(BadInput, match="rows but studies.parquet has"):
        load_training_data(short, prepared, "pooled")
    with pytest.raises(BadInput, match="no 'regions' features"):
        load_training_data(features, prepared, "regions")
    # A shard gone, or cut short: the message names the file.
    (short / "val" / "pooled-00000.npy").unlink()
    with pytest.raises(BadInput, match="feature shard not found") as missing:
        load_training_data(short, prepared, "pooled")
    assert "val/pooled-00000.npy" in str(missing.value)
    train_file = short / "train" / "spatial-00000.npy"
    train_file.write_bytes(train_file.read_bytes()[:-10])
    with pytest.raises(BadInput, match="truncated") as truncated:
        load_training_data(short, prepared, "spatial")
    assert "train/spatial-00000.npy" in str(truncated.value)
    # An .npz-era features folder: one line saying to rerun the stage.
    old = tmp_path / "old"
    old.mkdir()
    (old / "features.json").write_text(json.dumps({"weights": "random"}))
    with pytest.raises(BadInput, match="older features stage"):
        load_training_data(old, prepared, "pooled")


def test_the_gain_interval_is_a_paired_bootstrap_over_studies():
    counts = np.full(40, 10.0)
    image = np.full(40, 5.0)
    # Every study 1 nat better with the image: the interval is that one value.
    assert gain_interval(image + 1.0, image, counts) == pytest.approx((0.1, 0.1))
    # Half the studies better, half worse by as much: the interval straddles zero.
    mixed = image + np.where(np.arange(40) % 2 == 0, 2.0, -2.0)
    low, high = gain_interval(mixed, image, counts)
    assert low < 0 < high
    # Same seed, same resamples.
    assert gain_interval(mixed, image, counts, seed=3) == gain_interval(mixed, image, counts, seed=3)


def test_roc_auc_counts_ordered_pairs_and_ties_as_half():
    from cxrgen.modeling.train import roc_auc
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.9])
    # Positive-negative pairs: 9; the positive ranks above the negative in 6.5 (0.8 vs 0.8 is half).
    assert roc_auc(labels, scores) == pytest.approx(6.5 / 9)
    assert roc_auc(labels, -scores) == pytest.approx(2.5 / 9)
    assert roc_auc(np.zeros(4), np.arange(4)) is None


def test_thresholds_are_calibrated_on_the_abnormal_findings_f1():
    rng = np.random.default_rng(0)
    n = 400
    targets = np.zeros((n, len(OBSERVATIONS)), bool)
    weak, strong = OBSERVATIONS.index("Lung Lesion"), OBSERVATIONS.index("Cardiomegaly")
    targets[:, weak] = rng.random(n) < 0.2
    targets[:, strong] = rng.random(n) < 0.3
    targets[:, OBSERVATIONS.index("No Finding")] = ~targets.any(axis=1)
    probabilities = np.full(targets.shape, 0.02)
    # a head that ranks lesions well but never dares 0.5; cardiomegaly it reads at 0.5 already
    probabilities[:, weak] = np.where(targets[:, weak], 0.3, 0.1) + rng.normal(0, 0.02, n)
    probabilities[:, strong] = np.where(targets[:, strong], 0.8, 0.2)
    probabilities[:, OBSERVATIONS.index("No Finding")] = 0.9   # not an abnormal finding: stays at 0.5
    thresholds = calibrate_thresholds(probabilities, targets)
    assert 0.1 < thresholds[weak] < 0.3
    assert thresholds[OBSERVATIONS.index("No Finding")] == 0.5
    assert thresholds[OBSERVATIONS.index("Edema")] == 0.5          # no positives: nothing to choose by
    assert abnormal_micro_f1(probabilities > 0.5, targets) < 0.8
    assert abnormal_micro_f1(probabilities > thresholds, targets) == 1.0
    np.testing.assert_array_equal(thresholds, calibrate_thresholds(probabilities, targets))


def test_abnormal_micro_f1_leaves_no_finding_out():
    targets = np.zeros((2, len(OBSERVATIONS)), bool)
    targets[:, 0] = True                                   # No Finding, both studies
    targets[0, OBSERVATIONS.index("Edema")] = True
    predicted = targets.copy()
    predicted[:, 0] = False                                 # wrong only on No Finding
    assert abnormal_micro_f1(predicted, targets) == 1.0
    predicted[1, OBSERVATIONS.index("Fracture")] = True     # one false positive
    assert abnormal_micro_f1(predicted, targets) == pytest.approx(2 / 3)
    assert abnormal_micro_f1(np.zeros_like(targets), np.zeros_like(targets)) == 0.0
