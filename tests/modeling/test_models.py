"""The report generators: teacher forcing equals step-by-step decoding, attention is per study,
saved files load in safe mode, the loss ignores padding."""

from __future__ import annotations

import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxrgen.data.labeler import OBSERVATIONS  # noqa: E402
from cxrgen.data.vocab import PAD_ID  # noqa: E402
from cxrgen.errors import BadInput  # noqa: E402
from cxrgen.modeling.models import (  # noqa: E402
    AttentionGenerator,
    BaselineGenerator,
    REGION_HEAD_L2,
    MaskedTokenLoss,
    build_model,
    cell_input_bias,
    cell_update,
    check_plain_cell,
    feature_key_for,
    load_model,
    save_model,
)

VOCAB = 17
FEATURE_DIM = 12
SHAPES = {"baseline": (2, FEATURE_DIM), "attention": (2, 49, FEATURE_DIM)}
SIZES = {
    "baseline": {"embedding_dim": 6, "units": 10, "dropout": 0.2},
    "attention": {"embedding_dim": 6, "units": 10, "projection_dim": 8, "attention_dim": 7, "dropout": 0.2},
}


def tiny(name: str, seed: int = 0, **extra):
    keras.utils.set_random_seed(seed)
    return build_model(name, VOCAB, SHAPES[name], {**SIZES[name], **extra})


