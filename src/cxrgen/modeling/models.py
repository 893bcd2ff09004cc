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

from cxrgen.data.vocab import PAD_ID
from cxrgen.errors import BadInput
from cxrgen.files import atomic_path
from cxrgen.modeling.whitening import channel_statistics, whitening_transform
from cxrgen.observations import OBSERVATIONS

VIEWS = 2
REGIONS_PER_VIEW = 49  # DenseNet121's 7x7 grid at 224x224
# The finding head: "linear" reads the whitened pooled features; "regions" scores every region with
# a shared MLP and pools the regions' logits by log-sum-exp (a soft maximum), plus a linear read-out
# of the mean region. On IU-size random-weight features the second reads the abnormal findings at
# test F1 .85 against the linear head's .75 (benchmarks/finding_heads.py): the findings are local.
FINDING_HEADS = ("linear", "regions")
REGION_HEAD_DROPOUT = 0.3   # on the standardised channels and on the MLP's hidden units (as probed)
REGION_HEAD_L2 = 1e-4       # L2 penalty on the MLP's first layer (the linear read-out has finding_l2)
PACKAGE = "cxrgen"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Recurrent cells, teacher-forced
#
# While fitting, a cell's input projection (input @ kernel) is computed for every step at once,
# outside the loop over the words, where Keras's cell computes it step by step: one large matrix
# product instead of one small one per word (~15-20 % of a CPU training step). The decoder step
# (decode.py) still calls the cell itself; tests check that both give the same logits.


def cell_input_bias(cell):
    """The bias added to a Keras GRUCell's / LSTMCell's input projection (the GRU's input half)."""
    return cell.bias[0] if isinstance(cell, layers.GRUCell) else cell.bias


def cell_update(cell, projected, states: list, dtype) -> tuple:
    """One step of a Keras GRUCell or LSTMCell, given its input already projected by its kernel
    (input bias included): (output, new states). The arithmetic of Keras's cells as these models
    build them (tanh, sigmoid gates, biases, the GRU's reset gate after the product, no dropout)."""
    h = states[0]
    recurrent = ops.matmul(h, ops.cast(cell.recurrent_kernel, dtype))
    if isinstance(cell, layers.GRUCell):
        recurrent = recurrent + ops.cast(cell.bias[1], dtype)
        x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
        r_z, r_r, r_h = ops.split(recurrent, 3, axis=-1)
        update = ops.sigmoid(x_z + r_z)
        reset = ops.sigmoid(x_r + r_r)
        h = update * h + (1 - update) * ops.tanh(x_h + reset * r_h)
        return h, [h]
    i, f, g, o = ops.split(projected + recurrent, 4, axis=-1)
    c = ops.sigmoid(f) * states[1] + ops.sigmoid(i) * ops.tanh(g)
    h = ops.sigmoid(o) * ops.tanh(c)
    return h, [h, c]


def check_plain_cell(cell) -> None:
    """cell_update repeats Keras's arithmetic for these settings only: refuse any other."""
    plain = (cell.use_bias and cell.dropout == 0 and cell.recurrent_dropout == 0
             and cell.activation is keras.activations.tanh
             and cell.recurrent_activation is keras.activations.sigmoid
             and getattr(cell, "reset_after", True))
    if not plain:
        raise ValueError(f"{cell.name}: cell_update supports Keras's default GRU/LSTM cells only")


