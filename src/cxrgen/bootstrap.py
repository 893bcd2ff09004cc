"""Bootstrap resamples of studies, shared by training (the val-loss gain's interval) and evaluation."""

from __future__ import annotations

import numpy as np

from cxrgen.errors import ScoringInputError


def resample_counts(n_studies: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_studies) int64: how often each study is drawn in each bootstrap resample.

    Each resample draws n_studies studies with replacement. The same (n_studies, n_resamples,
    seed) always gives the same matrix, so two systems scored on the same studies share resamples.
    """
    if n_studies < 1 or n_resamples < 1:
        raise ScoringInputError(f"bootstrap needs studies and resamples (got {n_studies}, {n_resamples})")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_studies, size=(n_resamples, n_studies))
    offsets = np.arange(n_resamples)[:, None] * n_studies
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_studies).reshape(
        n_resamples, n_studies
    )
