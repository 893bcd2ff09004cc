"""Pictures of where the attention model looked for each word it wrote.

The attention model weighs 98 regions per word: the 7x7 DenseNet grid of the frontal view, then of
the lateral view. The grid covers the whole padded square the network saw (`image.size`, 224 px),
so a map is upsampled smoothly (bicubic) over that padded square and laid over it with a colour
map running from the least to the most attended point of the two views (one scale for both), its
opacity growing with the weight, so unattended areas show the plain image and a view that got
little of the word's attention stays clear; each panel's title gives that view's share of the attention.

Figures are drawn with matplotlib's Agg canvas (no pyplot, no global backend, thread-safe) and
written as PNG by Pillow with no text chunks (no time stamp, no software name): the same inputs
give the same bytes. Every figure carries a caption naming what the model was trained on.
"""

from __future__ import annotations

import io
import json
import re
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

VIEW_NAMES = ("frontal", "lateral")
SKIPPED_WORDS = {".", ",", "the", "a", "an", "is", "are", "of", "and", "or", "in", "to", "with", "there",
                 "no", "not", "be", "at", "on", "for", "this", "these", "xxxx"}
FIGURE_INCHES = (8.4, 4.9)
DPI = 100


def caption_of(provenance) -> str:
    """A provenance (generate.Provenance, a dict like metrics/train_<model>.json, or text) → caption."""
    if provenance is None:
        return "Source unknown. Research tool, not a diagnosis."
    if isinstance(provenance, str):
        return provenance
    if isinstance(provenance, dict):
        from cxrgen.assistant.generate import Provenance, describe_split

        provenance = Provenance(
            model=str(provenance.get("model", "attention")), data_source=provenance.get("data_source"),
            weights=provenance.get("weights"), features_seed=provenance.get("features_seed"),
            split=describe_split(provenance.get("split")) if not isinstance(provenance.get("split"), str)
            else provenance.get("split"),
            train_seed=provenance.get("train_seed", provenance.get("seed")))
    return provenance.line() + ". Research tool, not a diagnosis."


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """A (h, w) map → (size, size) float32, bicubic, never below zero."""
    image = Image.fromarray(np.asarray(grid, dtype=np.float32))
    return np.clip(np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32), 0.0, None)


def render_attention(views: np.ndarray, weights: np.ndarray, word: str, caption: str = "",
                     title: str | None = None, cmap: str = "jet", alpha: float = 0.6) -> Image.Image:
    """views (2, S, S) uint8 padded images; weights (2, h, w) one word's attention → an RGB image."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    views = np.asarray(views)
    weights = np.asarray(weights, dtype=np.float64)
    if views.ndim != 3 or views.shape[0] != 2:
        raise ValueError(f"views must be (2, S, S), not {views.shape}")
    if weights.ndim != 3 or weights.shape[0] != 2:
        raise ValueError(f"weights must be (2, h, w), not {weights.shape}")
    size = views.shape[-1]
    maps = [upsample(w, size) for w in weights]
    low = float(min(m.min() for m in maps))
    span = max(float(max(m.max() for m in maps)) - low, 1e-12)
    total = max(float(weights.sum()), 1e-12)

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    figure.suptitle(title if title is not None else f'"{word}"', fontsize=15, fontweight="bold", y=0.975)
    for index, (view, heat) in enumerate(zip(views, maps)):
        axes = figure.add_axes((0.02 + 0.49 * index, 0.17, 0.47, 0.70))
        axes.imshow(view, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        level = np.clip((heat - low) / span, 0.0, 1.0)
        overlay = colormaps[cmap](level)                 # RGBA; more attention → more colour
        overlay[..., 3] = alpha * level ** 0.7
        axes.imshow(overlay, interpolation="bilinear")
        share = float(weights[index].sum()) / total
        axes.set_title(f"{VIEW_NAMES[index]} · {share:.0%} of the attention", fontsize=10)
        axes.set_axis_off()
    if caption:
        figure.text(0.5, 0.085, textwrap.fill(caption, 120), ha="center", va="center", fontsize=7.5,
                    color="#333333", wrap=False)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def png_bytes(image: Image.Image) -> bytes:
    """PNG with no metadata chunks (no time stamp, no software name): same pixels, same bytes."""
    clean = Image.frombytes(image.mode, image.size, image.tobytes())   # drops image.info
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def attention_png(views: np.ndarray, weights: np.ndarray, word: str, caption: str = "", **kwargs) -> bytes:
    return png_bytes(render_attention(views, weights, word, caption, **kwargs))


def select_words(words: list[str], limit: int) -> list[int]:
    """Indices of the first `limit` distinct content words (punctuation and small words left out);
    falls back to the first words when there are none."""
    chosen, seen = [], set()
    for index, word in enumerate(words):
        if word in SKIPPED_WORDS or word in seen:
            continue
        seen.add(word)
        chosen.append(index)
        if len(chosen) == limit:
            return chosen
    return chosen or list(range(min(limit, len(words))))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def write_attention_examples(out_dir: str | Path, images: np.ndarray, words: list[list[str]],
                             attention: list[np.ndarray], provenance, study_ids: list[str],
                             max_studies: int = 3, words_per_study: int = 6) -> list[Path]:
    """Maps for a few studies as PNG files in `out_dir`, plus `index.json` listing them.

    images: (N, 2, S, S) uint8 (e.g. data/prepared/images_test.npy); words[i]: study i's generated
    words; attention[i]: (len(words[i]), 2, h, w), as `generate.GeneratedReport.attention`, or
    (len(words[i]), 2 * h * w) rows of `decode.Decoded.attention` (grid assumed square). The first
    `max_studies` studies, up to `words_per_study` content words each. Files are named
    `<study>_<word number>_<word>.png`; the same inputs give byte-identical files. Files this
    function wrote before (listed in an old index.json) are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.json"
    if index_path.is_file():
        try:
            for entry in json.loads(index_path.read_text()).get("figures", []):
                (out_dir / Path(entry["file"]).name).unlink(missing_ok=True)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    caption = caption_of(provenance)
    written, entries = [], []
    for study in range(min(max_studies, len(images))):
        study_words, maps = words[study], np.asarray(attention[study], dtype=np.float32)
        if maps.ndim == 2:
            side = int(round((maps.shape[1] // 2) ** 0.5))
            maps = maps[: len(study_words)].reshape(len(study_words), 2, side, side)
        for index in select_words(study_words, words_per_study):
            word = study_words[index]
            path = out_dir / f"{_safe(study_ids[study])}_{index + 1:02d}_{_safe(word)}.png"
            path.write_bytes(attention_png(
                images[study], maps[index], word,
                f"Study {study_ids[study]}, word {index + 1} of {len(study_words)}. {caption}",
                title=f'"{word}"  (study {study_ids[study]})'))
            written.append(path)
            entries.append({"file": path.name, "study": str(study_ids[study]), "word": word,
                            "position": index + 1})
    index_path.write_text(json.dumps({"caption": caption, "figures": entries}, indent=2) + "\n")
    return written