def batch(name: str, studies: int = 3, steps: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.random((studies, *SHAPES[name])).astype(np.float16)
    tokens = rng.integers(1, VOCAB, (studies, steps)).astype(np.int32)
    return {"features": features, "tokens": tokens}


def step_by_step(model, inputs):
    """Logits and attention from the decoder step alone, fed the same tokens one at a time."""
    context = model.encode(inputs["features"])
    states = model.initial_state(context)
    logits, attention = [], []
    for t in range(inputs["tokens"].shape[1]):
        step_logits, states, weights = model.step(inputs["tokens"][:, t], states, context)
        logits.append(step_logits.numpy())
        attention.append(None if weights is None else weights.numpy())
    return np.stack(logits, 1), (None if attention[0] is None else np.stack(attention, 1))


@pytest.mark.parametrize("name,extra", [
    ("baseline", {}), ("attention", {}), ("attention", {"rnn": "lstm"}),
    ("baseline", {"finding_weight": 1.0}), ("baseline", {"finding_weight": 1.0, "direct_features": False}),
    ("attention", {"finding_weight": 1.0}), ("attention", {"finding_weight": 1.0, "rnn": "lstm"}),
    ("attention", {"finding_weight": 1.0, "region_input": "findings"}),
])
def test_teacher_forcing_matches_the_decoder_step(name, extra):
    model = tiny(name, **extra)
    inputs = batch(name)
    logits = model(inputs).numpy()
    assert logits.shape == (3, 6, VOCAB)
    step_logits, step_attention = step_by_step(model, inputs)
    np.testing.assert_allclose(step_logits, logits, atol=1e-5)
    if name == "attention":
        forced = model.teacher_forced_attention(inputs).numpy()
        np.testing.assert_allclose(step_attention, forced, atol=1e-6)


@pytest.mark.parametrize("cell_class", [keras.layers.GRUCell, keras.layers.LSTMCell])
def test_cell_update_is_the_keras_cells_step(cell_class):
    """The teacher-forced pass runs the cells' arithmetic itself (input projections hoisted out of
    the loop): one step of it equals the Keras cell's own call, whose weights it reads."""
    keras.utils.set_random_seed(3)
    cell = cell_class(9)
    cell.build((None, 5))
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(4, 5)).astype(np.float32)
    states = [rng.normal(size=(4, 9)).astype(np.float32) for _ in range(2 if cell_class is keras.layers.LSTMCell else 1)]
    expected_output, expected_states = cell(inputs, states)
    projected = inputs @ cell.kernel.numpy() + np.asarray(cell_input_bias(cell))
    output, new_states = cell_update(cell, projected, states, "float32")
    np.testing.assert_allclose(np.asarray(output), np.asarray(expected_output), atol=1e-6)
    for got, want in zip(new_states, expected_states if isinstance(expected_states, (list, tuple)) else [expected_states]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_cell_update_refuses_cells_it_does_not_repeat():
    check_plain_cell(keras.layers.GRUCell(4))
    with pytest.raises(ValueError, match="default GRU/LSTM"):
        check_plain_cell(keras.layers.GRUCell(4, reset_after=False))
    with pytest.raises(ValueError, match="default GRU/LSTM"):
        check_plain_cell(keras.layers.LSTMCell(4, dropout=0.1))


def test_attention_weights_cover_the_98_regions_of_both_views_per_word():
    model = tiny("attention")
    inputs = batch("attention", studies=2, steps=5)
    weights = model.teacher_forced_attention(inputs).numpy()
    assert weights.shape == (2, 5, 98)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert (weights >= 0).all()


def test_attention_is_over_one_studys_regions_not_across_the_batch():
    """The case study's flaw: attention over one pooled vector per study attends across the batch."""
    model = tiny("attention")
    a, b = batch("attention", studies=2, seed=1), batch("attention", studies=2, seed=2)
    mixed = {"features": np.stack([a["features"][0], b["features"][1]]),
             "tokens": np.stack([a["tokens"][0], b["tokens"][1]])}
    np.testing.assert_allclose(model.teacher_forced_attention(mixed).numpy()[0],
                               model.teacher_forced_attention(a).numpy()[0], atol=1e-6)
    np.testing.assert_allclose(model(mixed).numpy()[0], model(a).numpy()[0], atol=1e-5)


def test_attention_follows_the_region_contents():
    model = tiny("attention")
    inputs = batch("attention", studies=1)
    before = model.teacher_forced_attention(inputs).numpy()
    brighter = {**inputs, "features": inputs["features"].copy()}
    brighter["features"][0, 1, 5] += 5.0  # one region of the lateral view
    after = model.teacher_forced_attention(brighter).numpy()
    change = np.abs(after - before).mean(axis=(0, 1))
    assert change[49 + 5] > 0  # the weights see the change (region 49 + 5 = lateral cell 5)
    assert not np.allclose(after, before)


def test_baseline_uses_both_views():
    model = tiny("baseline")
    inputs = batch("baseline", studies=1)
    for view in (0, 1):
        changed = {**inputs, "features": inputs["features"].copy()}
        changed["features"][0, view] += 1.0
        assert not np.allclose(model(changed).numpy(), model(inputs).numpy())


def test_dropout_only_in_training():
    model = tiny("attention")
    inputs = batch("attention")
    np.testing.assert_array_equal(model(inputs).numpy(), model(inputs).numpy())
    assert not np.allclose(model(inputs, training=True).numpy(), model(inputs).numpy())


@pytest.mark.parametrize("name,extra", [("baseline", {}), ("attention", {}),
                                        ("baseline", {"finding_weight": 0.5, "direct_features": False}),
                                        ("attention", {"finding_weight": 0.5, "region_input": "findings"})])
def test_saved_file_loads_in_safe_mode_with_the_same_outputs(name, extra, tmp_path):
    model = tiny(name, **extra)
    model.compile(optimizer="adam", loss=MaskedTokenLoss())
    inputs = batch(name)
    path = tmp_path / f"{name}.keras"
    save_model(model, path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())
    np.testing.assert_array_equal(step_by_step(loaded, inputs)[0], step_by_step(model, inputs)[0])
    assert not list(tmp_path.glob(".*partial*")), "temporary files left behind"
    # No optimizer state in the file, and the same bytes for the same weights (no save time).
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    again = tmp_path / "again.keras"
    save_model(load_model(path), again)
    assert again.read_bytes() == path.read_bytes()


def test_load_model_refuses_what_is_not_a_report_generator(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_model(tmp_path / "missing.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="not a loadable"):
        load_model(broken)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(BadInput, match="not a cxrgen report generator"):
        load_model(tmp_path / "other.keras")


def test_save_refuses_a_name_keras_cannot_load(tmp_path):
    with pytest.raises(BadInput, match=".keras"):
        save_model(tiny("baseline"), tmp_path / "model.h5")


def test_build_model_checks_its_settings():
    with pytest.raises(BadInput, match="unknown keys"):
        build_model("baseline", VOCAB, SHAPES["baseline"], {"unit": 3})
    with pytest.raises(BadInput, match="unknown model"):
        build_model("transformer", VOCAB, SHAPES["baseline"])
    with pytest.raises(BadInput, match="spatial"):
        build_model("attention", VOCAB, SHAPES["baseline"])  # pooled features given to attention
    with pytest.raises(BadInput, match="gru or lstm"):
        build_model("attention", VOCAB, SHAPES["attention"], {"rnn": "rnn"})
    assert isinstance(build_model("baseline", VOCAB, SHAPES["baseline"]), BaselineGenerator)
    model = build_model("attention", VOCAB, (2, 4, FEATURE_DIM), SIZES["attention"])
    assert isinstance(model, AttentionGenerator) and model.regions == 8


def test_loss_is_the_mean_over_real_tokens_and_ignores_padding():
    rng = np.random.default_rng(0)
    targets = np.array([[5, 6, 2, PAD_ID, PAD_ID], [7, 2, PAD_ID, PAD_ID, PAD_ID]], dtype=np.int32)
    logits = rng.normal(size=(2, 5, VOCAB)).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = targets != PAD_ID
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = -picked[real].sum() / real.sum()  # 5 real tokens, not 10 positions, not per-row means
    loss = MaskedTokenLoss()
    assert float(loss(targets, logits)) == pytest.approx(expected, rel=1e-5)
    changed = logits.copy()
    changed[~real] = rng.normal(size=(int((~real).sum()), VOCAB)) * 10
    assert float(loss(targets, changed)) == pytest.approx(expected, rel=1e-5)
    # Equal sample weights (length-grouped training batches) scale the batch's token mean.
    assert float(loss(targets, logits, sample_weight=np.full(2, 1.5, np.float32))) == pytest.approx(
        1.5 * expected, rel=1e-5)


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_feature_statistics_whiten_the_input_and_travel_with_the_file(name, tmp_path):
    rng = np.random.default_rng(3)
    # DenseNet-like: small values, strongly correlated channels (one common factor), one constant channel.
    common = rng.normal(size=(200, *SHAPES[name][:-1], 1))
    features = (0.02 + 0.003 * (2.0 * common + 0.3 * rng.normal(size=(200, *SHAPES[name])))).astype(np.float32)
    features[..., 0] = 0.5
    model = tiny(name)
    model.set_feature_statistics(features)
    whitened = keras.ops.convert_to_numpy(model.standardise(features)).reshape(-1, FEATURE_DIM)
    covariance = np.cov(whitened[:, 1:].T)
    np.testing.assert_allclose(whitened[:, 1:].mean(axis=0), 0.0, atol=1e-3)
    # Decorrelated; the common factor no longer dominates; variances near 1, less where the
    # regularisation (1 % of the mean eigenvalue) damps the small noise directions.
    off_diagonal = covariance[~np.eye(FEATURE_DIM - 1, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05
    assert np.all((np.diag(covariance) > 0.6) & (np.diag(covariance) < 1.05))
    assert np.linalg.eigvalsh(covariance).max() < 1.05
    np.testing.assert_allclose(whitened[:, 0], 0.0, atol=1e-6)   # the constant channel stays at 0
    raw_correlation = np.corrcoef(features.reshape(-1, FEATURE_DIM)[:, 1:].T)
    assert raw_correlation[np.triu_indices(FEATURE_DIM - 1, 1)].min() > 0.9   # the test input was correlated
    save_model(model, tmp_path / f"{name}.keras")
    loaded = load_model(tmp_path / f"{name}.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.feature_whitening),
                                  keras.ops.convert_to_numpy(model.feature_whitening))
    inputs = batch(name)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs)),
                               keras.ops.convert_to_numpy(model(inputs)), atol=1e-5)


@pytest.mark.parametrize("name,extra", [("baseline", {}), ("baseline", {"direct_features": False}),
                                        ("attention", {}), ("attention", {"region_input": "findings"})])
def test_the_decoder_reads_the_finding_head_but_the_report_loss_cannot_train_it(name, extra):
    model = tiny(name, finding_weight=1.0, **extra)
    assert model.findings == len(OBSERVATIONS)
    inputs = batch(name)
    head = model.finding_classifier
    with tf.GradientTape() as tape:
        report = tf.reduce_sum(tf.square(model(inputs, training=False)))
    gradients = tape.gradient(report, head.trainable_variables)
    assert all(g is None or not np.any(g.numpy()) for g in gradients)
    # ... yet its probabilities reach the words: moving them moves the logits.
    before = model(inputs).numpy()
    head.bias.assign(head.bias + 3.0)
    assert not np.allclose(model(inputs).numpy(), before, atol=1e-4)


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_the_finding_loss_is_added_only_while_fitting_with_targets(name):
    model = tiny(name, finding_weight=2.0)
    inputs = batch(name)
    targets = np.zeros((3, len(OBSERVATIONS)), np.float32)
    targets[0, 2] = 1.0
    with tf.GradientTape() as tape:
        model({**inputs, "findings": targets}, training=True)
        (finding_loss,) = model.losses
    whitened = model.standardise(tf.cast(inputs["features"], tf.float32))
    k = len(OBSERVATIONS)
    if name == "baseline":   # one classifier of both pooled vectors joined
        logits = model.finding_classifier(tf.reshape(whitened, (3, -1)))
    else:                    # each view's weights on that view's mean region, summed over the views
        scores = model.finding_classifier(tf.reduce_mean(whitened, axis=2))
        logits = scores[:, 0, :k] + scores[:, 1, k:]
    expected = 2.0 * keras.losses.BinaryCrossentropy(from_logits=True)(targets, logits)
    assert float(finding_loss) == pytest.approx(float(expected), rel=1e-4)
    gradients = tape.gradient(finding_loss, model.finding_classifier.trainable_variables)
    assert all(np.any(g.numpy()) for g in gradients)
    model({**inputs, "findings": targets}, training=False)
    assert model.losses == []          # Keras's val_loss stays the report loss alone
    model(inputs, training=True)
    assert model.losses == []
    probabilities = model.finding_probabilities(inputs["features"]).numpy()
    np.testing.assert_allclose(probabilities, tf.sigmoid(logits).numpy(), atol=1e-6)
    assert tiny(name).finding_probabilities(inputs["features"]) is None


def _head_columns(model, fold: int) -> slice:
    """The finding classifier's output columns of one fold's head."""
    width = len(OBSERVATIONS) * model.classifier_outputs_per_finding
    return slice(fold * width, (fold + 1) * width)


@pytest.mark.parametrize("name,extra", [("baseline", {"direct_features": False}),
                                        ("attention", {"region_input": "findings"})])
def test_cross_fitting_each_study_is_read_by_a_head_that_never_fitted_it(name, extra):
    folds = 3
    model = tiny(name, finding_weight=1.0, finding_folds=folds, **extra)
    inputs = batch(name)
    head = model.finding_classifier
    head.kernel.assign(tf.random.normal(head.kernel.shape, seed=2))
    study_folds = np.array([0, 2, 2], np.int32)

    # While fitting, study i's decoder input comes from head folds[i] alone.
    def decoder_inputs(fold_of_studies):
        context = model._encode(inputs["features"], training=False, folds=fold_of_studies)[1]
        return np.concatenate([keras.ops.convert_to_numpy(c).reshape(3, -1) for c in context], axis=1)

    before = decoder_inputs(study_folds)
    kernel = head.kernel.numpy()
    kernel[:, _head_columns(model, 2)] += 1.0
    head.kernel.assign(kernel)
    after = decoder_inputs(study_folds)
    assert np.allclose(before[0], after[0], atol=1e-6)          # fold 0: head 2 changed, not its head
    assert not np.allclose(before[1:], after[1:], atol=1e-4)      # folds 2: their head changed

    # Elsewhere (val, test, new images) the heads' logits are averaged.
    fold_logits, _ = model._encode(inputs["features"])
    assert tuple(fold_logits.shape) == (3, folds, len(OBSERVATIONS))
    np.testing.assert_allclose(model.finding_probabilities(inputs["features"]).numpy(),
                               tf.sigmoid(tf.reduce_mean(fold_logits, axis=1)).numpy(), atol=1e-6)

    # Each head fits only the studies outside its fold: here all are in fold 0, so head 0 learns
    # nothing, and the loss is the mean cross-entropy of heads 1 and 2.
    targets = np.zeros((3, len(OBSERVATIONS)), np.float32)
    targets[:, 1] = 1.0
    everyone_in_fold_0 = np.zeros(3, np.int32)
    with tf.GradientTape() as tape:
        model({**inputs, "findings": targets, "folds": everyone_in_fold_0}, training=True)
        (finding_loss,) = model.losses
    gradient = tape.gradient(finding_loss, head.kernel).numpy()
    assert not np.any(gradient[:, _head_columns(model, 0)])
    assert np.any(gradient[:, _head_columns(model, 1)]) and np.any(gradient[:, _head_columns(model, 2)])
    fold_logits, _ = model._encode(inputs["features"], training=False)   # no dropout in tiny models' head path
    others = tf.reshape(fold_logits[:, 1:], (-1, len(OBSERVATIONS)))
    expected = keras.losses.BinaryCrossentropy(from_logits=True)(np.repeat(targets, folds - 1, axis=0), others)
    assert float(finding_loss) == pytest.approx(float(expected), rel=1e-4)


def test_cross_fitted_models_save_and_load(tmp_path):
    model = tiny("attention", finding_weight=1.0, finding_folds=4, region_input="findings")
    model.finding_classifier.kernel.assign(tf.random.normal(model.finding_classifier.kernel.shape, seed=3))
    path = tmp_path / "attention.keras"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.finding_folds == 4
    inputs = batch("attention")
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), atol=1e-5)
    with pytest.raises(BadInput, match="finding_folds"):
        tiny("baseline", finding_weight=1.0, finding_folds=0)


