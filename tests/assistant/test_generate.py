"""Inference from image files (cxrgen.assistant.generate) and the attention pictures (cxrgen.assistant.attention_maps)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import types
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from app_project import app_project, xray_png  # noqa: E402, F401
from PIL import Image  # noqa: E402

from cxrgen.assistant import generate  # noqa: E402
from cxrgen.assistant.attention_maps import (  # noqa: E402
    attention_png,
    render_attention,
    write_attention_examples,
)
from cxrgen.data.images import decode_png, fit_square, to_gray8  # noqa: E402
from cxrgen.errors import BadInput  # noqa: E402


def png_chunks(data: bytes) -> list[bytes]:
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks.append(kind)
        position += 12 + length
    return chunks


def copy_project(source: Path, target: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """The project's small files (everything but the training features), minus `leave_out`."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        shard = path.suffix == ".npy" and relative.parts[:2] == ("data", "features")
        if path.is_dir() or str(relative) in leave_out or shard or "dvclive" in relative.parts:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / relative)
    return target


# ---------------------------------------------------------------------------------------------
# Reading images: exactly prepare's decoding, and every bad input named


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P"])
def test_every_png_kind_decodes_as_prepare_decodes_it(mode):
    data = xray_png("frontal", mode=mode)
    view = generate.read_view(data, f"x-{mode}.png", 224)
    assert view.shape == (224, 224) and view.dtype == np.uint8
    assert np.array_equal(view, decode_png(data, 224))
    assert view.std() > 10   # an image, not a blank


def test_jpeg_is_accepted_and_other_formats_are_named():
    gray = Image.open(io.BytesIO(xray_png())).convert("L")
    jpeg, gif = io.BytesIO(), io.BytesIO()
    gray.save(jpeg, format="JPEG")
    gray.save(gif, format="GIF")
    assert generate.read_view(jpeg.getvalue(), "x.jpg", 224).shape == (224, 224)
    with pytest.raises(BadInput, match=r"^x\.gif: GIF images are not accepted"):
        generate.read_view(gif.getvalue(), "x.gif", 224)


