"""Training across machines: `train.strategy: multi_worker`.

tf.distribute.MultiWorkerMirroredStrategy, driven by the standard TF_CONFIG environment variable
(the cluster's workers as host:port, and which one this process is). Every worker runs the same
`train` stage command on the same data; each global batch is split between the workers, gradients
are summed across them (Keras's optimizer all-reduces them in the replica context), and every
worker ends with the same weights. Only the chief (worker 0, or the task called "chief") writes
the model, the metrics and the curves.

Keras 3's `model.fit` does not run under this strategy (keras-team/keras#20585), so the epochs run
here: the model's own `train_step` per replica inside `strategy.run`, then the val loss, early
stopping and the best epoch's weights as `fit` with EarlyStopping(restore_best_weights=True) does.
Gradient clipping (`train.clipnorm`) applies to each worker's part of the gradient before the sum,
so with clipping active the steps differ slightly from one process's.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from cxrgen.cluster import cluster_spec, worker_position


def multi_worker_strategy() -> tf.distribute.Strategy:
    cluster_spec()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True outside a cluster; in one, for the chief task or worker 0 when there is no chief."""
    if strategy is not None and not is_multi_worker(strategy):
        return True
    if not os.environ.get("TF_CONFIG"):
        return True
    # The first of the cluster's members (its chief, else worker 0), as the features stage counts them.
    return worker_position("train.strategy is multi_worker")[0] == 0


def fit_distributed(model: keras.Model, strategy: tf.distribute.Strategy, train_set: tf.data.Dataset,
                    val_loss, epochs: int, patience: int, callbacks: list | None = None,
                    verbose: int = 0) -> tuple[dict, int]:
    """Epochs of model.train_step over `train_set` (global batches) split between the workers.

    val_loss(model) -> float: the val loss after each epoch (every worker computes it on the same
    weights, so every worker takes the same early-stopping decision). Returns (history with "loss"
    and "val_loss" per epoch, best epoch, 1-based); the model ends with the best epoch's weights.
    """
    distributed = strategy.experimental_distribute_dataset(train_set)

    @tf.function
    def train_step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["loss"], axis=None)

    history: dict[str, list[float]] = {"loss": [], "val_loss": []}
    best, best_epoch, best_weights, waited = np.inf, 0, None, 0
    for epoch in range(epochs):
        model.reset_metrics()
        loss = None
        for batch in distributed:
            loss = train_step(batch)   # the running mean over this epoch's batches
        logs = {"loss": float(loss) if loss is not None else float("nan"), "val_loss": float(val_loss(model))}
        history["loss"].append(logs["loss"])
        history["val_loss"].append(logs["val_loss"])
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs} - loss: {logs['loss']:.4f} - val_loss: {logs['val_loss']:.4f}",
                  flush=True)
        for callback in callbacks or []:
            callback.on_epoch_end(epoch, logs)
        if logs["val_loss"] < best:
            best, best_epoch, waited = logs["val_loss"], epoch + 1, 0
            best_weights = [np.array(w) for w in model.get_weights()]
        else:
            waited += 1
            if waited >= patience:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history, best_epoch