def test_a_baseline_without_features_or_findings_is_refused():
    with pytest.raises(BadInput, match="direct_features"):
        tiny("baseline", direct_features=False)
    model = tiny("baseline", finding_weight=1.0, direct_features=False)
    inputs = batch("baseline")
    # The image reaches the words through the finding probabilities only.
    head = model.finding_classifier
    head.kernel.assign(tf.zeros_like(head.kernel))
    changed = {**inputs, "features": inputs["features"] * 3 + 1}
    np.testing.assert_allclose(model(changed).numpy(), model(inputs).numpy(), atol=1e-6)


def test_attention_over_finding_evidence_sees_where_the_evidence_is():
    with pytest.raises(BadInput, match="region_input"):
        tiny("attention", region_input="findings")           # no finding head to take evidence from
    with pytest.raises(BadInput, match="features or findings"):
        tiny("attention", finding_weight=1.0, region_input="pixels")
    model = tiny("attention", finding_weight=1.0, region_input="findings")
    inputs = batch("attention")
    whitened = model.whiten(inputs["features"])
    assert tuple(model.view_scores(whitened).shape) == (3, 2, 49, 1, len(OBSERVATIONS))   # one fold
    # The study's logits are the regions' scores averaged over each view, summed over the views.
    head = model.finding_classifier
    head.kernel.assign(tf.random.normal(head.kernel.shape, seed=1))
    regions = model.view_scores(whitened).numpy()[:, :, :, 0]
    probabilities = model.finding_probabilities(inputs["features"]).numpy()
    np.testing.assert_allclose(probabilities, tf.sigmoid(regions.mean(axis=2).sum(axis=1)).numpy(), atol=1e-5)
    # Features that move no finding's evidence move nothing the decoder reads.
    head.kernel.assign(tf.zeros_like(head.kernel))
    changed = {**inputs, "features": inputs["features"] * 2 + 1}
    np.testing.assert_allclose(model(changed).numpy(), model(inputs).numpy(), atol=1e-6)


