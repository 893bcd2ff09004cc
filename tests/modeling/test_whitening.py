"""The whitening the models and the retrieval floor share: what it does to rarely firing channels."""

from __future__ import annotations

import numpy as np
import pytest

from cxrgen.modeling.whitening import SCALE_FLOOR, channel_statistics, whitening_transform


def test_a_channel_that_hardly_ever_fires_is_not_blown_up_in_a_new_study():
    rng = np.random.default_rng(0)
    train = 0.02 + 0.003 * rng.normal(size=(300, 16))
    train[:, 3] = 0.0
    train[0, 3] = 1e-6          # fired (barely) once in the training studies: std ~6e-8
    mean, matrix = whitening_transform(train)
    new = 0.02 + 0.003 * rng.normal(size=(1, 16))
    new[0, 3] = 0.003           # fires as strongly as a typical channel varies
    whitened = ((new - mean) @ matrix)[0]
    # Scaled by its own std (6e-8) the channel would read ~5e4 standardised units, and the eigenvalue
    # floor multiplies a direction with no training variance by up to 1 / sqrt(REGULARISATION) = 10
    # more. With the channel scale floored at SCALE_FLOOR x the median std (3e-4) it reads ~10 units
    # before that: ~100 after, not ~5e5.
    assert np.abs(whitened[3]) < 1.0 / SCALE_FLOOR * 10 * 1.5
    others = np.delete(whitened, 3)
    assert np.abs(others).max() < 10    # the other channels are not swamped by it


def test_ordinary_channels_are_whitened():
    rng = np.random.default_rng(1)
    common = rng.normal(size=(500, 1))
    train = 0.02 + 0.003 * (2.0 * common + 0.5 * rng.normal(size=(500, 8)))
    mean, matrix = whitening_transform(train)
    covariance = np.cov(((train - mean) @ matrix).T)
    assert np.abs(covariance[~np.eye(8, dtype=bool)]).max() < 0.05
    # Near 1; a little less where the eigenvalue floor (1 % of the mean) damps the small directions.
    assert np.all((np.diag(covariance) > 0.8) & (np.diag(covariance) < 1.05))


def test_channel_statistics_are_each_channels_mean_and_floored_scale_over_every_other_axis():
    rng = np.random.default_rng(2)
    regions = rng.normal(3.0, 2.0, size=(600, 2, 5, 6))     # more studies than one chunk
    regions[..., 4] = 7.0                                  # a channel that never varies
    mean, scale = channel_statistics(regions)
    flat = regions.reshape(-1, 6)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(np.delete(scale, 4), np.delete(flat.std(axis=0), 4), rtol=1e-9)
    assert scale[4] == pytest.approx(SCALE_FLOOR * np.median(np.delete(flat.std(axis=0), 4)))