class ReportGenerator(keras.Model):
    """What both models share: teacher-forced `call`, building from the config, saving."""

    feature_key: str = ""  # which array of the features files the model reads
    classifier_outputs_per_finding: int = 1

    def __init__(self, vocab_size: int, feature_dim: int = 1024, feature_dropout: float = 0.0,
                 findings: int = 0, finding_weight: float = 1.0, finding_l2: float = 0.0,
                 finding_folds: int = 1, finding_head: str = "linear", finding_hidden: int = 256,
                 regions_per_view: int = REGIONS_PER_VIEW, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.feature_dim = int(feature_dim)
        self.regions_per_view = int(regions_per_view)
        self.regions = VIEWS * self.regions_per_view
        # The finding head: a linear classifier of the findings (the labeler's observations of the
        # training reports) on both views' whitened pooled features. Its probabilities, with the
        # gradient stopped, are one more input of the decoder: the report loss cannot turn them
        # into a key to memorise training reports by, so they carry only what the image shows.
        # findings = 0: no head (the image reaches the decoder through the features alone).
        self.findings, self.finding_weight = int(findings), float(finding_weight)
        # A regularised logistic regression: from zero weights, with an L2 penalty, so that its
        # probabilities on the training studies are not much surer than on new ones (the decoder
        # learns how far to trust them from the training studies).
        self.finding_l2 = float(finding_l2)
        # Cross-fitting (stacking without leakage). A head fitted on a few hundred studies knows
        # them by heart (AUC 1.0 on them, ~.75 on new ones); a decoder trained on such sure
        # probabilities trusts them too much on new studies and gains nothing from the image. With
        # K folds there are K heads, head k fitted on the training studies outside fold k; while
        # fitting, the decoder reads for each study the head that never saw it, so it learns how
        # far out-of-sample probabilities can be trusted. Elsewhere it reads the mean of the heads'
        # logits (one linear classifier). 1 = one head, read as it is.
        self.finding_heads_frozen = False
        self.finding_folds = int(finding_folds)
        if self.finding_folds < 1:
            raise BadInput("params.yaml", f"finding_folds must be a positive integer, not {finding_folds!r}")
        if finding_head not in FINDING_HEADS:
            raise BadInput("params.yaml", f"finding_head must be one of {list(FINDING_HEADS)}, not {finding_head!r}")
        if int(finding_hidden) < 1:
            raise BadInput("params.yaml", f"finding_hidden must be a positive integer, not {finding_hidden!r}")
        self.finding_head, self.finding_hidden = finding_head, int(finding_hidden)
        self.region_head = bool(self.findings) and finding_head == "regions"
        # Which features the model reads: a region head needs the regions, whatever the decoder reads.
        self.feature_key = "spatial" if self.region_head else type(self).feature_key
        # Linear head: one weight vector per finding and view, reading the two views' whitened
        # features (the baseline: both pooled vectors joined; the attention model: each region, per
        # view). Region head: the linear read-out of the standardised mean region of both views.
        outputs = self.findings * self.finding_folds * (1 if self.region_head else self.classifier_outputs_per_finding)
        self.finding_classifier = (layers.Dense(outputs, kernel_initializer="zeros", dtype=self.dtype_policy,
                                                name="finding_classifier") if self.findings else None)
        if self.region_head:
            # Each fold's head has its own hidden units (one Dense of folds x hidden units), so no
            # head learns from the studies of its fold through a shared layer.
            self.finding_region_hidden = layers.Dense(self.finding_folds * self.finding_hidden, activation="relu",
                                                      dtype=self.dtype_policy, name="finding_region_hidden")
            self.finding_region_dropout = layers.Dropout(REGION_HEAD_DROPOUT, dtype=self.dtype_policy,
                                                         name="finding_region_dropout")
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

    def set_feature_statistics(self, features: np.ndarray, transform=None) -> None:
        """Whiten with these (training) features (cxrgen.whitening), read a chunk at a time
        (an array, or a sharded array of the feature store); `transform` maps each chunk first."""
        mean, matrix = whitening_transform(features, transform=transform, desc="whitening statistics")
        self.feature_mean.assign(mean.astype(np.float32))
        self.feature_whitening.assign(matrix.astype(np.float32))
        if self.region_head:
            mean, scale = channel_statistics(features, desc="region statistics")
            self.region_mean.assign(mean.astype(np.float32))
            self.region_scale.assign(scale.astype(np.float32))

    def whiten(self, features):
        """(features - mean) @ whitening, on the last axis."""
        features = ops.cast(features, self.compute_dtype)
        centred = features - ops.cast(self.feature_mean, self.compute_dtype)
        return ops.matmul(centred, ops.cast(self.feature_whitening, self.compute_dtype))

    def standardise(self, features, training=False):
        """Whitened features, then the feature dropout when training."""
        return self.feature_dropout_layer(self.whiten(features), training=training)

    def _build_finding_head(self):
        if self.region_head:
            # Per-channel standardisation of the regions (training statistics; identity until set).
            self.region_mean = self.add_weight(shape=(self.feature_dim,), initializer="zeros",
                                               trainable=False, name="region_mean")
            self.region_scale = self.add_weight(shape=(self.feature_dim,), initializer="ones",
                                                trainable=False, name="region_scale")
            self.finding_region_hidden.build((None, self.feature_dim))
            self.finding_region_kernel = self.add_weight(
                shape=(self.finding_folds, self.finding_hidden, self.findings), initializer="glorot_uniform",
                name="finding_region_kernel")
            self.finding_region_bias = self.add_weight(shape=(self.finding_folds, self.findings),
                                                       initializer="zeros", name="finding_region_bias")
            self.finding_classifier.build((None, self.feature_dim))
        elif self.finding_classifier is not None:
            self.finding_classifier.build((None, VIEWS * self.feature_dim // self.classifier_outputs_per_finding))
        if self.finding_classifier is not None:
            # Per finding, the probability above which the head's reading counts as "present":
            # 0.5 until training calibrates it on the val studies (cxrgen.modeling.train), saved
            # with the model so that every decoder of it reads the findings the same way.
            self.finding_thresholds = self.add_weight(shape=(self.findings,), initializer=keras.initializers.Constant(0.5),
                                                      trainable=False, name="finding_thresholds")

    def set_finding_thresholds(self, thresholds) -> None:
        thresholds = np.asarray(thresholds, np.float32)
        if thresholds.shape != (self.findings,) or not np.all((thresholds > 0) & (thresholds < 1)):
            raise ValueError(f"finding thresholds must be {self.findings} values in (0, 1), not {thresholds!r}")
        self.finding_thresholds.assign(thresholds)

    def decision_thresholds(self) -> np.ndarray | None:
        """(findings,) the calibrated probability thresholds of the finding head, or None without a head."""
        if self.finding_classifier is None:
            return None
        return keras.ops.convert_to_numpy(self.finding_thresholds).astype(np.float64)

    def finding_probabilities(self, features):
        """(N, findings) probabilities of the finding head for raw features, or None without a head."""
        if self.finding_classifier is None:
            return None
        return ops.sigmoid(self.select_folds(self.fold_finding_logits(features)))

    def fold_finding_logits(self, features, training=False):
        """Every head's finding logits (N, folds, findings) for raw features. A region head is run
        alone; a linear head is read off the encoder (the decoder's context comes with it, cheap)."""
        if self.region_head:
            return self.region_finding_logits(features, training)[0]
        return self._encode(features, training)[0]

    def select_folds(self, scores, folds=None):
        """Scores (N, ..., folds, findings) -> (N, ..., findings): for study i, the head of fold
        folds[i] (the one fitted without it); without folds, the mean over the heads."""
        if folds is None or self.finding_folds == 1:
            return ops.mean(scores, axis=-2)
        pick = ops.one_hot(ops.cast(folds, "int32"), self.finding_folds, dtype=scores.dtype)   # (N, K)
        pick = ops.reshape(pick, (-1,) + (1,) * (len(scores.shape) - 3) + (self.finding_folds, 1))
        return ops.sum(scores * pick, axis=-2)

    def finding_head_loss(self, fold_logits, targets, folds=None):
        """Mean binary cross-entropy of the heads (N, folds, findings), each head on the studies
        outside its fold, plus the L2 penalty; without folds every head fits every study. In float32
        whatever the compute dtype (the penalties are of the float32 weights)."""
        fold_logits = ops.cast(fold_logits, "float32")
        targets = ops.broadcast_to(ops.expand_dims(ops.cast(targets, fold_logits.dtype), 1), ops.shape(fold_logits))
        per_finding = ops.binary_crossentropy(targets, fold_logits, from_logits=True)
        if folds is None or self.finding_folds == 1:
            fit = ops.mean(per_finding)
        else:
            outside = 1.0 - ops.one_hot(ops.cast(folds, "int32"), self.finding_folds, dtype=fold_logits.dtype)
            fit = ops.sum(per_finding * ops.expand_dims(outside, -1)) / (ops.sum(outside) * self.findings)
        penalty = self.finding_l2 * ops.sum(ops.square(ops.cast(self.finding_classifier.kernel, "float32")))
        if self.region_head:
            penalty = penalty + REGION_HEAD_L2 * ops.sum(ops.square(ops.cast(self.finding_region_hidden.kernel, "float32")))
        return fit + penalty

    def region_finding_logits(self, features, training=False) -> tuple:
        """The region head on raw spatial features (N, 2, regions_per_view, F): (the study's
        logits (N, folds, findings), each region's logits (N, 2 x regions_per_view, folds, findings)).

        Each region's standardised channels go through the fold's MLP to one logit per finding; the
        study's logit is the log-sum-exp of its regions' (minus log(regions): a soft maximum that
        averages when all regions agree) plus a linear read-out of the mean region. A finding seen
        in two or three regions of 98 then counts, where the mean over the regions dilutes it.
        """
        dtype = self.compute_dtype
        regions = ops.reshape(ops.cast(features, dtype), (-1, self.regions, self.feature_dim))
        regions = (regions - ops.cast(self.region_mean, dtype)) / ops.cast(self.region_scale, dtype)
        regions = self.finding_region_dropout(regions, training=training)
        hidden = self.finding_region_hidden(regions)                                   # (N, R, folds x H)
        hidden = ops.reshape(hidden, (-1, self.regions, self.finding_folds, self.finding_hidden))
        hidden = self.finding_region_dropout(hidden, training=training)
        region_logits = (ops.einsum("nrkh,khf->nrkf", hidden, ops.cast(self.finding_region_kernel, dtype))
                         + ops.cast(self.finding_region_bias, dtype))
        pooled = ops.logsumexp(region_logits, axis=1) - float(np.log(self.regions))
        linear = self.finding_classifier(ops.mean(regions, axis=1))
        linear = ops.reshape(linear, (-1, self.finding_folds, self.findings))
        return pooled + linear, region_logits

    def finding_head_variables(self) -> list:
        """The finding heads' trainable weights (empty without a head)."""
        if self.finding_classifier is None:
            return []
        head = list(self.finding_classifier.weights)
        if self.region_head:
            head += [*self.finding_region_hidden.weights, self.finding_region_kernel, self.finding_region_bias]
        return head

    def freeze_finding_heads(self) -> None:
        """Fitted heads stay as they are while the decoder trains (cxrgen.modeling.train fits them
        first): their weights stop being trainable and `call` adds no head loss."""
        for variable in self.finding_head_variables():
            variable.trainable = False
        self.finding_heads_frozen = True

    def _finding_input(self, logits):
        """What the decoder reads of the finding head: probabilities, no gradient back into it."""
        return ops.stop_gradient(ops.sigmoid(logits))

    @property
    def attended_regions(self) -> int | None:
        """How many regions the decoder's attention weights cover each word, None without attention."""
        return None

    def _layer(self, cls, *args, **kwargs):
        """A sublayer with this model's dtype policy (Keras does not pass it down by itself)."""
        return cls(*args, dtype=self.dtype_policy, **kwargs)

    def encode(self, features, training=False) -> tuple:
        """The decoder's view of a batch of studies: a tuple of tensors, one row per study."""
        return self._encode(features, training)[1]

    # The subclasses fill these in.
    def _encode(self, features, training=False, folds=None) -> tuple:
        """(every head's finding logits (N, folds, findings) or None, context tuple); folds: each
        study's fold while fitting (see select_folds), else None."""
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
        folds = inputs.get("folds") if training else None
        fold_logits, context = self._encode(inputs["features"], training=training, folds=folds)
        if training and fold_logits is not None and "findings" in inputs and not self.finding_heads_frozen:
            # Only while fitting: Keras's val_loss (early stopping) stays the report loss alone.
            # float32 whatever the compute dtype: Keras sums it with the (float32) report loss.
            head_loss = self.finding_weight * self.finding_head_loss(fold_logits, inputs["findings"], folds)
            self.add_loss(ops.cast(head_loss, "float32"))
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
                       "feature_dropout": self.feature_dropout, "findings": self.findings,
                       "finding_weight": self.finding_weight, "finding_l2": self.finding_l2,
                       "finding_folds": self.finding_folds, "finding_head": self.finding_head,
                       "finding_hidden": self.finding_hidden, "regions_per_view": self.regions_per_view})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class BaselineGenerator(ReportGenerator):
    """Pooled features of both views -> image vector -> LSTM (initial state, added to outputs)."""

    feature_key = "pooled"

    def __init__(self, vocab_size: int, feature_dim: int = 1024, embedding_dim: int = 300,
                 units: int = 512, dropout: float = 0.3, direct_features: bool = True, **kwargs):
        super().__init__(vocab_size, feature_dim, **kwargs)
        self.embedding_dim, self.units, self.dropout = int(embedding_dim), int(units), float(dropout)
        # False: the image vector is made from the finding head's probabilities alone.
        self.direct_features = bool(direct_features)
        if not self.direct_features and not self.findings:
            raise BadInput("params.yaml", "model.baseline.direct_features: false needs finding_weight > 0 "
                                          "(the image would not reach the decoder at all)")
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
        # With a region head it reads the regions, and pools them itself for the decoder.
        return (VIEWS, self.regions_per_view, self.feature_dim) if self.region_head else (VIEWS, self.feature_dim)

    def set_feature_statistics(self, features: np.ndarray, transform=None) -> None:
        """The whitening of the views' pooled vectors (with a region head: their mean regions)."""
        super().set_feature_statistics(features, transform=(lambda chunk: chunk.mean(axis=2))
                                       if self.region_head else None)

    def finding_logits(self, pooled):
        """(N, folds, findings) logits from the whitened pooled features of both views (N, 2, F)."""
        scores = self.finding_classifier(ops.reshape(pooled, (-1, VIEWS * self.feature_dim)))
        return ops.reshape(scores, (-1, self.finding_folds, self.findings))

    def build(self, input_shape=None):
        self._build_feature_statistics()
        self._build_finding_head()
        direct = VIEWS * self.feature_dim if self.direct_features else 0
        self.image_dense.build((None, direct + self.findings))
        self.init_h.build((None, self.units))
        self.init_c.build((None, self.units))
        self.embedding.build()
        self.lstm.build((None, None, self.embedding_dim))
        check_plain_cell(self.lstm.cell)
        self.merge_dense.build((None, self.units))
        self.logits_dense.build((None, self.units))
        self.built = True

    def _encode(self, features, training=False, folds=None) -> tuple:
        finding_logits = None
        if self.region_head:
            finding_logits, _ = self.region_finding_logits(features, training)
            features = ops.mean(ops.cast(features, self.compute_dtype), axis=2)   # each view's pooled vector
        features = self.standardise(features, training)
        joined = ops.reshape(features, (-1, VIEWS * self.feature_dim))  # 2 x 1024 -> 2048
        parts = [joined] if self.direct_features else []
        if self.finding_classifier is not None:
            if finding_logits is None:
                finding_logits = self.finding_logits(features)
            parts.append(self._finding_input(self.select_folds(finding_logits, folds)))
        joined = ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        return finding_logits, (self.image_dropout(self.image_dense(joined), training=training),)

    def initial_state(self, context: tuple) -> list:
        (image,) = context
        return [self.init_h(image), self.init_c(image)]

    def _logits(self, hidden, image, training=False):
        merged = self.merge_dense(hidden + image)
        return self.logits_dense(self.output_dropout(merged, training=training))

    def decode_sequence(self, tokens, states, context, training=False):
        (image,) = context
        cell, dtype = self.lstm.cell, self.compute_dtype
        # The LSTM layer's weights, run by cell_update: every word's input projection at once.
        projected = (ops.matmul(self.embedding(tokens), ops.cast(cell.kernel, dtype))
                     + ops.cast(cell_input_bias(cell), dtype))

        def one_word(carry, word):
            return tuple(cell_update(cell, word, list(carry), dtype)[1])

        steps = tf.scan(one_word, tf.transpose(projected, (1, 0, 2)), initializer=tuple(states))
        hidden = tf.transpose(steps[0], (1, 0, 2))
        return self._logits(hidden, ops.expand_dims(image, 1), training), None

    def step(self, tokens, states, context):
        (image,) = context
        # The LSTM layer's own cell: the same weights the teacher-forced pass used.
        hidden, states = self.lstm.cell(self.embedding(tokens), list(states))
        return self._logits(hidden, image), list(states), None

    def get_config(self):
        config = super().get_config()
        config.update({"embedding_dim": self.embedding_dim, "units": self.units, "dropout": self.dropout,
                       "direct_features": self.direct_features})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionGenerator(ReportGenerator):
    """Bahdanau attention over the 98 region vectors of both views, GRU or LSTM decoder.

    Per word: weights = softmax(v . tanh(W_k regions + W_q h_prev)) over the 98 regions;
    context = sum(weights * regions); the recurrent cell reads [word embedding, context];
    the word classifier reads tanh(W_o [h, context]).
    """

    feature_key = "spatial"
    classifier_outputs_per_finding = VIEWS   # each region is scored by its own view's weights

    def __init__(self, vocab_size: int, feature_dim: int = 1024, embedding_dim: int = 300, units: int = 512,
                 projection_dim: int = 256, attention_dim: int = 256, rnn: str = "gru", dropout: float = 0.3,
                 region_input: str = "features", **kwargs):
        super().__init__(vocab_size, feature_dim, **kwargs)
        if rnn not in ("gru", "lstm"):
            raise BadInput("params.yaml", f"model.attention.rnn must be gru or lstm, not {rnn!r}")
        # What a region vector is made of: its whitened DenseNet features, or ("findings") what the
        # finding head reads in that region alone (a probability per finding; class activation maps).
        if region_input not in ("features", "findings"):
            raise BadInput("params.yaml", f"model.attention.region_input must be features or findings, "
                                          f"not {region_input!r}")
        if region_input == "findings" and not self.findings:
            raise BadInput("params.yaml", "model.attention.region_input: findings needs finding_weight > 0")
        self.region_input = region_input
        self.embedding_dim, self.units = int(embedding_dim), int(units)
        self.projection_dim, self.attention_dim = int(projection_dim), int(attention_dim)
        self.rnn, self.dropout = rnn, float(dropout)
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

    @property
    def attended_regions(self) -> int | None:
        return self.regions

    def build(self, input_shape=None):
        self._build_feature_statistics()
        self.region_projection.build((None, None, self.findings if self.region_input == "findings" else self.feature_dim))
        self.region_position.build()
        self.attention_keys.build((None, None, self.projection_dim))
        self.attention_query.build((None, self.units))
        self.attention_score.build((None, None, self.attention_dim))
        self._build_finding_head()
        summary = self.projection_dim + self.findings  # mean region vector, finding probabilities
        self.init_h.build((None, summary))
        if self.init_c is not None:
            self.init_c.build((None, summary))
        self.embedding.build()
        self.cell.build((None, self.embedding_dim + self.projection_dim + self.findings))
        check_plain_cell(self.cell)
        self.output_dense.build((None, self.units + self.projection_dim + self.findings))
        self.logits_dense.build((None, self.units))
        self.built = True

    def set_feature_statistics(self, features: np.ndarray, transform=None) -> None:
        """Region vectors of features: whitened with the regions' statistics. Region vectors of
        findings: whitened with the statistics of the views' pooled vectors (each view's mean
        region), the vectors the finding head classifies; its per-region evidence then averages to
        a classifier of the pooled vectors, as the baseline's."""
        # Chunk by chunk (whitening_transform reads the features a chunk at a time): the views'
        # pooled vectors of the whole split are never held at once.
        super().set_feature_statistics(features, transform=(lambda chunk: chunk.mean(axis=2))
                                       if self.region_input == "findings" else None)

    def view_scores(self, whitened):
        """Whitened features (N, 2, [49,] F) -> finding scores (N, 2, [49,] folds, findings), each
        view's features scored by that view's weights (of each fold's head). On the views' mean
        regions, summed over the two views, these are the study's finding logits; on single
        regions, what each region shows."""
        return self._own_view_scores(self.finding_classifier(whitened))

    def raw_view_scores(self, features):
        """view_scores(whiten(features)) without whitening every region: whitening and the head are
        both linear, so (x - mean) @ (whitening @ kernel) + bias gives the same scores (up to
        rounding) for a tenth of the work (F x outputs per region instead of F x F)."""
        dtype = self.compute_dtype
        centred = ops.cast(features, dtype) - ops.cast(self.feature_mean, dtype)
        folded = ops.matmul(ops.cast(self.feature_whitening, dtype), ops.cast(self.finding_classifier.kernel, dtype))
        return self._own_view_scores(ops.matmul(centred, folded) + ops.cast(self.finding_classifier.bias, dtype))

    def _own_view_scores(self, scores):
        """(N, 2, [49,] folds x 2 x findings) -> (N, 2, [49,] folds, findings): each view by its own weights."""
        scores = tf.reshape(scores, tf.concat([tf.shape(scores)[:-1], [self.finding_folds, VIEWS, self.findings]], 0))
        frontal = scores[:, 0, ..., 0, :]
        lateral = scores[:, 1, ..., 1, :]
        return ops.stack([frontal, lateral], axis=1)

    def _encode(self, features, training=False, folds=None) -> tuple:
        finding_logits = None
        if self.region_head:
            finding_logits, region_logits = self.region_finding_logits(features, training)
            findings = self._finding_input(self.select_folds(finding_logits, folds))
        elif self.finding_classifier is not None:
            # The head classifies the views' pooled vectors, with the feature dropout at that level
            # (on each region it would drown the pooled signal in noise). Whitening is linear: the
            # mean of the whitened regions is the whitened mean region.
            pooled = self.feature_dropout_layer(self.whiten(ops.mean(ops.cast(features, self.compute_dtype), axis=2)), training=training)
            finding_logits = ops.sum(self.view_scores(pooled), axis=1)           # (N, folds, findings)
            findings = self._finding_input(self.select_folds(finding_logits, folds))
        if self.region_input == "findings":
            # Each region as the head sees it alone: the probability of each finding from that
            # region's features (bounded, so an image unlike the training ones cannot saturate the
            # decoder). No gradient: the report loss cannot reshape the evidence.
            region_scores = self.select_folds(ops.stop_gradient(
                region_logits if self.region_head else self.raw_view_scores(features)), folds)
            content = ops.sigmoid(ops.reshape(region_scores, (-1, self.regions, self.findings)))
        else:
            features = self.feature_dropout_layer(self.whiten(features), training=training)
            content = ops.reshape(features, (-1, self.regions, self.feature_dim))  # (N, 98, F)
        regions = self.region_projection(content) + self.region_position(ops.arange(self.regions))
        regions = self.region_dropout(regions, training=training)
        if finding_logits is None:  # (N, 0): the decoder's inputs keep one layout with or without a head
            findings = ops.zeros((ops.shape(regions)[0], 0), regions.dtype)
        # The keys do not depend on the word: computed once per study, not once per step.
        return finding_logits, (regions, self.attention_keys(regions), findings)

    def initial_state(self, context: tuple) -> list:
        regions, _, findings = context
        summary = ops.concatenate([ops.mean(regions, axis=1), findings], axis=-1)
        return [self.init_h(summary)] + ([self.init_c(summary)] if self.init_c is not None else [])

    def attend(self, hidden, context):
        """Weights (N, 98) over the regions and the weighted region vector (N, projection_dim)."""
        regions, keys, _ = context
        query = ops.expand_dims(self.attention_query(hidden), 1)
        scores = ops.squeeze(self.attention_score(ops.tanh(keys + query)), -1)
        weights = ops.softmax(scores, axis=-1)
        return weights, ops.sum(ops.expand_dims(weights, -1) * regions, axis=1)

    def _recurrent_step(self, embedded, states, context):
        """(pre-classifier output (N, units), new states, attention weights (N, 98))."""
        weights, attended = self.attend(states[0], context)
        findings = context[2]
        hidden, states = self.cell(ops.concatenate([embedded, attended, findings], axis=-1), list(states))
        output = self.output_dense(ops.concatenate([hidden, attended, findings], axis=-1))
        return output, list(states), weights

    def step(self, tokens, states, context):
        output, states, weights = self._recurrent_step(self.embedding(tokens), states, context)
        return self.logits_dense(output), states, weights

    def decode_sequence(self, tokens, states, context, training=False):
        _, _, findings = context
        cell, dtype = self.cell, self.compute_dtype
        kernel = ops.cast(cell.kernel, dtype)
        words, regions_end = self.embedding_dim, self.embedding_dim + self.projection_dim
        # The cell reads [word, attended regions, findings]: the words' and the findings' parts of
        # its input projection do not depend on the previous step, so they are computed for every
        # step at once; only the attended regions' part is left inside the loop.
        fixed = ops.cast(cell_input_bias(cell), dtype)
        if self.findings:   # (oneDNN has no product over an empty axis)
            fixed = fixed + ops.matmul(findings, kernel[regions_end:])
            fixed = ops.expand_dims(fixed, 1)
        projected = ops.matmul(self.embedding(tokens), kernel[:words]) + fixed
        attended_kernel = kernel[words:regions_end]
        batch = tf.shape(projected)[0]

        def one_word(carry, word):
            states, _, _ = carry
            weights, attended = self.attend(states[0], context)
            _, states = cell_update(cell, word + ops.matmul(attended, attended_kernel), list(states), dtype)
            return tuple(states), attended, weights

        # tf.scan carries (states, attended regions, weights) and stacks them over time; the output
        # layer and the word classifier (and its dropout) run after the loop, on all steps at once.
        start = (tuple(states), tf.zeros((batch, self.projection_dim), dtype), tf.zeros((batch, self.regions), dtype))
        (hidden, *_), attended, weights = tf.scan(one_word, tf.transpose(projected, (1, 0, 2)), initializer=start)
        hidden, attended = tf.transpose(hidden, (1, 0, 2)), tf.transpose(attended, (1, 0, 2))
        steps = tf.shape(hidden)[1]
        findings = tf.repeat(ops.expand_dims(findings, 1), steps, axis=1)
        outputs = self.output_dense(ops.concatenate([hidden, attended, findings], axis=-1))
        logits = self.logits_dense(self.output_dropout(outputs, training=training))
        return logits, tf.transpose(weights, (1, 0, 2))

    def get_config(self):
        config = super().get_config()
        config.update({
            "regions_per_view": self.regions_per_view, "embedding_dim": self.embedding_dim,
            "units": self.units, "projection_dim": self.projection_dim,
            "attention_dim": self.attention_dim, "rnn": self.rnn, "dropout": self.dropout,
            "region_input": self.region_input,
        })
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedTokenLoss(keras.losses.Loss):
    """Cross-entropy of the next word averaged over the real tokens of the batch (<pad> ignored).

    Keras's own reduction would divide by all positions, padding included, so a batch of short
    reports would look better than a batch of long ones; this divides by the real tokens only.
    (Under a distribution strategy Keras averages the replicas' values.) Sample weights, all equal
    within a batch, scale the batch's value (length-grouped training batches, see make_dataset).
    """

    def __init__(self, pad_id: int = PAD_ID, name: str = "masked_token_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = int(pad_id)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        real = ops.not_equal(y_true, self.pad_id)
        per_token = ops.sparse_categorical_crossentropy(   # in float32 under mixed precision too
            ops.where(real, y_true, 0), ops.cast(y_pred, "float32"), from_logits=True)
        real = ops.cast(real, per_token.dtype)
        return ops.sum(per_token * real) / ops.maximum(ops.sum(real), 1.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


MODELS = {"baseline": BaselineGenerator, "attention": AttentionGenerator}

# Sizes as in the case study (LSTM/GRU 512, embedding 300); params.yaml model.<name> overrides them.
DEFAULT_SIZES = {
    "baseline": {"embedding_dim": 300, "units": 512, "dropout": 0.3, "feature_dropout": 0.0,
                 "finding_weight": 0.0, "finding_l2": 0.0, "finding_folds": 1, "finding_head": "linear",
                 "finding_hidden": 256, "direct_features": True},
    "attention": {"embedding_dim": 300, "units": 512, "projection_dim": 256, "attention_dim": 256,
                  "rnn": "gru", "dropout": 0.3, "feature_dropout": 0.0, "finding_weight": 0.0, "finding_l2": 0.0,
                  "finding_folds": 1, "finding_head": "linear", "finding_hidden": 256, "region_input": "features"},
}


def feature_key_for(name: str, sizes: dict | None = None) -> str:
    """Which features model `name` with these params.yaml sizes reads: "spatial" (the regions) or "pooled"."""
    if name not in MODELS:
        raise BadInput("params.yaml", f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    settings = {**DEFAULT_SIZES[name], **(sizes or {})}
    region_head = settings["finding_head"] == "regions" and float(settings["finding_weight"]) > 0
    return "spatial" if region_head else MODELS[name].feature_key


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
    feature_key = feature_key_for(name, settings)
    expected_rank = 3 if feature_key == "spatial" else 2
    feature_shape = tuple(int(d) for d in feature_shape)
    if len(feature_shape) != expected_rank or feature_shape[0] != VIEWS:
        raise BadInput("features", f"model {name} needs '{feature_key}' features shaped "
                                   f"{'(2, F)' if expected_rank == 2 else '(2, regions, F)'} per study, "
                                   f"got {feature_shape}")
    if expected_rank == 3:
        settings["regions_per_view"] = feature_shape[1]
    # finding_weight > 0: a finding head over the labeler's observations, trained with that weight.
    settings["findings"] = len(OBSERVATIONS) if float(settings["finding_weight"]) > 0 else 0
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
    """The same weights in a fresh, uncompiled float32 model made outside any distribution strategy.

    What gets saved: no optimizer state (not needed to generate reports), no mirrored variables,
    and float32 layers whatever the training precision (mixed precision keeps float32 weights;
    decoding on a CPU in float16 would be slow or unsupported).
    """
    copy = type(model).from_config({**model.get_config(), "dtype": "float32"})
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