def test_region_evidence_without_whitening_every_region_gives_the_same_scores():
    """The attention model scores regions as (x - mean) @ (whitening @ kernel): whitening each of
    the 98 regions first (F x F apiece) must give the same scores, and the same model outputs."""
    rng = np.random.default_rng(5)
    model = tiny("attention", finding_weight=1.0, region_input="findings", finding_folds=3)
    common = rng.normal(size=(80, 2, 49, 1))
    model.set_feature_statistics((0.02 + 0.003 * (2.0 * common + 0.3 * rng.normal(size=(80, 2, 49, FEATURE_DIM))))
                                 .astype(np.float32))
    head = model.finding_classifier
    head.kernel.assign(tf.random.normal(head.kernel.shape, seed=2))
    head.bias.assign(tf.random.normal(head.bias.shape, seed=3))
    features = (0.02 + 0.01 * rng.normal(size=(4, 2, 49, FEATURE_DIM))).astype(np.float16)
    folded = model.raw_view_scores(features).numpy()
    per_region = model.view_scores(model.whiten(features)).numpy()
    assert folded.shape == (4, 2, 49, 3, len(OBSERVATIONS))
    assert np.abs(per_region).max() > 1.0                       # scores that could differ
    np.testing.assert_allclose(folded, per_region, rtol=1e-4, atol=1e-4)
    # The pooled path: the whitened mean region is the mean of the whitened regions.
    pooled = model.view_scores(model.whiten(features).numpy().mean(axis=2))
    study_logits = pooled.numpy().sum(axis=1).mean(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.finding_probabilities(features)),
                               tf.sigmoid(study_logits).numpy(), atol=1e-5)


