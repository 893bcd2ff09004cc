"""The two report generators, as Keras 3 models that save to and load from `.keras` files.

`baseline`  the case study's encoder-decoder: the pooled vectors of both views (2 x 1024, joined to
            2048) go through a dense layer to an image vector; the image vector sets the LSTM's
            initial state and is added to every LSTM output before the word classifier.
`attention` Bahdanau (additive) attention over the 2 x 49 region vectors of both views (the 7x7
            DenseNet grid of the frontal view, then of the lateral view: 98 regions). Each word's
            decoder step scores every region against the previous recurrent state, so the model
            attends over the regions of ONE study (the case study attended over a single pooled
            vector, i.e. across the batch). Region i < 49 is frontal cell (i // 7, i % 7), region
            49 + j is lateral cell (j // 7, j % 7).

Both models expose the same three pieces, so that decoding (cxrgen.decode) can run one word at a
time for a batch of (study x beam) rows:
    context = model.encode(features)                 tuple of tensors, one row per study
    states  = model.initial_state(context)           list of tensors (the recurrent state)
    logits, states, attention = model.step(previous_tokens, states, context)
`attention` is None for the baseline and (rows, 98) for the attention model.
`model(inputs)` with inputs {"features": ..., "tokens": (N, T) ids starting with <start>} runs the
same computation with teacher forcing and returns the logits (N, T, vocab) of the next words.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from .archives import atomic_path
from .errors import BadInput
from .vocab import PAD_ID
from .whitening import whitening_transform

VIEWS = 2
REGIONS_PER_VIEW = 49  # DenseNet121's 7x7 grid at 224x224
PACKAGE = "cxrgen"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ReportGenerator(keras.Model):
    """What both models share: teacher-forced `call`, building from the config, saving."""

    feature_key: str = ""  # which array of the features files the model reads

    def __init__(self, vocab_size: int, feature_dim: int = 1024, feature_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.feature_dim = int(feature_dim)
        # Dropout on the whitened channels: each study's image is unique, and without it the decoder
        # learns the training reports by their images instead of what the images show.
        self.feature_dropout = float(feature_dropout)
        self.feature_dropout_layer = layers.Dropout(self.feature_dropout, dtype=self.dtype_policy,
                                                    name="feature_dropout")

    def _build_feature_statistics(self):
        """A fixed whitening of the feature channels, learned from the training split, saved with the model.

        DenseNet channels are strongly correlated (with random weights the top 8 principal
        components hold ~80 % of the variance) and small; what tells one finding from another
        sits in the low-variance directions. Whitened (ZCA, lightly regularised), every direction
        starts on the same footing: a linear read-out of the pooled random features then finds
        effusion at AUC 0.99 instead of 0.60 with the top 16 directions. Identity until set.
        """
        self.feature_mean = self.add_weight(shape=(self.feature_dim,), initializer="zeros",
                                            trainable=False, name="feature_mean")
        self.feature_whitening = self.add_weight(shape=(self.feature_dim, self.feature_dim), initializer="identity",
                                                 trainable=False, name="feature_whitening")

    def set_feature_statistics(self, features: np.ndarray) -> None:
        """Whiten with these (training) features (cxrgen.whitening)."""
        mean, matrix = whitening_transform(features)
        self.feature_mean.assign(mean.astype(np.float32))
        self.feature_whitening.assign(matrix.astype(np.float32))

    def standardise(self, features, training=False):
        """(features - mean) @ whitening, on the last axis; then the feature dropout when training."""
        features = ops.cast(features, self.compute_dtype)
        centred = features - ops.cast(self.feature_mean, self.compute_dtype)
        whitened = ops.matmul(centred, ops.cast(self.feature_whitening, self.compute_dtype))
        return self.feature_dropout_layer(whitened, training=training)

    def _layer(self, cls, *args, **kwargs):
        """A sublayer with this model's dtype policy (Keras does not pass it down by itself)."""
        return cls(*args, dtype=self.dtype_policy, **kwargs)

    # The subclasses fill these in.
    def encode(self, features, training=False) -> tuple:
        raise NotImplementedError

    def initial_state(self, context: tuple) -> list:
        raise NotImplementedError

    def step(self, tokens, states: list, context: tuple):
        raise NotImplementedError

    def decode_sequence(self, tokens, states: list, context: tuple, training=False):
        """Teacher forcing: (logits (N, T, V), attention (N, T, regions) or None)."""
        raise NotImplementedError

    def feature_shape(self) -> tuple:
        """The shape of one study's features (without the batch axis)."""
        raise NotImplementedError

    def call(self, inputs, training=False):
        context = self.encode(inputs["features"], training=training)
        logits, _ = self.decode_sequence(inputs["tokens"], self.initial_state(context), context, training)
        return logits

    def teacher_forced_attention(self, inputs):
        """Attention weights (N, T, regions) for the given tokens, or None for a model without."""
        context = self.encode(inputs["features"])
        _, attention = self.decode_sequence(inputs["tokens"], self.initial_state(context), context)
        return attention

    # Every weight's shape follows from the config, so the model builds itself without data:
    # loading a saved file only needs the config to know them.
    def get_build_config(self):
        return {"feature_shape": list(self.feature_shape())}

    def build_from_config(self, config):
        self.build()

    def get_config(self):
        config = super().get_config()
        config.update({"vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                       "feature_dropout": self.feature_dropout})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class BaselineGenerator(ReportGenerator):
    """Pooled features of both views -> image vector -> LSTM (initial state, added to outputs)."""

    feature_key = "pooled"

    def __init__(self, vocab_size: int, feature_dim: int = 1024, embedding_dim: int = 300,
                 units: int = 512, dropout: float = 0.3, **kwargs):
        super().__init__(vocab_size, feature_dim, **kwargs)
        self.embedding_dim, self.units, self.dropout = int(embedding_dim), int(units), float(dropout)
        self.image_dense = self._layer(layers.Dense, units, activation="relu", name="image_dense")
        self.image_dropout = self._layer(layers.Dropout, dropout, name="image_dropout")
        self.init_h = self._layer(layers.Dense, units, activation="tanh", name="init_h")
        self.init_c = self._layer(layers.Dense, units, activation="tanh", name="init_c")
        self.embedding = self._layer(layers.Embedding, vocab_size, embedding_dim, name="embedding")
        self.lstm = self._layer(layers.LSTM, units, return_sequences=True, name="lstm")
        self.merge_dense = self._layer(layers.Dense, units, activation="relu", name="merge_dense")
        self.output_dropout = self._layer(layers.Dropout, dropout, name="output_dropout")
        self.logits_dense = self._layer(layers.Dense, vocab_size, name="logits")

    def feature_shape(self) -> tuple:
        return (VIEWS, self.feature_dim)

    def build(self, input_shape=None):
        self._build_feature_statistics()
        self.image_dense.build((None, VIEWS * self.feature_dim))
        self.init_h.build((None, self.units))
        self.init_c.build((None, self.units))
        self.embedding.build()
        self.lstm.build((None, None, self.embedding_dim))
        self.merge_dense.build((None, self.units))
        self.logits_dense.build((None, self.units))
        self.built = True

    def encode(self, features, training=False) -> tuple:
        features = self.standardise(features, training)
        joined = ops.reshape(features, (-1, VIEWS * self.feature_dim))  # 2 x 1024 -> 2048
        return (self.image_dropout(self.image_dense(joined), training=training),)

    def initial_state(self, context: tuple) -> list:
        (image,) = context
        return [self.init_h(image), self.init_c(image)]

    def _logits(self, hidden, image, training=False):
        merged = self.merge_dense(hidden + image)
        return self.logits_dense(self.output_dropout(merged, training=training))

    def decode_sequence(self, tokens, states, context, training=False):
        (image,) = context
        hidden = self.lstm(self.embedding(tokens), initial_state=list(states), training=training)
        return self._logits(hidden, ops.expand_dims(image, 1), training), None

    def step(self, tokens, states, context):
        (image,) = context
        # The LSTM layer's own cell: the same weights the teacher-forced pass used.
        hidden, states = self.lstm.cell(self.embedding(tokens), list(states))
        return self._logits(hidden, image), list(states), None

    def get_config(self):
        config = super().get_config()
        config.update({"embedding_dim": self.embedding_dim, "units": self.units, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionGenerator(ReportGenerator):
    """Bahdanau attention over the 98 region vectors of both views, GRU or LSTM decoder.

    Per word: weights = softmax(v . tanh(W_k regions + W_q h_prev)) over the 98 regions;
    context = sum(weights * regions); the recurrent cell reads [word embedding, context];
    the word classifier reads tanh(W_o [h, context]).
    """

    feature_key = "spatial"

    def __init__(self, vocab_size: int, feature_dim: int = 1024, regions_per_view: int = REGIONS_PER_VIEW,
                 embedding_dim: int = 300, units: int = 512, projection_dim: int = 256,
                 attention_dim: int = 256, rnn: str = "gru", dropout: float = 0.3, **kwargs):
        super().__init__(vocab_size, feature_dim, **kwargs)
        if rnn not in ("gru", "lstm"):
            raise BadInput("params.yaml", f"model.attention.rnn must be gru or lstm, not {rnn!r}")
        self.regions_per_view, self.embedding_dim = int(regions_per_view), int(embedding_dim)
        self.units = int(units)
        self.projection_dim, self.attention_dim = int(projection_dim), int(attention_dim)
        self.rnn, self.dropout = rnn, float(dropout)
        self.regions = VIEWS * self.regions_per_view
        self.region_projection = self._layer(layers.Dense, projection_dim, activation="relu",
                                             name="region_projection")
        # Which view and which grid cell a region is: the projection alone would not tell the decoder.
        self.region_position = self._layer(layers.Embedding, self.regions, projection_dim, name="region_position")
        self.region_dropout = self._layer(layers.Dropout, dropout, name="region_dropout")
        self.attention_keys = self._layer(layers.Dense, attention_dim, use_bias=False, name="attention_keys")
        self.attention_query = self._layer(layers.Dense, attention_dim, name="attention_query")
        self.attention_score = self._layer(layers.Dense, 1, use_bias=False, name="attention_score")
        self.init_h = self._layer(layers.Dense, units, activation="tanh", name="init_h")
        self.init_c = self._layer(layers.Dense, units, activation="tanh", name="init_c") if rnn == "lstm" else None
        self.embedding = self._layer(layers.Embedding, vocab_size, embedding_dim, name="embedding")
        self.cell = self._layer(layers.GRUCell if rnn == "gru" else layers.LSTMCell, units, name=f"{rnn}_cell")
        self.output_dense = self._layer(layers.Dense, units, activation="tanh", name="output_dense")
        self.output_dropout = self._layer(layers.Dropout, dropout, name="output_dropout")
        self.logits_dense = self._layer(layers.Dense, vocab_size, name="logits")

    def feature_shape(self) -> tuple:
        return (VIEWS, self.regions_per_view, self.feature_dim)

    def build(self, input_shape=None):
        self._build_feature_statistics()
        self.region_projection.build((None, None, self.feature_dim))
        self.region_position.build()
        self.attention_keys.build((None, None, self.projection_dim))
        self.attention_query.build((None, self.units))
        self.attention_score.build((None, None, self.attention_dim))
        self.init_h.build((None, self.projection_dim))
        if self.init_c is not None:
            self.init_c.build((None, self.projection_dim))
        self.embedding.build()
        self.cell.build((None, self.embedding_dim + self.projection_dim))
        self.output_dense.build((None, self.units + self.projection_dim))
        self.logits_dense.build((None, self.units))
        self.built = True

    def encode(self, features, training=False) -> tuple:
        features = self.standardise(features, training)
        regions = ops.reshape(features, (-1, self.regions, self.feature_dim))  # (N, 98, F)
        regions = self.region_projection(regions) + self.region_position(ops.arange(self.regions))
        regions = self.region_dropout(regions, training=training)
        # The keys do not depend on the word: computed once per study, not once per step.
        return regions, self.attention_keys(regions)

    def initial_state(self, context: tuple) -> list:
        regions, _ = context
        mean = ops.mean(regions, axis=1)
        return [self.init_h(mean)] + ([self.init_c(mean)] if self.init_c is not None else [])

    def attend(self, hidden, context):
        """Weights (N, 98) over the regions and the weighted region vector (N, projection_dim)."""
        regions, keys = context
        query = ops.expand_dims(self.attention_query(hidden), 1)
        scores = ops.squeeze(self.attention_score(ops.tanh(keys + query)), -1)
        weights = ops.softmax(scores, axis=-1)
        return weights, ops.sum(ops.expand_dims(weights, -1) * regions, axis=1)

    def _recurrent_step(self, embedded, states, context):
        """(pre-classifier output (N, units), new states, attention weights (N, 98))."""
        weights, attended = self.attend(states[0], context)
        hidden, states = self.cell(ops.concatenate([embedded, attended], axis=-1), list(states))
        output = self.output_dense(ops.concatenate([hidden, attended], axis=-1))
        return output, list(states), weights

    def step(self, tokens, states, context):
        output, states, weights = self._recurrent_step(self.embedding(tokens), states, context)
        return self.logits_dense(output), states, weights

    def decode_sequence(self, tokens, states, context, training=False):
        embedded = tf.transpose(self.embedding(tokens), (1, 0, 2))  # time-major for the scan
        batch = tf.shape(embedded)[1]

        def one_word(carry, word):
            states, _, _ = carry
            output, states, weights = self._recurrent_step(word, list(states), context)
            return tuple(states), output, weights

        # tf.scan carries (states, output, weights) and stacks them over time; only the word
        # classifier (and its dropout) is left for after the loop, on all steps at once.
        dtype = self.compute_dtype
        start = (tuple(states), tf.zeros((batch, self.units), dtype), tf.zeros((batch, self.regions), dtype))
        _, outputs, weights = tf.scan(one_word, embedded, initializer=start)
        outputs = tf.transpose(outputs, (1, 0, 2))
        logits = self.logits_dense(self.output_dropout(outputs, training=training))
        return logits, tf.transpose(weights, (1, 0, 2))

    def get_config(self):
        config = super().get_config()
        config.update({
            "regions_per_view": self.regions_per_view, "embedding_dim": self.embedding_dim,
            "units": self.units, "projection_dim": self.projection_dim,
            "attention_dim": self.attention_dim, "rnn": self.rnn, "dropout": self.dropout,
        })
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedTokenLoss(keras.losses.Loss):
    """Cross-entropy of the next word averaged over the real tokens of the batch (<pad> ignored).

    Keras's own reduction would divide by all positions, padding included, so a batch of short
    reports would look better than a batch of long ones; this divides by the real tokens only.
    (Under a distribution strategy Keras averages the replicas' values.)
    """

    def __init__(self, pad_id: int = PAD_ID, name: str = "masked_token_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = int(pad_id)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        real = ops.not_equal(y_true, self.pad_id)
        per_token = ops.sparse_categorical_crossentropy(
            ops.where(real, y_true, 0), y_pred, from_logits=True)
        real = ops.cast(real, per_token.dtype)
        return ops.sum(per_token * real) / ops.maximum(ops.sum(real), 1.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


MODELS = {"baseline": BaselineGenerator, "attention": AttentionGenerator}

# Sizes as in the case study (LSTM/GRU 512, embedding 300); params.yaml model.<name> overrides them.
DEFAULT_SIZES = {
    "baseline": {"embedding_dim": 300, "units": 512, "dropout": 0.3, "feature_dropout": 0.0},
    "attention": {"embedding_dim": 300, "units": 512, "projection_dim": 256, "attention_dim": 256,
                  "rnn": "gru", "dropout": 0.3, "feature_dropout": 0.0},
}


def build_model(name: str, vocab_size: int, feature_shape: tuple, sizes: dict | None = None,
                dtype: str | None = None) -> ReportGenerator:
    """A built (randomly initialised) model `name` for features of one study shaped `feature_shape`.

    dtype: the layers' dtype policy (None: Keras's default, float32).
    """
    if name not in MODELS:
        raise BadInput("params.yaml", f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    sizes = dict(sizes or {})
    unknown = set(sizes) - set(DEFAULT_SIZES[name])
    if unknown:
        raise BadInput("params.yaml", f"model.{name} has unknown keys {sorted(unknown)}; "
                                      f"known: {sorted(DEFAULT_SIZES[name])}")
    settings = {**DEFAULT_SIZES[name], **sizes}
    cls = MODELS[name]
    expected_rank = 2 if cls is BaselineGenerator else 3
    feature_shape = tuple(int(d) for d in feature_shape)
    if len(feature_shape) != expected_rank or feature_shape[0] != VIEWS:
        raise BadInput("features", f"model {name} needs '{cls.feature_key}' features shaped "
                                   f"{'(2, F)' if expected_rank == 2 else '(2, regions, F)'} per study, "
                                   f"got {feature_shape}")
    if cls is AttentionGenerator:
        settings["regions_per_view"] = feature_shape[1]
    model = cls(vocab_size=vocab_size, feature_dim=feature_shape[-1], name=name, dtype=dtype, **settings)
    model.build()
    return model


def model_name_of(model: ReportGenerator) -> str:
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise TypeError(f"{type(model).__name__} is not one of the report generators")


# ---------------------------------------------------------------------------------------------
# Saving and loading


def standalone_copy(model: ReportGenerator) -> ReportGenerator:
    """The same weights in a fresh, uncompiled model made outside any distribution strategy.

    What gets saved: no optimizer state (not needed to generate reports) and no mirrored variables.
    """
    copy = type(model).from_config(model.get_config())
    copy.build()
    copy.set_weights(model.get_weights())
    return copy


def save_model(model: ReportGenerator, path: str | Path) -> None:
    """Save as `.keras`, atomically, with the same bytes for the same weights.

    Keras stamps the save time into metadata.json and the zip entries; both are fixed here so that
    retraining to the same weights does not make DVC see a new model.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise BadInput(path, "the model file name must end in .keras")
    copy = standalone_copy(model)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / "model.keras"
        copy.save(raw)
        with zipfile.ZipFile(raw) as source, zipfile.ZipFile(tmp, "w") as target:
            for name in sorted(source.namelist()):
                data = source.read(name)
                if name == "metadata.json":
                    metadata = json.loads(data)
                    metadata["date_saved"] = "unrecorded"
                    data = json.dumps(metadata, sort_keys=True).encode()
                entry = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                target.writestr(entry, data)


def load_model(path: str | Path) -> ReportGenerator:
    """A saved report generator (safe mode: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(path, "model file not found (run the train stage)")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, OSError, zipfile.BadZipFile, TypeError) as exc:
        raise BadInput(path, f"not a loadable report generator ({exc})") from None
    if not isinstance(model, ReportGenerator):
        raise BadInput(path, f"holds a {type(model).__name__}, not a cxrgen report generator")
    return model
