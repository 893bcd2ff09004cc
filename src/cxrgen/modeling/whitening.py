"""ZCA whitening of feature channels (numpy only): what the models apply to their input, and what
the retrieval floor measures its distances in, so both see the image features the same way."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

REGULARISATION = 0.01  # eigenvalue floor, as a fraction of the mean eigenvalue
CHUNK = 256            # studies read and accumulated at a time
SCALE_FLOOR = 0.1      # channel scale floor, as a fraction of the median channel's standard deviation


def whitening_transform(features: np.ndarray, regularisation: float = REGULARISATION,
                        transform: Callable[[np.ndarray], np.ndarray] | None = None,
                        desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), matrix (F, F)) such that (x - mean) @ matrix is whitened; channel = last axis.

    Channels are standardised first (constant ones keep scale 1), then decorrelated with
    eigenvalues floored at `regularisation` x their mean, so near-empty directions are not blown
    up into noise. Statistics are accumulated in chunks of CHUNK studies (IU-size spatial maps are
    ~1.5 GB as float64): `features` is anything with len() and row slices, an array or a sharded
    feature store array (cxrgen.features.store), which then reads one chunk at a time.
    `transform`, when given, is applied to each chunk first (e.g. the mean over the regions).
    """
    dim = features.shape[-1]
    total, products, count = np.zeros(dim), np.zeros((dim, dim)), 0
    for chunk in _chunks(features, desc, transform):
        total += chunk.sum(axis=0)
        products += chunk.T @ chunk
        count += len(chunk)
    if count == 0:
        raise ValueError("no features to take statistics from")
    mean = total / count
    covariance = products / count - np.outer(mean, mean)
    scale = _floored_scale(np.sqrt(np.maximum(np.diag(covariance), 0.0)))
    values, vectors = np.linalg.eigh(covariance / np.outer(scale, scale))
    values = np.maximum(values, 0.0) + regularisation * max(float(values.mean()), 1e-12)
    zca = (vectors / np.sqrt(values)) @ vectors.T
    return mean, zca / scale[:, None]


def channel_statistics(features: np.ndarray, desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), scale (F,)) of each channel (last axis) over every other axis, read in chunks of
    CHUNK studies as whitening_transform reads them; scales floored as there (SCALE_FLOOR x the
    median channel's), so a channel that hardly ever fires is not blown up where it does."""
    dim = features.shape[-1]
    total, squares, count = np.zeros(dim), np.zeros(dim), 0
    for chunk in _chunks(features, desc):
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
        count += len(chunk)
    if count == 0:
        raise ValueError("no features to take statistics from")
    mean = total / count
    return mean, _floored_scale(np.sqrt(np.maximum(squares / count - np.square(mean), 0.0)))


def _chunks(features, desc: str | None, transform: Callable[[np.ndarray], np.ndarray] | None = None):
    """The rows of `features` (channel = last axis), CHUNK studies at a time, as (rows, F) float64
    arrays; `transform` maps each chunk first. A progress bar named `desc` for 8 chunks or more."""
    dim = features.shape[-1]
    starts = range(0, len(features), CHUNK)
    for start in tqdm(starts, desc=desc, unit=" chunks", file=sys.stderr, mininterval=2,
                      disable=desc is None or len(starts) < 8):
        chunk = np.asarray(features[start:start + CHUNK], np.float32 if transform else np.float64)
        if transform is not None:
            chunk = transform(chunk)
        yield np.asarray(chunk, np.float64).reshape(-1, dim)


def _floored_scale(std: np.ndarray) -> np.ndarray:
    """Channels that hardly ever fire in these studies (random DenseNet weights leave many) must not
    be blown up: one that fires in a new study would then dwarf all the others. Their scale is
    floored at a fraction of the typical channel's."""
    typical = float(np.median(std[std > 0])) if np.any(std > 0) else 1.0
    return np.maximum(std, SCALE_FLOOR * typical)