def test_bad_files_give_one_message_naming_the_file(tmp_path):
    data = xray_png()
    cases = {
        "notes.png": (b"these are my notes, not an image", "not an image"),
        "empty.png": (b"", "empty file"),
        "cut.png": (data[: len(data) // 2], "truncated"),
    }
    for name, (content, problem) in cases.items():
        with pytest.raises(BadInput, match=problem) as info:
            generate.read_view(content, name, 224)
        assert str(info.value).startswith(f"{name}: ")
    with pytest.raises(BadInput, match=r"big\.png: file too large \(0\.0 MiB; the limit is 0\.0 MiB\)"):
        generate.read_view(data, "big.png", 224, max_bytes=100)
    with pytest.raises(BadInput, match=r"wide\.png: image too large \(256 x 300 = 76,800 pixels; the limit is 10,000\)"):
        generate.read_view(data, "wide.png", 224, max_pixels=10_000)
    with pytest.raises(BadInput, match="file not found"):
        generate.read_bytes(tmp_path / "missing.png")
    (tmp_path / "large.png").write_bytes(data)
    with pytest.raises(BadInput, match="file too large"):
        generate.read_bytes(tmp_path / "large.png", max_bytes=10)


def test_the_default_limits_are_far_above_a_chest_radiograph():
    assert generate.MAX_FILE_BYTES == 64 * 2**20 and generate.MAX_PIXELS == 40_000_000
    assert 4300 * 4300 < generate.MAX_PIXELS


def test_dicom_without_pydicom_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)   # import pydicom → ImportError
    dicom = b"\0" * 128 + b"DICM" + b"\0" * 64
    with pytest.raises(BadInput, match=r"scan\.dcm: is a DICOM file.*pip install pydicom"):
        generate.read_view(dicom, "scan.dcm", 224)


def test_dicom_is_rescaled_inverted_and_windowed(monkeypatch):
    """With a stand-in pydicom: modality rescale, MONOCHROME1 inverted, min..max like a 16-bit PNG."""
    pixels = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    dataset = types.SimpleNamespace(Rows=40, Columns=50, pixel_array=pixels, RescaleSlope=2, RescaleIntercept=-5,
                                    PhotometricInterpretation="MONOCHROME1")
    monkeypatch.setitem(sys.modules, "pydicom", types.SimpleNamespace(dcmread=lambda f, force: dataset))
    view = generate.read_view(b"\0" * 128 + b"DICM", "scan.dcm", 64)
    expected = fit_square(255 - to_gray8(Image.fromarray(pixels)), 64)   # inverted, then padded black
    assert np.abs(view.astype(int) - expected.astype(int)).max() <= 1 and view.max() > 200
    dataset.Rows = 10_000
    dataset.Columns = 10_000
    with pytest.raises(BadInput, match="image too large"):
        generate.read_view(b"\0" * 128 + b"DICM", "big.dcm", 64)


def test_one_view_is_used_twice_and_flagged():
    images, single = generate.study_images(xray_png("lateral"), None, 224)
    assert single and images.shape == (1, 2, 224, 224) and np.array_equal(images[0, 0], images[0, 1])
    with pytest.raises(BadInput, match="no image given"):
        generate.study_images(None, None, 224)


def test_folder_grouping_rule(tmp_path):
    png = xray_png()
    for name in ("CXR12_IM-0151-1001.png", "CXR12_IM-0151-2001.png", "CXR3_IM-1384-1001.png",
                 "p7_lateral.png", "p7_frontal.png", "notes.txt"):
        (tmp_path / name).write_bytes(png)
    (tmp_path / "study_b").mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        (tmp_path / "study_b" / name).write_bytes(png)
    studies = {name: ([p.name for p in views], [p.name for p in ignored])
               for name, views, ignored in generate.group_studies(tmp_path)}
    assert studies == {
        "CXR12_IM-0151": (["CXR12_IM-0151-1001.png", "CXR12_IM-0151-2001.png"], []),
        "CXR3_IM-1384": (["CXR3_IM-1384-1001.png"], []),
        "p7": (["p7_frontal.png", "p7_lateral.png"], []),
        "study_b": (["a.png", "b.png"], ["c.jpg"]),
    }
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no image files"):
        generate.group_studies(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# Generating


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    (folder / "frontal.png").write_bytes(xray_png("frontal"))
    (folder / "lateral.png").write_bytes(xray_png("lateral", mode="I;16"))
    return folder / "frontal.png", folder / "lateral.png"


def test_attention_model_report_with_maps_and_provenance(app_project, views):
    assistant = generate.get_assistant(app_project, "attention")
    assert generate.get_assistant(app_project, "attention") is assistant   # cached per process
    report = assistant.generate(*views, beam=2)
    assert report.text and report.text == " ".join(report.words)
    assert report.decoding == "beam search, width 2" and not report.single_view
    assert report.attention.shape == (len(report.words), 2, 7, 7)
    np.testing.assert_allclose(report.attention.sum(axis=(1, 2, 3)), 1.0, atol=1e-4)
    assert report.views.shape == (2, 224, 224) and report.inputs == [str(v) for v in views]
    provenance = report.provenance
    assert (provenance.synthetic, provenance.random_weights, provenance.train_seed) == (True, True, 0)
    assert "SYNTHETIC" in provenance.line() and "random" in provenance.line() and "split random" in provenance.line()
    assert len(provenance.warnings()) == 2
    greedy = assistant.generate(views[0], greedy=True)
    assert greedy.decoding == "greedy" and greedy.single_view and generate.SINGLE_VIEW_NOTE in greedy.notes


def _headed_copy(app_project: Path, target: Path, samples: int) -> Path:
    """The app project with an attention model that has a finding head (the trained decoder's weights,
    a head sure of cardiomegaly and of nothing else) and params asking for `samples` sampled reports."""
    from cxrgen.modeling.models import build_model, load_model, save_model
    from cxrgen.observations import OBSERVATIONS

    project = copy_project(app_project, target)
    trained = load_model(project / "models/attention.keras")
    config = trained.get_config()
    sizes = {key: config[key] for key in ("embedding_dim", "units", "projection_dim", "attention_dim", "dropout")}
    headed = build_model("attention", trained.vocab_size, trained.feature_shape(), {**sizes, "finding_weight": 1.0})
    by_path = {w.path: w for w in trained.weights}
    for weight in headed.weights:
        if weight.path in by_path and tuple(by_path[weight.path].shape) == tuple(weight.shape):
            weight.assign(by_path[weight.path])
        elif "finding_classifier" in weight.path and "bias" in weight.path:
            wanted = np.arange(weight.shape[0]) % len(OBSERVATIONS) == OBSERVATIONS.index("Cardiomegaly")
            weight.assign(np.where(wanted, 8.0, -8.0))
    save_model(headed, project / "models/attention.keras")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["decode"]["rerank_samples"] = samples
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_the_report_is_chosen_by_the_findings_as_the_evaluation_chooses_it(app_project, views, tmp_path):
    from cxrgen.modeling.decode import DecodeSettings, beam_search, rerank_candidates

    assistant = generate.Assistant(_headed_copy(app_project, tmp_path / "headed", samples=8), "attention")
    report = assistant.generate(*views)
    assert report.decoding == "beam search, width 3 + 8 samples, chosen by the findings"
    assert report.attention.shape == (len(report.words), 2, 7, 7)
    np.testing.assert_allclose(report.attention.sum(axis=(1, 2, 3)), 1.0, atol=1e-4)
    # the same choice as the evaluation's (cxrgen.modeling.decode), made here by hand
    images, _ = generate.study_images(*views, assistant.image_size)
    features = assistant.features(images)
    settings = DecodeSettings(3, 0.0, 3, 30, rerank_samples=8)
    beam = beam_search(assistant.model, features, settings).texts(assistant.vocab)
    candidates = rerank_candidates(assistant.model, features, beam, assistant.vocab, settings)
    assert report.text == candidates.choose(assistant.model.decision_thresholds())[0]
    plain = assistant.generate(*views, samples=0)
    assert plain.decoding == "beam search, width 3" and plain.text == beam[0]
    with pytest.raises(BadInput, match="samples"):
        assistant.generate(*views, samples=-1)


def test_attention_of_a_chosen_report_is_where_the_model_looked_for_each_word(app_project, views):
    """Teacher-forcing the beam's own words gives back the attention beam search recorded."""
    assistant = generate.get_assistant(app_project, "attention")
    report = assistant.generate(*views, beam=2)
    images, _ = generate.study_images(*views, assistant.image_size)
    again = assistant._attention_for(assistant.features(images)[0], report.words)
    np.testing.assert_allclose(again, report.attention, atol=1e-5)


def test_baseline_has_no_maps_and_shares_the_network(app_project, views):
    baseline = generate.get_assistant(app_project, "baseline")
    report = baseline.generate(*views, greedy=True)
    assert report.attention is None and report.model == "baseline"
    assert baseline.extractor is generate.get_assistant(app_project, "attention").extractor


def test_features_are_those_of_the_features_stage_network(app_project, views):
    """The network is rebuilt from params + features.json: the same features as FeatureExtractor gives."""
    from cxrgen.features.densenet import FeatureExtractor, WeightChoice, load_network

    assistant = generate.get_assistant(app_project, "attention")
    images, _ = generate.study_images(*views, 224)
    stage = FeatureExtractor(load_network(WeightChoice("random"), 224, assistant.features_seed), batch_size=16)
    spatial, _ = stage.extract(images, desc="test")
    np.testing.assert_allclose(assistant.features(images), spatial.astype(np.float32), rtol=1e-2, atol=1e-3)


def test_labeler_findings_are_attached(app_project, views, monkeypatch):
    """With a stand-in labeler the plumbing is checked whether or not cxrgen.data.labeler exists yet."""
    mention = types.SimpleNamespace(observation="Cardiomegaly", status="positive", sentence="the heart is enlarged .",
                                    phrase="heart is enlarged", trigger=None, span=(0, 10))
    fake = types.SimpleNamespace(
        OBSERVATIONS=["Cardiomegaly", "Pleural Effusion", "Atelectasis"],
        label_report=lambda text: {"Cardiomegaly": 1, "Pleural Effusion": 0, "Atelectasis": -1, "Edema": None},
        find_mentions=lambda text: [mention])
    monkeypatch.setitem(sys.modules, "cxrgen.data.labeler", fake)
    report = generate.get_assistant(app_project, "attention").generate(*views)
    assert report.findings() == {"positive": ["Cardiomegaly"], "negative": ["Pleural Effusion"],
                                 "uncertain": ["Atelectasis"]}
    assert report.mentions == [mention] and report.labeler_note is None


def test_the_real_labeler_reads_the_report(app_project, views):
    if generate.labeler_module() is None:
        pytest.skip(generate.LABELER_MISSING)
    report = generate.get_assistant(app_project, "attention").generate(*views)
    assert set(report.labels) == set(generate.labeler_module().OBSERVATIONS)
    assert all(m.status in ("positive", "negative", "uncertain") for m in report.mentions)


@pytest.mark.parametrize("leave_out, problem", [
    ("models/attention.keras", r"models/attention\.keras: model file not found"),
    ("data/prepared/vocab.json", r"vocab\.json: vocabulary file not found"),
    ("data/features/features.json", r"features\.json: feature description not found"),
])
def test_missing_project_files_are_named(app_project, tmp_path, leave_out, problem):
    project = copy_project(app_project, tmp_path, (leave_out,))
    with pytest.raises(BadInput, match=problem):
        generate.Assistant(project, "attention")


def test_feature_weights_must_exist_and_match_features_json(app_project, tmp_path):
    project = copy_project(app_project, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["features"]["weights"] = str(tmp_path / "gone/best_weights.h5")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(BadInput, match=r"best_weights\.h5: CheXNet weight file not found"):
        generate.Assistant(project, "attention")
    info = json.loads((project / "data/features/features.json").read_text())
    (project / "data/features/features.json").write_text(json.dumps({**info, "weights": "imagenet:x.h5"}))
    params["features"]["weights"] = "random"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(BadInput, match="the model was trained on features from 'imagenet:x.h5'"):
        generate.Assistant(project, "attention")


def test_missing_metrics_make_the_provenance_unknown(app_project, tmp_path):
    project = copy_project(app_project, tmp_path, ("metrics/train_baseline.json", "metrics/data.json"))
    provenance = generate.load_provenance(project, "baseline")
    assert provenance.data_source is None and provenance.train_seed is None
    assert "unknown" in provenance.line()
    assert any("Provenance incomplete" in w for w in provenance.warnings())


# ---------------------------------------------------------------------------------------------
# Attention pictures


def test_attention_png_is_deterministic_and_has_no_metadata():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 255, (2, 224, 224), dtype=np.uint8)
    weights = rng.random((2, 7, 7))
    weights /= weights.sum()
    first = attention_png(views, weights, "effusion", "synthetic · random weights")
    assert first == attention_png(views, weights, "effusion", "synthetic · random weights")
    assert first.startswith(b"\x89PNG") and png_chunks(first)[0] == b"IHDR"
    assert not {b"tEXt", b"zTXt", b"iTXt", b"tIME"} & set(png_chunks(first))
    image = render_attention(views, weights, "effusion")
    assert image.mode == "RGB" and image.size == (840, 490)
    assert first != attention_png(views, weights[::-1], "effusion", "synthetic · random weights")


def test_write_attention_examples(app_project, views, tmp_path):
    assistant = generate.get_assistant(app_project, "attention")
    reports = [assistant.generate(*views), assistant.generate(views[1], views[0])]
    images = np.stack([r.views for r in reports])
    # As the evaluate stage has them: Decoded-style rows (words, 98) for one study, maps for the other.
    attention = [reports[0].attention.reshape(len(reports[0].words), 98), reports[1].attention]
    out = tmp_path / "maps"
    written = write_attention_examples(out, images, [r.words for r in reports], attention,
                                       assistant.provenance, ["CXR1", "CXR2"], max_studies=2, words_per_study=2)
    assert written and all(p.parent == out and p.name.startswith(("CXR1_", "CXR2_")) for p in written)
    index = json.loads((out / "index.json").read_text())
    assert [e["file"] for e in index["figures"]] == [p.name for p in written]
    assert "SYNTHETIC" in index["caption"] and "random" in index["caption"] and "train seed 0" in index["caption"]
    first = {p.name: p.read_bytes() for p in written}
    again = write_attention_examples(out, images, [r.words for r in reports], attention,
                                     assistant.provenance.as_dict(), ["CXR1", "CXR2"], max_studies=2,
                                     words_per_study=2)
    assert [p.name for p in again] == list(first)
    assert sorted(p.name for p in out.iterdir()) == sorted([*first, "index.json"])
    # a dict provenance gives the same caption, so the same bytes
    assert {p.name: p.read_bytes() for p in again} == first
    assert zlib.crc32(b"".join(first.values())) == zlib.crc32(b"".join(p.read_bytes() for p in again))
