"""The floors: the constant report is chosen on val by BLEU-4; retrieval copies the nearest image's report."""

from __future__ import annotations

import numpy as np
import pytest

from cxrgen.evaluation import floors, scores
from cxrgen.features.store import FeatureStore, write_store

NORMAL = "the heart is normal . the lungs are clear . no effusion ."
ABNORMAL = "the heart is enlarged . small left effusion ."
ODD = "degenerative changes of the spine ."


def test_constant_report_is_the_best_val_bleu_4_among_training_reports():
    train = [ABNORMAL, NORMAL, ODD, ABNORMAL, ABNORMAL]
    val = [NORMAL, NORMAL, "the heart is normal . the lungs are clear .", ABNORMAL]
    text, score = floors.constant_report(train, val)
    brute = {t: scores.corpus_bleu([t] * len(val), val)[3] for t in set(train)}
    assert text == max(brute, key=brute.get) == NORMAL   # not the most frequent training report
    assert score == pytest.approx(brute[NORMAL], abs=1e-12)


def test_constant_report_does_not_depend_on_row_order():
    train = ["a b c d e f", "a b c d e g", "a b c d e f", "a b c d e g"]   # equal scores
    val = ["a b c d e h"]
    assert floors.constant_report(train, val)[0] == floors.constant_report(train[::-1], val)[0]


def test_constant_report_needs_both_splits():
    with pytest.raises(ValueError):
        floors.constant_report([], [NORMAL])


def test_retrieval_copies_the_nearest_training_image_whatever_the_channel_scales():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 2, 8))
    train = np.concatenate([centres[k] + 0.05 * rng.normal(size=(4, 2, 8)) for k in range(3)])
    texts = [t for t in (NORMAL, ABNORMAL, ODD) for _ in range(4)]
    scale = np.geomspace(1e-3, 1e3, 8)            # channels on very different scales
    query = centres[[2, 0, 1]] + 0.05 * rng.normal(size=(3, 2, 8))
    got = floors.retrieval_reports(train * scale, texts, query * scale)
    assert got == [ODD, NORMAL, ABNORMAL]


def test_retrieval_ties_go_to_the_first_training_study():
    train = np.ones((3, 2, 4))
    train[:, :, 0] = [[1, 2]] * 3
    train[2] = [[5, 0, 0, 0], [0, 5, 0, 0]]
    nearest = floors.nearest_training_study(train, train[:1])
    assert nearest.tolist() == [0]


def test_retrieval_from_the_store_block_by_block_is_the_whole_arrays_answer(tmp_path, monkeypatch):
    """Shards of 5 studies, similarity blocks of 3 queries x 4 training studies: the same nearest
    studies as all at once, ties to the first training study even when it is in an earlier block."""
    rng = np.random.default_rng(1)
    train = rng.normal(size=(23, 2, 8)).astype(np.float16)
    train[17] = train[2]                                    # a tie across blocks and shards
    query = np.concatenate([train[[2, 17, 9]], rng.normal(size=(8, 2, 8)).astype(np.float16)])
    write_store(tmp_path, {"train": {"pooled": train}, "test": {"pooled": query}}, {"pooled": train[:1]},
                shard_studies=5)
    whole = floors.nearest_training_study(train, query)
    assert whole[:3].tolist() == [2, 2, 9]
    monkeypatch.setattr(floors, "QUERY_CHUNK", 3)
    monkeypatch.setattr(floors, "TRAIN_CHUNK", 4)
    store = FeatureStore(tmp_path)
    np.testing.assert_array_equal(floors.nearest_training_study(store.open("train", "pooled"),
                                                                store.open("test", "pooled")), whole)


def test_label_oracle_takes_the_training_report_with_the_closest_labels():
    train_labels = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 0]], bool)
    train_texts = ["normal", "effusion", "effusion and edema", "effusion again"]
    test_labels = np.array([[0, 1, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
    chosen = floors.label_oracle_reports(train_labels, train_texts, test_labels)
    # exact matches first; ties (distance 1 to rows 0 and 1; to rows 2, 1 and 3) go to the first in order
    assert chosen == ["effusion and edema", "effusion", "normal", "effusion and edema"]


def test_label_oracle_needs_one_label_row_per_report():
    with pytest.raises(ValueError):
        floors.label_oracle_reports(np.zeros((2, 3), bool), ["a"], np.zeros((1, 3), bool))
