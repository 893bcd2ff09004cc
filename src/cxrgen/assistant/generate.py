"""Drafting a report from image files: the inference path behind `cxrgen generate` and the app.

A study is one or two image files (frontal first, lateral second). Each file goes through exactly
what the prepare stage did to the training images (`images.decode_png`: any PNG kind, 8/16-bit,
RGB, RGBA, palette, to 8-bit gray, longer side scaled to `image.size`, padded, centred); one view
is used twice and the study is flagged `single_view`, as prepare does. The feature network is the
one the features stage used, rebuilt from params `features` (weights) and data/features/features.json
(seed, image size); weights that differ from what features.json recorded are refused, since the
model never saw features from them. The report is decoded greedily or by beam search.

Accepted files (`read_view`): PNG and JPEG; DICOM when pydicom is installed (modality rescale,
MONOCHROME1 inverted, windowed to its own min..max like a 16-bit PNG). Limits, checked before
decoding: at most `MAX_FILE_BYTES` (64 MiB) per file and `MAX_PIXELS` (40 megapixels, e.g.
6300 x 6300) per image; chest radiographs are far below both (IU PNGs are at most ~3000 x 3000,
a CR/DX DICOM at most ~4300 x 4300). Anything unusable raises `BadInput` naming the file.

Loaded networks and models are cached per process (`get_assistant`): the app loads them once, not
once per click. A cached model is reloaded when its files change on disk.
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrgen.data.images import decode_png, fit_square, to_gray8
from cxrgen.errors import BadInput, CxrgenError

MAX_FILE_BYTES = 64 * 2**20
MAX_PIXELS = 40_000_000
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}   # MPO: multi-picture JPEG from cameras
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
MODEL_NAMES = ("attention", "baseline")
RESEARCH_NOTE = ("Research tool, not a diagnosis: the text is drafted by a model from the images alone and "
                 "must not be used for patient care.")
SINGLE_VIEW_NOTE = ("One view given: it was used as both the frontal and the lateral view, as the prepare "
                    "stage does for single-image studies.")
LABELER_MISSING = "cxrgen.data.labeler not yet available"


# ---------------------------------------------------------------------------------------------
# Reading image files


def _limit_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def read_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """A file's bytes, refused (before reading) when missing or over the byte limit."""
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    path = Path(path)
    if not path.exists():
        raise BadInput(path, "file not found")
    if not path.is_file():
        raise BadInput(path, "not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise BadInput(path, f"file too large ({_limit_text(size)}; the limit is {_limit_text(max_bytes)})")
    return path.read_bytes()


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def read_view(data: bytes, name: str, size: int, max_bytes: int | None = None,
              max_pixels: int | None = None) -> np.ndarray:
    """Image bytes → (size, size) uint8, exactly as prepare decodes; BadInput(name, why) otherwise."""
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise BadInput(name, "empty file (zero bytes)")
    if len(data) > max_bytes:
        raise BadInput(name, f"file too large ({_limit_text(len(data))}; the limit is {_limit_text(max_bytes)})")
    if is_dicom(data, name):
        return _read_dicom(data, name, size, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:      # reads the header only
            kind, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        raise BadInput(name, "not an image (PNG, JPEG or DICOM expected)") from None
    except Image.DecompressionBombError:
        raise BadInput(name, f"image too large (over {max_pixels:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(name, f"unreadable image header ({exc})") from None
    if kind not in ACCEPTED_FORMATS:
        raise BadInput(name, f"{kind} images are not accepted (PNG, JPEG or DICOM expected)")
    if width * height > max_pixels:
        raise BadInput(name, f"image too large ({width} x {height} = {width * height:,} pixels; "
                             f"the limit is {max_pixels:,})")
    try:
        return decode_png(data, size)
    except ValueError as exc:
        problem = str(exc)
        if "truncated" in problem.lower():
            problem = f"truncated image file ({problem})"
        raise BadInput(name, problem) from None


def _read_dicom(data: bytes, name: str, size: int, max_pixels: int) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise BadInput(name, "is a DICOM file, and reading DICOM needs pydicom, which is not installed "
                             "(pip install pydicom), or export the image as PNG") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        if rows * columns > max_pixels:
            raise BadInput(name, f"image too large ({columns} x {rows} = {rows * columns:,} pixels; "
                                 f"the limit is {max_pixels:,})")
        pixels = dataset.pixel_array
    except BadInput:
        raise
    except Exception as exc:  # pydicom raises many kinds: missing pixel data, codecs, bad tags
        raise BadInput(name, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and photometric.startswith(("RGB", "YBR")):
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
        return fit_square(to_gray8(image), size)
    if pixels.ndim != 2:
        raise BadInput(name, f"DICOM pixel data of shape {pixels.shape} is not one grayscale image")
    values = pixels.astype(np.float64) * float(getattr(dataset, "RescaleSlope", 1) or 1) \
        + float(getattr(dataset, "RescaleIntercept", 0) or 0)
    gray = to_gray8(Image.fromarray(values.astype(np.float32)))   # min..max, as 16-bit PNGs
    if photometric == "MONOCHROME1":                                    # bright = low values
        gray = 255 - gray
    return fit_square(gray, size)


@dataclass(frozen=True)
class ViewInput:
    """One uploaded or named image: its bytes and a name for messages."""

    name: str
    data: bytes

    @classmethod
    def from_path(cls, path: str | Path, max_bytes: int | None = None) -> ViewInput:
        return cls(str(path), read_bytes(path, max_bytes))


def as_view(source, max_bytes: int | None = None) -> ViewInput | None:
    if source is None or isinstance(source, ViewInput):
        return source
    if isinstance(source, (bytes, bytearray)):
        return ViewInput("uploaded image", bytes(source))
    return ViewInput.from_path(source, max_bytes)


def study_images(frontal, lateral, size: int) -> tuple[np.ndarray, bool]:
    """(1, 2, size, size) uint8 (frontal, lateral) and whether one view was used twice."""
    views = [v for v in (as_view(frontal), as_view(lateral)) if v is not None]
    if not views:
        raise BadInput("input", "no image given (a frontal view, and a lateral one if there is one)")
    arrays = [read_view(v.data, v.name, size) for v in views]
    single = len(arrays) == 1
    if single:
        arrays = arrays * 2
    return np.stack(arrays)[None], single


# ---------------------------------------------------------------------------------------------
# Provenance: what the model was trained on


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def describe_split(split) -> str | None:
    if not isinstance(split, dict):
        return None if split is None else str(split)
    method = split.get("method")
    if method == "random":
        fractions = split.get("fractions") or {}
        parts = "/".join(f"{round(100 * float(fractions[k]))}" for k in ("train", "val", "test") if k in fractions)
        return f"random{' ' + parts if parts else ''} (seed {split.get('seed', '?')})"
    return str(method) if method else None


@dataclass(frozen=True)
class Provenance:
    """Where a model comes from, read from metrics/train_<model>.json and metrics/data.json."""

    model: str
    data_source: str | None = None
    weights: str | None = None
    features_seed: int | None = None
    split: str | None = None
    train_seed: int | None = None
    train_studies: int | None = None
    missing: tuple[str, ...] = ()

    @property
    def synthetic(self) -> bool:
        return self.data_source is not None and "synthetic" in str(self.data_source).lower()

    @property
    def random_weights(self) -> bool:
        return self.weights is not None and str(self.weights).startswith("random")

    @property
    def weights_label(self) -> str:
        if self.weights is None:
            return "unknown"
        text = str(self.weights)
        if text.startswith("random"):
            seed = f", seed {self.features_seed}" if self.features_seed is not None else ""
            return f"random (no pretraining{seed})"
        if text.startswith("chexnet:"):
            return "CheXNet " + text.removeprefix("chexnet:").split(" sha256")[0]
        if text.startswith("imagenet:"):
            return "ImageNet " + text.removeprefix("imagenet:")
        return text

    @property
    def source_label(self) -> str:
        if self.data_source is None:
            return "unknown data"
        return "SYNTHETIC data" if self.synthetic else f"real data ({self.data_source})"

    def line(self) -> str:
        """One line for the CLI and captions: source, weights, split, seed."""
        parts = [f"{self.model} model", f"trained on {self.source_label}",
                 f"feature weights {self.weights_label}", f"split {self.split or 'unknown'}",
                 f"train seed {self.train_seed if self.train_seed is not None else 'unknown'}"]
        return " · ".join(parts)

    def warnings(self) -> list[str]:
        out = []
        if self.synthetic:
            out.append("This model was trained on SYNTHETIC images and reports (the pipeline's stand-in "
                       "data): its reports say nothing about real radiographs.")
        if self.random_weights:
            out.append("The image features come from a RANDOMLY initialised DenseNet121 (features.weights: "
                       "random): they carry no medical meaning.")
        if self.missing:
            out.append(f"Provenance incomplete: {', '.join(self.missing)} not found; treat this model as "
                       "of unknown origin.")
        return out

    def as_dict(self) -> dict:
        return {"model": self.model, "data_source": self.data_source, "weights": self.weights,
                "features_seed": self.features_seed, "split": self.split, "train_seed": self.train_seed,
                "train_studies": self.train_studies}


def load_provenance(project: str | Path, model: str) -> Provenance:
    project = Path(project)
    train_path = project / "metrics" / f"train_{model}.json"
    data_path = project / "metrics" / "data.json"
    train, data = _read_json(train_path), _read_json(data_path)
    missing = tuple(str(p.relative_to(project)) for p, d in ((train_path, train), (data_path, data)) if d is None)
    train, data = train or {}, data or {}
    return Provenance(
        model=model,
        data_source=train.get("data_source") or data.get("data_source"),
        weights=train.get("weights"),
        features_seed=train.get("features_seed"),
        split=describe_split(data.get("split")),
        train_seed=train.get("train_seed"),
        train_studies=train.get("train_studies"),
        missing=missing,
    )


# ---------------------------------------------------------------------------------------------
# The labeler (written separately; imported lazily)


def labeler_module():
    """cxrgen.data.labeler, or None while it does not exist."""
    import importlib

    try:
        return importlib.import_module("cxrgen.data.labeler")
    except ModuleNotFoundError as exc:
        if exc.name == "cxrgen.data.labeler":
            return None
        raise


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class GeneratedReport:
    """What one study gave.

    words: the generated words in order (report text = " ".join(words)).
    attention: (len(words), 2, grid_h, grid_w) float32, the attention weights that produced each word
      over the frontal (index 0) and lateral (1) grid; None for the baseline (no attention).
    views: (2, S, S) uint8, the images exactly as the model's network saw them (padded squares).
    mentions / labels: from cxrgen.data.labeler (None when it is not available; `labeler_note` says why).
    """

    text: str
    words: list[str]
    model: str
    decoding: str
    beam_width: int
    attention: np.ndarray | None
    views: np.ndarray
    single_view: bool
    inputs: list[str]
    provenance: Provenance
    labels: dict | None = None
    mentions: list | None = None
    labeler_note: str | None = None
    notes: list[str] = field(default_factory=list)

    def findings(self) -> dict[str, list[str]] | None:
        """{"positive": [...], "negative": [...], "uncertain": [...]} observations, or None."""
        if self.labels is None:
            return None
        status = {1: "positive", 0: "negative", -1: "uncertain"}
        out = {"positive": [], "negative": [], "uncertain": []}
        for observation, value in self.labels.items():
            if value in status:
                out[status[value]].append(observation)
        return out


# ---------------------------------------------------------------------------------------------
# The assistant: network + model + vocabulary of one project, loaded once


_LOCK = threading.RLock()
_NETWORKS: dict = {}
_ASSISTANTS: dict = {}


def _network(choice, image_size: int, seed: int):
    """The DenseNet121 feature extractor for these weights, built once per process."""
    from cxrgen.features.densenet import FeatureExtractor, load_network

    key = (choice.kind, str(choice.path), choice.sha256, image_size, seed)
    with _LOCK:
        if key not in _NETWORKS:
            _NETWORKS[key] = FeatureExtractor(load_network(choice, image_size, seed), batch_size=2)
        return _NETWORKS[key]


def _stamp(paths: list[Path]) -> tuple:
    out = []
    for path in paths:
        try:
            stat = path.stat()
            out.append((str(path), stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            out.append((str(path), None, None))
    return tuple(out)


class Assistant:
    """One project's model, ready to draft reports: use `get_assistant` (cached) to get one."""

    def __init__(self, project: str | Path = ".", model: str = "attention"):
        from cxrgen.data.vocab import Vocab
        from cxrgen.features.densenet import resolve_weights
        from cxrgen.modeling.decode import DECODE_DEFAULTS
        from cxrgen.modeling.models import load_model
        from cxrgen.params import load_params

        if model not in MODEL_NAMES:
            raise BadInput("--model", f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
        self.project = Path(project).resolve()
        self.model_name = model
        if not self.project.is_dir():
            raise BadInput(self.project, "project directory not found")
        params_path = self.project / "params.yaml"
        self.params = load_params(params_path)
        self.vocab = Vocab.load(self.project / "data" / "prepared" / "vocab.json")
        info_path = self.project / "data" / "features" / "features.json"
        info = _read_json(info_path)
        if info is None:
            raise BadInput(info_path, "feature description not found or not JSON (run the features stage)")
        self.feature_info = info
        self.image_size = int(info.get("image_size") or (self.params.get("image") or {}).get("size", 224))
        self.grid = tuple(int(g) for g in info.get("grid") or (self.image_size // 32,) * 2)
        # The weights now configured must be the ones the model's features came from.
        choice = resolve_weights(self.params.get("features") or {}, params_path)
        if info.get("weights") is not None and choice.record() != info["weights"]:
            raise BadInput(params_path, (
                f"features.weights now gives '{choice.record()}', but the model was trained on features "
                f"from '{info['weights']}' (data/features/features.json); restore the setting or rerun "
                "dvc repro"))
        self.choice = choice
        self.features_seed = int(info.get("seed", (self.params.get("features") or {}).get("seed", 0)))
        self.model_path = self.project / "models" / f"{model}.keras"
        self.model = load_model(self.model_path)
        if self.model.vocab_size != len(self.vocab):
            raise BadInput(self.model_path, f"the model has {self.model.vocab_size} words, vocab.json has "
                                            f"{len(self.vocab)} (retrain the model: dvc repro)")
        self.extractor = _network(choice, self.image_size, self.features_seed)
        self.decode_params = {**DECODE_DEFAULTS, **(self.params.get("decode") or {})}
        self.provenance = load_provenance(self.project, model)

    @property
    def default_beam(self) -> int:
        return int(self.decode_params.get("beam_width", 3))

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, 2, S, S) uint8 → the features the model reads (N, 2, 49, 1024) or (N, 2, 1024), float32."""
        import tensorflow as tf

        from cxrgen.features.densenet import preprocess

        flat = images.reshape(-1, self.image_size, self.image_size)
        spatial, pooled = (t.numpy() for t in self.extractor.forward(preprocess(tf.constant(flat))))
        if not (np.isfinite(spatial).all() and np.isfinite(pooled).all()):
            raise CxrgenError("features overflow float16 (are the feature weights right?)")
        n = len(images)
        arrays = {"spatial": spatial.reshape(n, 2, *spatial.shape[1:]), "pooled": pooled.reshape(n, 2, -1)}
        return arrays[self.model.feature_key].astype(np.float32)   # float16 as the stage stores, then float32

    @property
    def default_samples(self) -> int:
        """Reports sampled beside the beam's to choose by the findings (params decode.rerank_samples;
        0 for a model without a finding head)."""
        if getattr(self.model, "finding_classifier", None) is None:
            return 0
        return int(self.decode_params.get("rerank_samples", 0))

    def generate(self, frontal, lateral=None, beam: int | None = None, greedy: bool = False,
                 samples: int | None = None) -> GeneratedReport:
        """frontal / lateral: a path, bytes, or ViewInput (lateral optional). beam: width (default
        params); samples: reports sampled beside the beam's, chosen by the findings (default params)."""
        images, single = study_images(frontal, lateral, self.image_size)
        names = [v.name for v in (as_view(frontal), as_view(lateral)) if v is not None]
        return self.generate_arrays(images, names, single, beam=beam, greedy=greedy, samples=samples)[0]

    def generate_arrays(self, images: np.ndarray, names: list[str], single_view: bool,
                        beam: int | None = None, greedy: bool = False,
                        samples: int | None = None) -> list[GeneratedReport]:
        from cxrgen.data.vocab import END_ID, SPECIAL_TOKENS
        from cxrgen.modeling.decode import DecodeSettings, beam_search, rerank_candidates

        width = 1 if greedy else (self.default_beam if beam is None else beam)
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise BadInput("--beam", f"the beam width must be a positive integer, not {width!r}")
        samples = 0 if greedy else (self.default_samples if samples is None else samples)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise BadInput("--samples", f"the number of samples must be a whole number >= 0, not {samples!r}")
        if samples and getattr(self.model, "finding_classifier", None) is None:
            raise BadInput("--samples", f"this {self.model_name} model has no finding head to choose by")
        settings = DecodeSettings(width, float(self.decode_params.get("length_penalty", 0.0)),
                                  int(self.decode_params.get("no_repeat_ngram", 0)),
                                  int(self.decode_params.get("max_len", 60)), rerank_samples=samples,
                                  rerank_temperature=float(self.decode_params.get("rerank_temperature", 1.0)),
                                  rerank_seed=int(self.decode_params.get("rerank_seed", 0)))
        decoding = "greedy" if width == 1 else f"beam search, width {width}"
        features = self.features(images)
        with _LOCK:
            decoded = beam_search(self.model, features, settings)
            chosen = None
            if samples:
                decoding += f" + {samples} samples, chosen by the findings"
                candidates = rerank_candidates(self.model, features, decoded.texts(self.vocab), self.vocab, settings)
                chosen = candidates.choose(self.model.decision_thresholds())
        reports = []
        for row in range(len(images)):
            words, maps = [], []
            for step, token in enumerate(decoded.tokens[row]):
                token = int(token)
                if token == END_ID:
                    break
                if token >= len(SPECIAL_TOKENS):
                    words.append(self.vocab.words[token])
                    if decoded.attention is not None:
                        maps.append(decoded.attention[row, step].reshape(2, *self.grid))
            attention = None
            if decoded.attention is not None:
                attention = (np.stack(maps) if maps else np.zeros((0, 2, *self.grid))).astype(np.float32)
            finished = bool(decoded.finished[row])
            if chosen is not None and chosen[row] != " ".join(words):
                # A sampled report was chosen: its words, and where the model looked for each of
                # them (the attention of the teacher-forced pass over those words).
                words, finished = chosen[row].split(), True
                if decoded.attention is not None:
                    attention = self._attention_for(features[row], words)
            report = GeneratedReport(
                text=" ".join(words), words=words, model=self.model_name, decoding=decoding,
                beam_width=width, attention=attention, views=np.asarray(images[row]),
                single_view=single_view, inputs=list(names), provenance=self.provenance)
            if single_view:
                report.notes.append(SINGLE_VIEW_NOTE)
            if not finished:
                report.notes.append(f"The report reached the length limit ({settings.max_len} tokens) "
                                    "without an end.")
            label_report(report)
            reports.append(report)
        return reports

    def _attention_for(self, features: np.ndarray, words: list[str]) -> np.ndarray:
        """(len(words), 2, grid_h, grid_w) the attention that produced each of `words` (teacher forcing)."""
        ids = self.vocab.encode(words, max_len=len(words) + 2)
        tokens = np.asarray([ids[:-1]], np.int32)                     # <start> w1 ... wn
        attention = self.model.teacher_forced_attention({"features": features[None], "tokens": tokens})
        maps = np.asarray(attention)[0, :len(words)]                   # the weights before w1 ... wn
        return maps.reshape(len(words), 2, *self.grid).astype(np.float32)


def label_report(report: GeneratedReport) -> None:
    """Fill in the labeler's findings (or say why there are none)."""
    labeler = labeler_module()
    if labeler is None:
        report.labeler_note = LABELER_MISSING
        return
    try:
        report.labels = dict(labeler.label_report(report.text))
        report.mentions = list(labeler.find_mentions(report.text))
    except Exception as exc:  # the labeler is another module: its failure must not hide the report
        report.labels = report.mentions = None
        report.labeler_note = f"the labeler failed on this report ({type(exc).__name__}: {exc})"


def get_assistant(project: str | Path = ".", model: str = "attention") -> Assistant:
    """The Assistant for (project, model), loaded once per process; reloaded when its files change."""
    root = Path(project).resolve()
    files = [root / "params.yaml", root / "models" / f"{model}.keras", root / "data/prepared/vocab.json",
             root / "data/features/features.json", root / "metrics" / f"train_{model}.json",
             root / "metrics" / "data.json"]
    key = (str(root), model)
    stamp = _stamp(files)
    with _LOCK:
        cached = _ASSISTANTS.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        assistant = Assistant(root, model)
        _ASSISTANTS[key] = (stamp, assistant)
        return assistant


def clear_cache() -> None:
    with _LOCK:
        _ASSISTANTS.clear()
        _NETWORKS.clear()


# ---------------------------------------------------------------------------------------------
# Folders of studies


def _study_key(stem: str) -> str:
    """`CXR12_IM-0151-1001` → `CXR12_IM-0151`; `patient7_frontal` → `patient7`; `scan` → `scan`."""
    cut = max(stem.rfind("-"), stem.rfind("_"))
    return stem[:cut] if cut > 0 else stem


def _view_order(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(chosen [frontal, lateral?], ignored). A name with "lateral" or "_lat" is a lateral; with
    "frontal", "_pa" or "_ap" a frontal; otherwise the first by name is the frontal (IU: -1001 before
    -2001)."""
    def kind(path: Path) -> str | None:
        stem = path.stem.lower()
        if "lateral" in stem or stem.endswith(("_lat", "-lat")):
            return "lateral"
        if "frontal" in stem or stem.endswith(("_pa", "-pa", "_ap", "-ap")):
            return "frontal"
        return None

    ordered = sorted(paths, key=lambda p: p.name)
    if len(ordered) <= 1:
        return ordered, []
    frontal = next((p for p in ordered if kind(p) == "frontal"), None)
    lateral = next((p for p in ordered if kind(p) == "lateral"), None)
    rest = [p for p in ordered if p not in (frontal, lateral)]
    if frontal is None:
        frontal = rest.pop(0)
    if lateral is None:
        lateral = rest.pop(0) if rest else None
    chosen = [frontal] + ([lateral] if lateral is not None else [])
    return chosen, rest


def group_studies(folder: str | Path) -> list[tuple[str, list[Path], list[Path]]]:
    """(study name, [frontal, lateral?], ignored files) for every study in `folder`.

    Rule: each subfolder holding image files (.png .jpg .jpeg .dcm .dicom) is one study named after
    the subfolder. Image files directly in `folder` are grouped by their name without its last `-` or
    `_` part (`CXR12_IM-0151-1001.png` and `CXR12_IM-0151-2001.png` → study `CXR12_IM-0151`;
    `p7_frontal.png`, `p7_lateral.png` → `p7`). Within a study, a name with "lateral" (or ending in
    `_lat`) is the lateral and one with "frontal" (or ending `_pa`/`_ap`) the frontal; otherwise the
    first by name is the frontal and the second the lateral; further images are ignored (listed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(folder, "folder not found")

    def images_in(path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    groups: dict[str, list[Path]] = {}
    for path in images_in(folder):
        groups.setdefault(_study_key(path.stem), []).append(path)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = images_in(sub)
        if found:
            name = sub.name if sub.name not in groups else f"{sub.name}/"
            groups[name] = found
    if not groups:
        raise BadInput(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in it or in its subfolders")
    return [(name, *_view_order(paths)) for name, paths in sorted(groups.items())]


def env_project() -> str:
    return os.environ.get("CXRGEN_PROJECT", ".")