# The region head: a shared MLP per region, log-sum-exp pooling, a linear read-out of the mean region.
REGION_HEAD = {"finding_weight": 1.0, "finding_head": "regions", "finding_hidden": 5}
REGION_SETTINGS = {"baseline": {**REGION_HEAD, "direct_features": False},
                   "attention": {**REGION_HEAD, "region_input": "findings"}}
SPATIAL = (2, 49, FEATURE_DIM)


def region_model(name: str, folds: int = 1, seed: int = 0, **extra):
    """A tiny model with a region head, its statistics set and its weights all non-zero."""
    keras.utils.set_random_seed(seed)
    model = build_model(name, VOCAB, SPATIAL, {**SIZES[name], **REGION_SETTINGS[name], "finding_folds": folds, **extra})
    rng = np.random.default_rng(seed)
    model.set_feature_statistics(rng.normal(0.5, 0.2, (40, *SPATIAL)).astype(np.float32))
    head = model.finding_classifier
    head.kernel.assign(tf.random.normal(head.kernel.shape, seed=seed + 1))
    head.bias.assign(tf.random.normal(head.bias.shape, seed=seed + 2))
    model.finding_region_bias.assign(tf.random.normal(model.finding_region_bias.shape, seed=seed + 3))
    return model


def spatial_batch(studies: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(0.5, 0.2, (studies, *SPATIAL)).astype(np.float32),
            "tokens": rng.integers(1, VOCAB, (studies, 6)).astype(np.int32)}


