"""Training a report generator with teacher forcing, and the blank-image control.

One run of `train`:
1. the model learns the training reports from the real image features; early stopping and the
   choice of the kept weights look at the validation loss only (the test split is never read);
2. with `train.image_control` on, the same model (same seed, same settings) learns again with every
   study given the features of two black images (data/features/blank/). That model can only
   learn the language of the reports, so the gap between the two validation losses is what the
   images are worth. A model that does not beat its blank-image twin does not use the images.

Losses are the cross-entropy of the next word averaged over real tokens (<pad> left out). The
metrics' `val_loss` / `train_loss` are computed once more at the end over the whole split with
dropout off (exact token averages; Keras's per-epoch curves average per-batch values).

Features are streamed from the feature store's shards (cxrgen.features.store), never loaded whole:
the training batches come from a tf.data pipeline that reads the shard files, shuffled with a
buffer of `train.shuffle_buffer` studies; the whitening statistics, the final loss passes and the
finding head's probabilities read the split a chunk at a time. What is held per study is small
(token ids, finding targets, folds), so memory does not grow with the collection beyond that.
"""

from __future__ import annotations

import hashlib
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from cxrgen.bootstrap import resample_counts
from cxrgen.data.labeler import label_matrix, positive_matrix
from cxrgen.data.text import tokenize
from cxrgen.data.vocab import PAD_ID, Vocab
from cxrgen.device import describe_device
from cxrgen.errors import BadInput
from cxrgen.features.store import FeatureStore, ShardedArray, return_large_buffers_to_the_system
from cxrgen.files import write_json_atomic
from cxrgen.modeling import distributed
from cxrgen.modeling.models import (
    MODELS,
    MaskedTokenLoss,
    ReportGenerator,
    build_model,
    feature_key_for,
    save_model,
)
from cxrgen.observations import NO_FINDING, OBSERVATIONS
from cxrgen.params import with_defaults
from cxrgen.tables import read_parquet

TRAIN_DEFAULTS = {
    "seed": 0,
    "epochs": 12,
    "batch_size": 32,
    "learning_rate": 0.003,
    "lr_schedule": "cosine",    # cosine (from learning_rate down to 0 over the epochs' steps) | constant
    "clipnorm": 5.0,            # gradient norm clipping: recurrent nets blow up now and then
    "patience": 5,              # epochs without a better val loss before stopping
    "strategy": "none",         # none | mirrored (all GPUs, or all logical CPU devices)
    "image_control": True,      # also train on blank-image features and report the gap
    "deterministic": True,      # tf.config.experimental.enable_op_determinism
    "length_grouping": 4,       # > 0: batches of similar lengths, see make_dataset (0 = plain random batches)
    "shuffle_buffer": 2560,     # studies in the shuffle buffer (>= the training split: a full shuffle)
    "max_steps": 0,             # > 0: each fit runs this many training batches in all, then stops
    "precision": "float32",     # float32 | mixed_float16 (GPUs) | mixed_bfloat16: the layers' compute dtype
    "finding_epochs": 30,       # > 0: the finding heads are fitted first, for this many epochs, then frozen
                                # while the decoder trains; 0: they learn alongside the decoder
    "finding_learning_rate": 0.001,   # the heads' first rate (the same lr_schedule, over finding_epochs)
    "finding_min_steps": 2000,  # ... and at least this many batches: more epochs on a small training split
}
STRATEGIES = ("none", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
BLANK_PREFIX = "blank_images/"
FOLDS_KEY = 7  # seeds the cross-fitting folds apart from the shuffle
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))   # 0.05 ... 0.95
CALIBRATION_MIN_POSITIVES = 5   # fewer val positives: the threshold stays at 0.5 (too few to choose by)


