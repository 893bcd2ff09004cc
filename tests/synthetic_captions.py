"""Small learnable data for the model, decoding and training tests.

Each study's report states two facts, each readable from ONE view's region vectors:
    "heart is normal|enlarged ."   <- regions 20-24 of the frontal view
    "lungs are clear|hazy ."       <- regions 30-34 of the lateral view
and, for a random half of the studies, "no effusion ." (not in the images: only a language model
can guess it, 50/50). A model that reads the images beats its blank-image twin; one that does not
cannot. Pooled features are the region mean, as global average pooling makes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.data.text import tokenize
from cxrgen.data.vocab import build_vocab
from cxrgen.features.store import write_store
from cxrgen.tables import write_parquet

FEATURE_DIM = 16
SIZES = {
    "baseline": {"embedding_dim": 8, "units": 16, "dropout": 0.0},
    "attention": {"embedding_dim": 8, "units": 16, "projection_dim": 8, "attention_dim": 8, "dropout": 0.0},
}


def make_studies(count: int, rng: np.random.Generator, feature_dim: int = FEATURE_DIM):
    """(spatial features (count, 2, 49, feature_dim) float32, report texts)."""
    directions = np.random.default_rng(12345).normal(size=(2, feature_dim))  # the same for every split
    heart, lungs, effusion = (rng.integers(0, 2, count) for _ in range(3))
    spatial = rng.normal(0.0, 0.5, (count, 2, 49, feature_dim))
    spatial[:, 0, 20:25] += np.where(heart, 2.0, -2.0)[:, None, None] * directions[0]
    spatial[:, 1, 30:35] += np.where(lungs, 2.0, -2.0)[:, None, None] * directions[1]
    spatial = np.maximum(spatial, 0.0)  # post-ReLU, like DenseNet's last block
    texts = [
        f"heart is {'enlarged' if h else 'normal'} . lungs are {'hazy' if lung else 'clear'} ."
        + (" no effusion ." if e else "")
        for h, lung, e in zip(heart, lungs, effusion)
    ]
    return spatial.astype(np.float32), texts


def pooled(spatial: np.ndarray) -> np.ndarray:
    return spatial.mean(axis=2)


def write_dataset(root: Path, counts: dict[str, int], seed: int = 0, with_test: bool = False,
                  shard_studies: int = 4096) -> tuple[Path, Path]:
    """data/prepared (studies.parquet, vocab.json) and data/features (the feature store: shards of
    `shard_studies` per split, the blank control, features.json) as the prepare and features stages write them. No test features unless asked:
    training must not need them."""
    rng = np.random.default_rng(seed)
    prepared, features = root / "prepared", root / "features"
    prepared.mkdir(parents=True, exist_ok=True)
    features.mkdir(parents=True, exist_ok=True)
    rows, arrays = [], {}
    for split, count in counts.items():
        spatial, texts = make_studies(count, rng)
        if split != "test" or with_test:
            arrays[split] = {"spatial": spatial.astype(np.float16), "pooled": pooled(spatial).astype(np.float16)}
        for text in texts:
            rows.append({"report_id": f"CXR{len(rows) + 1}", "split": split, "text": text,
                         "n_tokens": len(tokenize(text))})
    studies = pd.DataFrame(rows)
    write_parquet(studies, prepared / "studies.parquet")
    train_texts = studies.loc[studies["split"] == "train", "text"]
    build_vocab([tokenize(text) for text in train_texts], min_count=1, max_len=20).save(prepared / "vocab.json")
    blank = np.full((1, 2, 49, FEATURE_DIM), 0.05)  # what the encoder makes of two black images
    write_store(features, arrays, {"spatial": blank.astype(np.float16), "pooled": pooled(blank).astype(np.float16)},
                {"weights": "random", "seed": 7, "data_source": "synthetic-test", "image_size": 224},
                shard_studies=shard_studies)
    return features, prepared
