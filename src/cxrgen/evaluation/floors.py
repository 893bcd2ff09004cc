"""Floors: what a report generator must beat, made from the training split alone.

On IU X-ray one fixed normal report scores like a published model on BLEU (REFERENCE.md), so every
model is shown beside:

`constant`   the one training report that scores the best corpus BLEU-4 on the val split, written
             for every test study (chosen on val, never on test);
`retrieval`  for each test study, the report of the training study whose image features are
             nearest (cosine similarity of the two views' pooled vectors, whitened with the
             training statistics as the models whiten them): a model that only copies the closest
             training case.

Beside them, a ceiling: `label_oracle` gives each test study the report of the training study whose
*true* labels (the human MeSH terms, mapped to the 14 observations) best match the test study's: what
a perfect reader of the image reaches when it can only retrieve a training report.
"""

from __future__ import annotations

import numpy as np

from cxrgen.evaluation import scores
from cxrgen.modeling.whitening import whitening_transform


def constant_report(train_texts: list[str], val_texts: list[str]) -> tuple[str, float]:
    """The training report with the best corpus BLEU-4 on val, and that score.

    Each distinct training report is tried once; ties go to the most frequent, then the
    alphabetically first, so the choice does not depend on row order.
    """
    if not train_texts or not val_texts:
        raise ValueError("the constant floor needs training and val reports")
    counts: dict[str, int] = {}
    for text in train_texts:
        counts[text] = counts.get(text, 0) + 1
    candidates = sorted(counts, key=lambda t: (-counts[t], t))
    best_text, best_score = candidates[0], -1.0
    references = scores.ReferenceNgrams(val_texts)
    for text in candidates:
        score = float(scores.bleu_from_totals(references.totals(text))[3])
        if score > best_score + 1e-12:
            best_text, best_score = text, score
    return best_text, float(best_score)


def _whitened_views(pooled: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 2, F) → (N, 2F), each view whitened and scaled to unit length, so both views weigh the same."""
    views = (np.asarray(pooled, np.float64) - mean) @ matrix
    views /= np.maximum(np.linalg.norm(views, axis=-1, keepdims=True), 1e-12)
    return views.reshape(len(views), -1)


QUERY_CHUNK = 4096   # query studies compared at once
TRAIN_CHUNK = 4096   # training studies whitened and compared at once


def nearest_training_study(train_pooled, query_pooled) -> np.ndarray:
    """Index into the training studies of each query's nearest neighbour (ties: the lowest index).

    Both are (N, 2, F) arrays or sharded arrays of the feature store, read a chunk at a time: the
    similarity is taken block by block (QUERY_CHUNK x TRAIN_CHUNK), keeping each query's best so
    far, so memory does not grow with either split (the training chunks are whitened again for
    each block of queries: one block at IU size)."""
    mean, matrix = whitening_transform(train_pooled)
    nearest = np.zeros(len(query_pooled), np.int64)
    for q_start in range(0, len(query_pooled), QUERY_CHUNK):
        queries = _whitened_views(query_pooled[q_start:q_start + QUERY_CHUNK], mean, matrix)
        best = np.full(len(queries), -np.inf)
        for t_start in range(0, len(train_pooled), TRAIN_CHUNK):
            similarity = queries @ _whitened_views(train_pooled[t_start:t_start + TRAIN_CHUNK], mean, matrix).T
            column = np.argmax(similarity, axis=1)  # argmax returns the first of equal maxima
            value = similarity[np.arange(len(queries)), column]
            better = value > best                   # strictly: an earlier chunk keeps its ties
            best[better], nearest[q_start:q_start + len(queries)][better] = value[better], t_start + column[better]
    return nearest


def retrieval_reports(train_pooled, train_texts: list[str], query_pooled) -> list[str]:
    nearest = nearest_training_study(train_pooled, query_pooled)
    return [train_texts[i] for i in nearest]


def label_oracle_reports(train_labels: np.ndarray, train_texts: list[str], test_labels: np.ndarray) -> list[str]:
    """For each test study, the report of the training study whose (n, 14) bool labels differ from
    its labels in the fewest observations (ties: the lowest index, i.e. the first in training order)."""
    train_labels, test_labels = np.asarray(train_labels, bool), np.asarray(test_labels, bool)
    if len(train_labels) != len(train_texts) or not len(train_texts):
        raise ValueError("the label oracle needs one label row per training report, and some reports")
    chosen = []
    for start in range(0, len(test_labels), 256):   # bounded memory: 256 x n_train x 14 at a time
        block = test_labels[start:start + 256]
        distance = (block[:, None, :] != train_labels[None, :, :]).sum(axis=-1)
        chosen.extend(np.argmin(distance, axis=1).tolist())   # argmin: the first of equal minima
    return [train_texts[i] for i in chosen]