def train_settings(params: dict) -> dict:
    """params.yaml `train`, with defaults, checked (a typo must not silently fall back)."""
    settings = with_defaults(params, "train", TRAIN_DEFAULTS)
    if settings["strategy"] not in STRATEGIES:
        raise BadInput("params.yaml", f"train.strategy must be one of {STRATEGIES}, not {settings['strategy']!r}")
    for key in ("epochs", "batch_size", "patience"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise BadInput("params.yaml", f"train.{key} must be a positive integer, not {settings[key]!r}")
    for key in ("shuffle_buffer", "max_steps", "finding_epochs", "finding_min_steps"):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "shuffle_buffer" else 0):
            raise BadInput("params.yaml", f"train.{key} must be a whole number >= "
                                          f"{1 if key == 'shuffle_buffer' else 0}, not {value!r}")
    for key in ("learning_rate", "finding_learning_rate"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise BadInput("params.yaml", f"train.{key} must be a positive number, not {value!r}")
    if settings["lr_schedule"] not in LR_SCHEDULES:
        raise BadInput("params.yaml", f"train.lr_schedule must be one of {LR_SCHEDULES}, not {settings['lr_schedule']!r}")
    if settings["precision"] not in PRECISIONS:
        raise BadInput("params.yaml", f"train.precision must be one of {PRECISIONS}, not {settings['precision']!r}")
    grouping = settings["length_grouping"]
    if not isinstance(grouping, int) or isinstance(grouping, bool) or grouping < 0:
        raise BadInput("params.yaml", f"train.length_grouping must be a whole number >= 0, not {grouping!r}")
    return settings


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainingData:
    """Features and token ids of the train and val splits, and the blank-image features."""

    vocab_size: int
    feature_key: str
    features: dict[str, ShardedArray]  # split -> (N, *feature_shape), float16, read from the shards
    tokens: dict[str, np.ndarray]     # split -> (N, T) int32: <start> words <end> <pad>...
    findings: dict[str, np.ndarray]   # split -> (N, observations) float32: the labeler's positives
    blank: np.ndarray                 # (1, *feature_shape): one study of two black images
    info: dict                        # data/features/features.json

    @property
    def feature_shape(self) -> tuple:
        return tuple(self.blank.shape[1:])


def token_matrix(texts, vocab: Vocab) -> np.ndarray:
    """<start> ids <end> padded to the longest report (at most vocab.max_len) as int32 (N, T)."""
    rows = [vocab.encode(tokenize(text)) for text in texts]
    width = max((len(row) for row in rows), default=2)
    matrix = np.full((len(rows), width), PAD_ID, dtype=np.int32)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def load_training_data(features_dir: str | Path, prepared_dir: str | Path, feature_key: str,
                       splits: tuple[str, ...] = ("train", "val")) -> TrainingData:
    """The splits' token ids and finding targets in memory, their features opened in the store (not read)."""
    features_dir, prepared_dir = Path(features_dir), Path(prepared_dir)
    vocab = Vocab.load(prepared_dir / "vocab.json")
    studies_path = prepared_dir / "studies.parquet"
    if not studies_path.exists():
        raise BadInput(studies_path, "not found (run the prepare stage)")
    studies = read_parquet(studies_path)
    feature_store = FeatureStore(features_dir)
    blank = feature_store.blank(feature_key)
    features, tokens, findings = {}, {}, {}
    for split in splits:
        texts = studies.loc[studies["split"] == split, "text"].tolist()
        array = feature_store.open(split, feature_key)
        where = array.shards[0].path.parent
        if len(array) != len(texts):
            raise BadInput(where, f"{len(array)} rows but studies.parquet has {len(texts)} {split} studies "
                                  "(rerun the features stage)")
        if array.row_shape != blank.shape[1:]:
            raise BadInput(where, f"'{feature_key}' rows are {array.row_shape}, the blank control's are {blank.shape[1:]}")
        if not texts:
            raise BadInput(studies_path, f"the {split} split is empty")
        features[split], tokens[split] = array, token_matrix(texts, vocab)
        findings[split] = positive_matrix(label_matrix(texts)).astype(np.float32)
    return TrainingData(len(vocab), feature_key, features, tokens, findings, blank, feature_store.info)


def study_folds(n_studies: int, folds: int, seed: int) -> np.ndarray:
    """(N,) int32: each training study's fold for the finding heads' cross-fitting, in equal shares,
    by a seeded shuffle."""
    order = np.random.default_rng(np.random.SeedSequence([seed, FOLDS_KEY])).permutation(n_studies)
    assignment = np.empty(n_studies, np.int32)
    assignment[order] = np.arange(n_studies) % max(int(folds), 1)
    return assignment


def make_dataset(features: np.ndarray | ShardedArray, tokens: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, blank: bool = False, findings: np.ndarray | None = None,
                 folds: np.ndarray | None = None, length_grouping: int = 0,
                 shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """Batches of ({"features", "tokens": ids[:-1]}, next ids = ids[1:]) (teacher forcing).

    features: the feature store's sharded array (streamed from its files, see ShardedArray.dataset)
    or an array in memory (tests; the blank control).
    shuffle_buffer: studies held by the shuffle (None: the whole split). A buffer at least as large
    as the split shuffles it whole, the same order whatever the shards; a smaller one bounds memory
    for large collections (each study is then drawn from the next `shuffle_buffer` in file order).

    blank=True: `features` is ONE study's features, given to every study (the image control).
    findings: (N, observations) targets of the finding head, added to the inputs when given;
    folds: (N,) each study's cross-fitting fold (see study_folds), added with them.
    length_grouping=G > 0 (with shuffle): each shuffled window of G batches' worth of studies is
    sorted by report length before it is cut into batches, and the batches are then shuffled.
    A batch runs as many decoder steps as its longest report: random batches of 32 IU-size reports
    run ~55 steps for ~35 words on average, grouped ones little more than their own lengths. Every
    study is still seen once per epoch, in an order that changes every epoch.
    """
    if folds is not None and findings is None:
        raise ValueError("folds go with the finding targets")

    def pair(study_features, ids, labels=None, fold=None):
        inputs = {"features": tf.cast(study_features, tf.float32), "tokens": ids[:-1]}
        if labels is not None:
            inputs["findings"] = labels
        if fold is not None:
            inputs["folds"] = fold
        return inputs, ids[1:]

    rows = (tokens,) if findings is None else (tokens, findings) if folds is None else (tokens, findings, folds)
    if blank:
        constant = tf.constant(features[0])
        dataset, token_index = tf.data.Dataset.from_tensor_slices(rows), 0
        to_pair = lambda *row: pair(constant, *row)  # noqa: E731
    elif isinstance(features, ShardedArray):
        if len(features) != len(tokens):
            raise ValueError(f"{len(features)} feature rows for {len(tokens)} token rows")
        # The features streamed from their files beside the (small) per-study arrays held in memory.
        dataset = tf.data.Dataset.zip((features.dataset(), tf.data.Dataset.from_tensor_slices(rows)))
        dataset = dataset.map(lambda study_features, columns: (study_features, *columns))
        token_index, to_pair = 1, pair
    else:
        dataset, token_index, to_pair = tf.data.Dataset.from_tensor_slices((features, *rows)), 1, pair
    if shuffle:
        buffer = len(tokens) if shuffle_buffer is None else max(1, min(int(shuffle_buffer), len(tokens)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if length_grouping:
            dataset = _group_by_length(dataset, batch_size * length_grouping, token_index)
    options = tf.data.Options()
    options.deterministic = True
    # MirroredStrategy splits each batch between the replicas (the shards are not split by file).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.map(to_pair).batch(batch_size).map(_trim_padding)
    if shuffle and length_grouping:
        # Sorted windows would give short batches, then long ones: mix the batches again. (unbatch
        # hides the number of batches from Keras, which would then warn at the first epoch's end.)
        dataset = dataset.shuffle(length_grouping, seed=seed + 1, reshuffle_each_iteration=True)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-len(tokens) // batch_size)))
        # Every token weighs the same whatever its batch: a batch of short reports holds ~20 real
        # tokens a row and one of long reports ~55; averaged over its own tokens, a short batch's
        # tokens would weigh ~3x a long batch's, and the model would learn the short (normal) reports
        # more than the val loss, a mean over tokens, asks for. Each batch's loss (its token mean) is
        # weighted by its real tokens / (rows x the split's mean): the epoch's token sum over a fixed
        # divisor, as random batches give. Only training batches: the val loss stays a token mean.
        mean_tokens = mean_target_tokens(tokens)
        dataset = dataset.map(lambda inputs, targets: (inputs, targets, _batch_token_weights(targets, mean_tokens)))
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _batch_token_weights(targets, mean_tokens: float):
    """(rows,) sample weights, all equal: the batch's real tokens / (rows x mean_tokens)."""
    rows = tf.shape(targets)[0]
    real = tf.reduce_sum(tf.cast(tf.not_equal(targets, PAD_ID), tf.float32))
    return tf.fill([rows], real / (tf.cast(rows, tf.float32) * mean_tokens))


def _group_by_length(dataset: tf.data.Dataset, window: int, token_index: int) -> tf.data.Dataset:
    """Rows (tuples) sorted by report length within consecutive windows of `window` rows (stable)."""
    def sort_window(*columns):
        length = tf.reduce_sum(tf.cast(tf.not_equal(columns[token_index], PAD_ID), tf.int32), axis=1)
        order = tf.argsort(length, stable=True)
        return tuple(tf.gather(column, order) for column in columns)

    return dataset.batch(window).map(sort_window).unbatch()


def _trim_padding(inputs, targets):
    """Cut the batch to its longest report: the recurrent layers then run no step on <pad> alone
    (reports run from ~10 to 60 tokens). Padding only ever follows the words, so nothing is lost."""
    length = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(targets, PAD_ID), tf.int32), axis=1))
    return {**inputs, "tokens": inputs["tokens"][:, :length]}, targets[:, :length]


# ---------------------------------------------------------------------------------------------
# Fitting


def mean_target_tokens(tokens: np.ndarray) -> float:
    """Mean real next-word targets per report (ids[1:] without <pad>)."""
    return float(np.count_nonzero(tokens[:, 1:] != PAD_ID) / max(len(tokens), 1))


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`none`: the default (one device). `mirrored`: every GPU, or else every logical CPU device."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multi_worker":   # the cluster from TF_CONFIG (cxrgen.modeling.distributed)
        return distributed.multi_worker_strategy()
    if name != "mirrored":
        raise BadInput("params.yaml", f"train.strategy must be one of {STRATEGIES}, not {name!r}")
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    # NCCL all-reduce needs GPUs; on CPUs the replicas' gradients are summed on one device.
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def learning_rate(settings: dict, n_train: int):
    """The optimizer's learning rate: a number (constant) or a cosine decay from
    `learning_rate` to 0 over every training step the run may take (`epochs` x batches an epoch, or
    `max_steps`). The decay ends with the last epoch: early stopping may end the run before it."""
    if settings["lr_schedule"] == "constant":
        return settings["learning_rate"]
    steps = settings["max_steps"] or settings["epochs"] * -(-n_train // settings["batch_size"])
    return keras.optimizers.schedules.CosineDecay(settings["learning_rate"], decay_steps=max(int(steps), 1))


def weights_digest(model: keras.Model) -> str:
    """sha256 of every weight's bytes, in order: the same digest means the same trained model."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


class LiveCurves(keras.callbacks.Callback):
    """Per-epoch train and val loss into a dvclive.Live, step = epoch number (1, 2, ...)."""

    def __init__(self, live, prefix: str = ""):
        super().__init__()
        self.live, self.prefix = live, prefix

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.live.step = epoch + 1
        for key in ("loss", "val_loss"):
            if key in logs:
                self.live.log_metric(f"{self.prefix}{key}", round(float(logs[key]), 6))
        self.live.sync()


@dataclass
class FitResult:
    model: ReportGenerator
    best_epoch: int
    epochs_run: int
    history: dict
    head_losses: list = field(default_factory=list)   # the heads' fit: mean loss per epoch (or none)


def finding_head_epochs(settings: dict, n_train: int) -> int:
    """How many epochs the heads are fitted for: `finding_epochs`, or more where that would be fewer
    than `finding_min_steps` batches. The heads learn per step: on the demo's 288 training studies
    (9 batches an epoch) 30 epochs leave a region head at val AUC .75, 200 epochs at .88
    (benchmarks/finding_heads.py on the demo's features); IU-size's 75 batches an epoch make 30
    epochs 2,250 steps already."""
    batches = -(-n_train // settings["batch_size"])
    return max(settings["finding_epochs"], -(-settings["finding_min_steps"] // max(batches, 1)))


def fit_finding_heads(model: ReportGenerator, strategy: tf.distribute.Strategy, train_set: tf.data.Dataset,
                      settings: dict, n_train: int, epochs: int) -> list[float]:
    """Fit the model's finding heads alone (cross-fitted: each on the studies outside its fold) on
    `train_set`'s features, findings and folds, with their own Adam; the decoder is not run.

    Why first, and not alongside the decoder: the heads need more epochs than the decoder (a region
    head on IU-size features reads the abnormal findings at test F1 .87 after 30 epochs from 0.001,
    .81 after the decoder's 12 from 0.003), and a decoder trained on heads that still move learns
    to trust readings that change under it. Returns the mean head loss of each epoch.
    """
    variables = model.finding_head_variables()
    rate = learning_rate({**settings, "learning_rate": settings["finding_learning_rate"], "epochs": epochs}, n_train)
    with strategy.scope():
        optimizer = keras.optimizers.Adam(rate, clipnorm=settings["clipnorm"])
        if settings["precision"] == "mixed_float16":   # float16 gradients underflow unscaled
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(variables)

    def replica_step(inputs):
        with tf.GradientTape() as tape:
            # Through the whole encoder, not fold_finding_logits: its dropout layers' random streams
            # advance here, and the runs the README reports were trained so (a region head alone
            # would be cheaper, but would draw every later dropout mask differently).
            fold_logits, _ = model._encode(inputs["features"], training=True, folds=inputs["folds"])
            loss = tf.cast(model.finding_head_loss(fold_logits, inputs["findings"], inputs["folds"]), tf.float32)
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss

    @tf.function
    def step(batch):
        inputs, _ = batch
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_step, args=(inputs,)), axis=None)

    batches = strategy.experimental_distribute_dataset(train_set)
    losses = []
    progress = tqdm(range(epochs), desc=f"{model.name}: finding heads", unit=" epoch", file=sys.stderr, mininterval=2)
    for _ in progress:
        total, count = 0.0, 0
        for batch in batches:
            total += float(step(batch))
            count += 1
        losses.append(round(total / max(count, 1), 6))
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def fit(model_name: str, sizes: dict, settings: dict, data: TrainingData, strategy: tf.distribute.Strategy,
        blank: bool = False, callbacks: list | None = None, verbose: int = 0) -> FitResult:
    """Train one model from its seed; the returned model holds the weights of the best val epoch."""
    keras.utils.set_random_seed(settings["seed"])
    if blank:
        # One constant input: feature dropout has nothing to regularise there and would only feed the
        # decoder noise (black images whiten to values far outside the training ones). Without it the
        # control is the best language-only twin, which makes the image's gain harder to get.
        sizes = {**sizes, "feature_dropout": 0.0}
    with strategy.scope():
        # Mixed precision: the layers compute in float16 / bfloat16 and keep float32 weights; Keras
        # scales the float16 loss (compile's auto_scale_loss). What is saved is a float32 model.
        model = build_model(model_name, data.vocab_size, data.feature_shape, sizes,
                            dtype=None if settings["precision"] == "float32" else settings["precision"])
        # The real training features' statistics, for the blank-image twin too: it must see the
        # same transform, only without the image content.
        model.set_feature_statistics(data.features["train"])
    source = {split: (data.blank if blank else data.features[split]) for split in ("train", "val")}
    folds = study_folds(len(data.tokens["train"]), model.finding_folds, settings["seed"])
    head_losses = []
    # The blank-image twin's heads read one constant input (they can only learn how common each
    # finding is): they learn alongside its decoder, as before.
    if model.findings and settings["finding_epochs"] and not blank:
        head_set = make_dataset(source["train"], data.tokens["train"], settings["batch_size"], shuffle=True,
                                seed=settings["seed"], findings=data.findings["train"], folds=folds,
                                shuffle_buffer=settings["shuffle_buffer"])
        head_epochs = finding_head_epochs(settings, len(data.tokens["train"]))
        if settings["max_steps"]:   # a fixed amount of training: max_steps batches for the heads too
            head_set, head_epochs = head_set.repeat().take(settings["max_steps"]), 1
        head_losses = fit_finding_heads(model, strategy, head_set, settings, len(data.tokens["train"]), head_epochs)
        model.freeze_finding_heads()
    with strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate(settings, len(data.tokens["train"])),
                                            clipnorm=settings["clipnorm"]),
            loss=MaskedTokenLoss(),
        )
    train_set = make_dataset(source["train"], data.tokens["train"], settings["batch_size"], shuffle=True,
                             seed=settings["seed"], blank=blank, findings=data.findings["train"], folds=folds,
                             length_grouping=settings["length_grouping"], shuffle_buffer=settings["shuffle_buffer"])
    epochs = settings["epochs"]
    if settings["max_steps"]:
        # A fixed amount of training (benchmarks, smoke runs): max_steps batches as one epoch (the
        # epochs' orders one after the other), then one validation.
        train_set, epochs = train_set.repeat().take(settings["max_steps"]), 1
    val_set = make_dataset(source["val"], data.tokens["val"], settings["batch_size"], blank=blank)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings["patience"],
                                            restore_best_weights=True)  # restores at the end in Keras 3
    if distributed.is_multi_worker(strategy):   # Keras's fit does not run under it: epochs by hand
        history, best_epoch = distributed.fit_distributed(
            model, strategy, train_set, lambda m: token_loss(m, source["val"], data.tokens["val"],
                                                             settings["batch_size"], blank=blank),
            settings["epochs"], settings["patience"], callbacks, verbose)
        return FitResult(model, best_epoch, len(history["val_loss"]), history, head_losses)
    history = model.fit(train_set, validation_data=val_set, epochs=epochs,
                        callbacks=[stopper, *(callbacks or [])], shuffle=False, verbose=verbose)
    val_curve = history.history["val_loss"]
    return FitResult(model, int(np.argmin(val_curve)) + 1, len(val_curve), history.history, head_losses)


_LOSS_SUMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _loss_sums(model: ReportGenerator):
    """A tf.function (one per model, so it is traced once) giving a batch's total loss and token count."""
    if model not in _LOSS_SUMS:
        loss = MaskedTokenLoss()
        signature = (
            {"features": tf.TensorSpec((None, *model.feature_shape()), tf.float32),
             "tokens": tf.TensorSpec((None, None), tf.int32)},
            tf.TensorSpec((None, None), tf.int32),
        )

        owner = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(input_signature=signature)  # any batch size and report length: one trace
        def sums(inputs, targets):
            mean = loss(targets, owner()(inputs, training=False))
            count = tf.reduce_sum(tf.cast(tf.not_equal(targets, PAD_ID), tf.float32))
            return mean * count, count

        _LOSS_SUMS[model] = sums
    return _LOSS_SUMS[model]


def token_loss(model: ReportGenerator, features: np.ndarray | ShardedArray, tokens: np.ndarray, batch_size: int,
               blank: bool = False) -> float:
    """Mean cross-entropy per real token over a whole split, dropout off."""
    sums = _loss_sums(model)
    total = count = 0.0
    for inputs, targets in make_dataset(features, tokens, batch_size, blank=blank):
        batch_total, batch_count = sums(inputs, targets)
        total += float(batch_total)
        count += float(batch_count)
    return total / max(count, 1.0)


def study_token_losses(model: ReportGenerator, features: np.ndarray | ShardedArray, tokens: np.ndarray, batch_size: int,
                       blank: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per study, dropout off: the summed cross-entropy of its real tokens, and their count."""
    sums, counts = [], []
    for inputs, targets in make_dataset(features, tokens, batch_size, blank=blank):
        logits = tf.cast(model(inputs, training=False), tf.float32)
        entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        real = tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)
        sums.append(tf.reduce_sum(entropy * real, axis=1).numpy())
        counts.append(tf.reduce_sum(real, axis=1).numpy())
    return np.concatenate(sums).astype(np.float64), np.concatenate(counts).astype(np.float64)


def gain_interval(blank_sums: np.ndarray, image_sums: np.ndarray, counts: np.ndarray, n_resamples: int = 1000,
                  seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap over val studies of the val-loss gain (blank images minus images, nats per
    token): each resample draws studies with replacement and compares the two models on the same
    draw, so only the studies' sampling varies, not the training run."""
    draws = resample_counts(len(counts), n_resamples, seed).astype(np.float64)
    gains = draws @ (blank_sums - image_sums) / (draws @ counts)
    low, high = np.quantile(gains, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    # Average ranks over ties (1-based).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def head_probabilities(model: ReportGenerator, features: np.ndarray | ShardedArray, batch_size: int) -> np.ndarray:
    """(N, findings) the finding head's probabilities, a batch at a time (read a batch at a time)."""
    return np.concatenate([
        keras.ops.convert_to_numpy(model.finding_probabilities(tf.cast(features[start:start + batch_size], tf.float32)))
        for start in range(0, len(features), batch_size)])


def abnormal_micro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Micro-F1 over the observations other than No Finding (the evaluation's headline; 0 when nothing is positive)."""
    keep = [i for i, name in enumerate(OBSERVATIONS) if name != NO_FINDING]
    predicted, targets = np.asarray(predicted, bool)[:, keep], np.asarray(targets, bool)[:, keep]
    tp = int((predicted & targets).sum())
    wrong = int((predicted ^ targets).sum())
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def calibrate_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(14,) per observation, the probability above which the head's reading counts as present.

    Chosen on the val studies for the abnormal-finding micro-F1: coordinate ascent over the
    abnormal observations with at least CALIBRATION_MIN_POSITIVES val positives (two rounds, each
    threshold from THRESHOLD_GRID, ties to the one nearest 0.5); the others, and No Finding, stay
    at 0.5. A head that reads a finding weakly (a small nodule in random DenseNet features) gives
    it probabilities well below 0.5 even where it is present: read at 0.5 it is never reported.
    """
    probabilities, targets = np.asarray(probabilities, np.float64), np.asarray(targets, bool)
    thresholds = np.full(probabilities.shape[1], 0.5)
    tunable = [i for i, name in enumerate(OBSERVATIONS)
               if name != NO_FINDING and targets[:, i].sum() >= CALIBRATION_MIN_POSITIVES]
    by_nearness = sorted(THRESHOLD_GRID, key=lambda t: (abs(t - 0.5), t))
    for _ in range(2):
        for i in tunable:
            def f1_with(t, i=i):
                trial = thresholds.copy()
                trial[i] = t
                return abnormal_micro_f1(probabilities > trial, targets)
            thresholds[i] = max(by_nearness, key=f1_with)   # max keeps the first of equals
    return thresholds


def finding_head_auc(probabilities: np.ndarray, findings: np.ndarray) -> dict:
    """AUC of the finding head's `probabilities` per observation (those with both classes in
    `findings`), and macro."""
    per_observation = {}
    for index, observation in enumerate(OBSERVATIONS):
        auc = roc_auc(findings[:, index], probabilities[:, index])
        if auc is not None:
            per_observation[observation] = round(auc, 4)
    macro = round(float(np.mean(list(per_observation.values()))), 4) if per_observation else None
    return {"macro": macro, "per_observation": per_observation}


# ---------------------------------------------------------------------------------------------
# The stage


def train(model_name: str, params: dict, features_dir: str | Path, prepared_dir: str | Path,
          model_path: str | Path, metrics_path: str | Path, live_dir: str | Path, verbose: int = 0) -> dict:
    """Train `model_name` (and its blank-image twin), save the model and the metrics; return them."""
    from dvclive import Live  # imports DVC: only when training

    if model_name not in MODELS:
        raise BadInput("params.yaml", f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    settings = train_settings(params)
    sizes = (params.get("model") or {}).get(model_name) or {}
    return_large_buffers_to_the_system()   # peak memory must not creep with the number of batches
    # The strategy first: a multi-worker one must exist before TensorFlow runs anything.
    strategy = make_strategy(settings["strategy"])
    if settings["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    data = load_training_data(features_dir, prepared_dir, feature_key_for(model_name, sizes))
    # In a cluster every worker trains; only the chief writes the model, the metrics and the curves.
    chief = distributed.is_chief(strategy)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) if chief else None

    def curves(prefix: str = "") -> list:
        return [LiveCurves(live, prefix)] if live is not None else []

    try:
        real = fit(model_name, sizes, settings, data, strategy, callbacks=curves(), verbose=verbose)
        batch = settings["batch_size"]
        # Per val study (summed loss, real tokens): the val loss, and with the blank-image twin's the
        # paired interval of the gain, both from the same numbers.
        image_sums, counts = study_token_losses(real.model, data.features["val"], data.tokens["val"], batch)
        metrics = {
            "model": model_name,
            "params": int(real.model.count_params()),
            "best_epoch": real.best_epoch,
            "epochs_run": real.epochs_run,
            "train_loss": round(token_loss(real.model, data.features["train"], data.tokens["train"], batch), 6),
            "val_loss": round(float(image_sums.sum() / counts.sum()), 6),
            "replicas": int(strategy.num_replicas_in_sync),
            "strategy": settings["strategy"],
            "precision": settings["precision"],
            "train_seed": settings["seed"],
            "data_source": data.info.get("data_source"),
            "weights": data.info.get("weights"),
            "features_seed": data.info.get("seed"),
            "device": describe_device(),
            "train_studies": int(len(data.tokens["train"])),
            "val_studies": int(len(data.tokens["val"])),
        }
        metrics["val_perplexity"] = round(float(np.exp(metrics["val_loss"])), 4)
        if real.head_losses:   # the heads were fitted first: for how long, and their last epoch's loss
            metrics["finding_head_epochs"] = len(real.head_losses)
            metrics["finding_head_train_loss"] = real.head_losses[-1]
        if real.model.finding_classifier is not None:   # the finding head's own check that it reads the images
            probabilities = head_probabilities(real.model, data.features["val"], batch)
            head = finding_head_auc(probabilities, data.findings["val"])
            metrics["val_finding_auc_macro"] = head["macro"]
            metrics["val_finding_auc"] = head["per_observation"]
            thresholds = calibrate_thresholds(probabilities, data.findings["val"])
            real.model.set_finding_thresholds(thresholds)
            metrics["finding_thresholds"] = {name: round(float(t), 2) for name, t in zip(OBSERVATIONS, thresholds)}
            # The head's own labels scored like a report's: what a decoder that states exactly what
            # the head reads would reach (on the val studies the thresholds were chosen on).
            metrics["val_head_abnormal_f1"] = {
                "at_0.5": round(abnormal_micro_f1(probabilities > 0.5, data.findings["val"]), 4),
                "calibrated": round(abnormal_micro_f1(probabilities > thresholds, data.findings["val"]), 4)}
        metrics["weights_sha256"] = weights_digest(real.model)   # thresholds included
        if chief:
            save_model(real.model, model_path)
        if settings["image_control"]:
            if verbose:   # Keras starts again at "Epoch 1/N": say which model that is
                print(f"train: {model_name}: now the blank-image twin (same settings, two black images "
                      "for every study; the control for val_loss_gain)", flush=True)
            control = fit(model_name, sizes, settings, data, strategy, blank=True,
                          callbacks=curves(BLANK_PREFIX), verbose=verbose)
            blank_sums, _ = study_token_losses(control.model, data.blank, data.tokens["val"], batch, blank=True)
            blank_val = round(float(blank_sums.sum() / counts.sum()), 6)
            low, high = gain_interval(blank_sums, image_sums, counts, seed=settings["seed"])
            metrics.update({
                "val_loss_blank_images": blank_val,
                "val_loss_gain": round(blank_val - metrics["val_loss"], 6),
                # 95 % paired bootstrap over the val studies; low > 0: the image lowers the loss
                # beyond what the choice of val studies explains.
                "val_loss_gain_interval": [round(low, 6), round(high, 6)],
                "uses_images": bool(low > 0),
                "blank_images_best_epoch": control.best_epoch,
            })
    finally:
        if live is not None:
            live.end()
    if chief:
        write_json_atomic(metrics_path, metrics)
    return metrics