def region_head_by_hand(model, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(study logits (N, folds, findings), region logits (N, 98, folds, findings)) in numpy."""
    weight = lambda w: keras.ops.convert_to_numpy(w).astype(np.float64)  # noqa: E731
    regions = features.reshape(len(features), -1, FEATURE_DIM).astype(np.float64)
    regions = (regions - weight(model.region_mean)) / weight(model.region_scale)
    hidden_layer = model.finding_region_hidden
    hidden = np.maximum(regions @ weight(hidden_layer.kernel) + weight(hidden_layer.bias), 0.0)
    hidden = hidden.reshape(*hidden.shape[:2], model.finding_folds, model.finding_hidden)
    region_logits = np.einsum("nrkh,khf->nrkf", hidden, weight(model.finding_region_kernel)) + weight(model.finding_region_bias)
    top = region_logits.max(axis=1, keepdims=True)
    pooled = (top[:, 0] + np.log(np.exp(region_logits - top).sum(axis=1))) - np.log(regions.shape[1])
    linear = regions.mean(axis=1) @ weight(model.finding_classifier.kernel) + weight(model.finding_classifier.bias)
    return pooled + linear.reshape(len(features), model.finding_folds, -1), region_logits


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_the_region_head_is_a_per_region_mlp_pooled_by_log_sum_exp_plus_a_linear_read_out(name):
    model = region_model(name, folds=2)
    assert model.feature_key == "spatial" and model.feature_shape() == SPATIAL
    inputs = spatial_batch()
    expected, expected_regions = region_head_by_hand(model, inputs["features"])
    fold_logits, region_logits = model.region_finding_logits(inputs["features"])
    np.testing.assert_allclose(fold_logits.numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(region_logits.numpy(), expected_regions, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model._encode(inputs["features"])[0].numpy(), expected, rtol=1e-4, atol=1e-4)
    # New studies read the mean of the heads' logits.
    np.testing.assert_allclose(model.finding_probabilities(inputs["features"]).numpy(),
                               1 / (1 + np.exp(-expected.mean(axis=1))), atol=1e-5)


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_a_region_head_model_decodes_step_by_step_as_it_is_taught_and_saves(name, tmp_path):
    model = region_model(name, folds=3)
    inputs = spatial_batch()
    logits = model(inputs).numpy()
    np.testing.assert_allclose(step_by_step(model, inputs)[0], logits, atol=1e-5)
    path = tmp_path / f"{name}.keras"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.get_config() == model.get_config() and loaded.feature_key == "spatial"
    np.testing.assert_array_equal(loaded(inputs).numpy(), logits)
    np.testing.assert_array_equal(loaded.finding_probabilities(inputs["features"]).numpy(),
                                  model.finding_probabilities(inputs["features"]).numpy())


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_the_report_loss_cannot_train_the_region_head_but_reads_it(name):
    model = region_model(name, folds=2)
    inputs = spatial_batch()
    head = [model.finding_region_hidden.kernel, model.finding_region_kernel, model.finding_region_bias,
            model.finding_classifier.kernel]
    with tf.GradientTape() as tape:
        report = tf.reduce_sum(tf.square(model(inputs, training=False)))
    assert all(g is None or not np.any(g.numpy()) for g in tape.gradient(report, head))
    before = model(inputs).numpy()
    model.finding_region_bias.assign(model.finding_region_bias + 3.0)
    assert not np.allclose(model(inputs).numpy(), before, atol=1e-4)


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_region_heads_are_cross_fitted_without_a_shared_layer(name):
    folds = 3
    model = region_model(name, folds=folds, finding_l2=0.01)
    inputs = spatial_batch()
    hidden = model.finding_hidden

    # Study i's decoder reads head folds[i] alone: changing head 2's hidden units leaves study 0 (fold 0).
    def decoder_inputs(fold_of_studies):
        context = model._encode(inputs["features"], training=False, folds=fold_of_studies)[1]
        return np.concatenate([keras.ops.convert_to_numpy(c).reshape(3, -1) for c in context], axis=1)

    study_folds = np.array([0, 2, 2], np.int32)
    before = decoder_inputs(study_folds)
    kernel = model.finding_region_hidden.kernel.numpy()
    kernel[:, 2 * hidden:] += 0.5
    model.finding_region_hidden.kernel.assign(kernel)
    after = decoder_inputs(study_folds)
    assert np.allclose(before[0], after[0], atol=1e-6)
    assert not np.allclose(before[1:], after[1:], atol=1e-4)

    # All studies in fold 0: head 0 gets no gradient from the cross-entropy, only from its L2 penalty.
    targets = np.zeros((3, len(OBSERVATIONS)), np.float32)
    targets[:, 1] = 1.0
    variables = [model.finding_region_hidden.kernel, model.finding_region_kernel, model.finding_classifier.kernel]
    with tf.GradientTape() as tape:
        model({**inputs, "findings": targets, "folds": np.zeros(3, np.int32)}, training=True)
        (finding_loss,) = model.losses
    hidden_grad, region_grad, linear_grad = (g.numpy() for g in tape.gradient(finding_loss, variables))
    penalty_grad = 2 * REGION_HEAD_L2 * model.finding_region_hidden.kernel.numpy()
    np.testing.assert_allclose(hidden_grad[:, :hidden], penalty_grad[:, :hidden], atol=1e-7)
    assert not np.allclose(hidden_grad[:, hidden:], penalty_grad[:, hidden:], atol=1e-6)
    assert not np.any(region_grad[0]) and np.any(region_grad[1]) and np.any(region_grad[2])
    k = len(OBSERVATIONS)
    np.testing.assert_allclose(linear_grad[:, :k], 2 * 0.01 * model.finding_classifier.kernel.numpy()[:, :k], atol=1e-7)

    # The loss: heads 1 and 2's mean cross-entropy plus both penalties (the head's dropout set to 0
    # here, so that its training pass can be computed by hand).
    model.finding_region_dropout.rate = 0.0
    with tf.GradientTape():
        model({**inputs, "findings": targets, "folds": np.zeros(3, np.int32)}, training=True)
        (finding_loss,) = model.losses
    expected_logits, _ = region_head_by_hand(model, inputs["features"])
    others = expected_logits[:, 1:].reshape(-1, k)
    cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)(np.repeat(targets, folds - 1, axis=0), others)
    penalties = (0.01 * np.sum(model.finding_classifier.kernel.numpy() ** 2)
                 + REGION_HEAD_L2 * np.sum(model.finding_region_hidden.kernel.numpy() ** 2))
    assert float(finding_loss) == pytest.approx(float(cross_entropy) + penalties, rel=1e-4)


def test_region_head_settings_are_checked_and_decide_the_features_read():
    assert feature_key_for("baseline", REGION_SETTINGS["baseline"]) == "spatial"
    assert feature_key_for("baseline", {**REGION_SETTINGS["baseline"], "finding_weight": 0.0,
                                        "direct_features": True}) == "pooled"
    assert feature_key_for("baseline", {}) == "pooled" and feature_key_for("attention", {}) == "spatial"
    with pytest.raises(BadInput, match="spatial"):
        build_model("baseline", VOCAB, SHAPES["baseline"], {**SIZES["baseline"], **REGION_SETTINGS["baseline"]})
    with pytest.raises(BadInput, match="finding_head"):
        build_model("attention", VOCAB, SPATIAL, {**SIZES["attention"], "finding_weight": 1.0, "finding_head": "mlp"})
    with pytest.raises(BadInput, match="finding_hidden"):
        build_model("attention", VOCAB, SPATIAL, {**SIZES["attention"], **REGION_HEAD, "finding_hidden": 0})
