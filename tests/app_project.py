"""A small project directory, as `dvc repro` leaves one, for the generate / CLI / app tests.

`build_project(root)` writes, in a few seconds:
  params.yaml                      image.size 224, features.weights random, decode, train, model sizes
  data/prepared/vocab.json         + studies.parquet (train / val reports of a small grammar)
  data/features/features.json      as the features stage writes it (random weights, seed, 7x7 grid)
  data/features/<split>/*.npy      learnable stand-in features with DenseNet121's shapes (1024 channels)
  models/{baseline,attention}.keras, metrics/train_{baseline,attention}.json  (cxrgen.modeling.train.train)
  metrics/data.json                data source "synthetic", the random split
The reports mix positive, negative and uncertain statements, so the labeler has something to find.

The fixture `app_project` builds it once per session, or returns $CXRGEN_TEST_PROJECT when set (a
real project directory, e.g. the output of the synthetic `dvc repro`). Import it in a test module:
`from app_project import app_project  # noqa: F401`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

FEATURE_DIM = 1024          # DenseNet121's channels: the models must read the real network's features
REGIONS = 49
COUNTS = {"train": 96, "val": 24}
SIZES = {
    "baseline": {"embedding_dim": 8, "units": 16, "dropout": 0.0},
    "attention": {"embedding_dim": 8, "units": 16, "projection_dim": 8, "attention_dim": 8, "dropout": 0.0},
}
TRAIN = {"seed": 0, "epochs": 8, "batch_size": 16, "learning_rate": 0.03, "patience": 3, "image_control": False}
HEART = ("the heart is normal in size .", "the heart is enlarged .")
LUNGS = ("the lungs are clear .", "there is a small left pleural effusion .")
EXTRA = ("no pneumothorax .", "possible right basilar atelectasis .")


def make_studies(count: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Spatial features (count, 2, 49, 1024) float32 and report texts; the heart sentence is readable
    from frontal regions 20-24, the lung sentence from lateral regions 30-34."""
    directions = np.random.default_rng(4321).normal(size=(2, FEATURE_DIM))
    heart, lungs, extra = (rng.integers(0, 2, count) for _ in range(3))
    spatial = rng.normal(0.0, 0.3, (count, 2, REGIONS, FEATURE_DIM))
    spatial[:, 0, 20:25] += np.where(heart, 1.0, -1.0)[:, None, None] * directions[0]
    spatial[:, 1, 30:35] += np.where(lungs, 1.0, -1.0)[:, None, None] * directions[1]
    spatial = np.maximum(spatial, 0.0)
    texts = [f"{HEART[h]} {LUNGS[lung]} {EXTRA[e]}" for h, lung, e in zip(heart, lungs, extra)]
    return spatial.astype(np.float32), texts


def build_project(root: str | Path) -> Path:
    from cxrgen.data.text import tokenize
    from cxrgen.data.vocab import build_vocab
    from cxrgen.features.store import write_store
    from cxrgen.modeling.train import train
    from cxrgen.tables import write_parquet

    root = Path(root)
    prepared, features, metrics = root / "data/prepared", root / "data/features", root / "metrics"
    for folder in (prepared, features, metrics, root / "models"):
        folder.mkdir(parents=True, exist_ok=True)
    params = {
        "image": {"size": 224},
        "split": {"method": "random", "fractions": {"train": 0.7, "val": 0.1, "test": 0.2}, "seed": 0},
        "vocab": {"min_count": 1, "max_len": 30},
        "features": {"weights": "random", "seed": 0, "batch_size": 16},
        "decode": {"beam_width": 3, "length_penalty": 0.0, "no_repeat_ngram": 3, "max_len": 30},
        "train": TRAIN,
        "model": SIZES,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    rows, arrays = [], {}
    for split, count in COUNTS.items():
        spatial, texts = make_studies(count, rng)
        arrays[split] = {"spatial": spatial.astype(np.float16), "pooled": spatial.mean(axis=2).astype(np.float16)}
        rows += [{"report_id": f"CXR{len(rows) + i + 1}", "split": split, "text": text,
                  "n_tokens": len(tokenize(text))} for i, text in enumerate(texts)]
    studies = pd.DataFrame(rows)
    write_parquet(studies, prepared / "studies.parquet")
    train_tokens = [tokenize(t) for t in studies.loc[studies["split"] == "train", "text"]]
    build_vocab(train_tokens, min_count=1, max_len=30).save(prepared / "vocab.json")
    blank = np.full((1, 2, REGIONS, FEATURE_DIM), 0.05, dtype=np.float16)
    write_store(features, arrays, {"spatial": blank, "pooled": blank.mean(axis=2)}, {
        "weights": "random", "weights_sha256": None, "seed": 0, "image_size": 224, "grid": [7, 7],
        "batch_size": 16, "dtype": "float16", "data_source": "synthetic",
        "network": "DenseNet121 (keras.applications), final BN+ReLU map and its global average"})
    (metrics / "data.json").write_text(json.dumps({
        "data_source": "synthetic", "split": params["split"], "image_size": 224,
        "counts": {f"studies_{k}": v for k, v in COUNTS.items()}}, indent=2))
    for model in ("baseline", "attention"):
        train(model, params, features, prepared, root / f"models/{model}.keras", metrics / f"train_{model}.json",
              root / "dvclive" / model)
    return root


_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def app_project(tmp_path_factory) -> Path:
    given = os.environ.get("CXRGEN_TEST_PROJECT")
    if given:
        return Path(given).resolve()
    if "project" not in _BUILT:   # several test modules import this fixture: build once per process
        _BUILT["project"] = build_project(tmp_path_factory.mktemp("app_project"))
    return _BUILT["project"]


def xray_png(projection: str = "frontal", width: int = 256, height: int = 300, seed: int = 1,
             findings: list | None = None, mode: str = "L") -> bytes:
    """A synthetic radiograph-like PNG (the synthetic source's drawing), in the given PIL mode
    ("L", "I;16", "RGB", "RGBA", "P")."""
    from PIL import Image

    from cxrgen.data.sources.synthetic import draw_png

    findings = [{"finding": "cardiomegaly", "severity": "moderate"}] if findings is None else findings
    data = draw_png((seed, 7, 0 if projection == "frontal" else 1, findings, projection, width, height))
    if mode == "L":
        return data
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257 + 3)
    elif mode == "P":
        image = Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        image = Image.fromarray(gray).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
