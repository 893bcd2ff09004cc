"""The Streamlit page, run headless with streamlit.testing: the report, the findings, the maps,
and a clear message (never a traceback) for every bad upload."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from app_project import app_project, xray_png  # noqa: E402, F401
from streamlit.testing.v1 import AppTest  # noqa: E402

from cxrgen.assistant import generate  # noqa: E402

APP = Path(generate.__file__).with_name("app.py")


@pytest.fixture
def app(app_project, monkeypatch):
    monkeypatch.setenv("CXRGEN_PROJECT", str(app_project))
    return AppTest.from_file(str(APP), default_timeout=180).run()


def upload(at: AppTest, frontal: bytes | None, lateral: bytes | None = None, name: str = "view.png") -> AppTest:
    for key, data in (("frontal", frontal), ("lateral", lateral)):
        at.file_uploader(key=key).set_value(None if data is None else (f"{key}-{name}", data, "image/png"))
    at.run()
    return at.button(key="generate").click().run()


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def report_text(at: AppTest) -> str:
    html = next(m.value for m in at.markdown if 'id="cxrgen-report"' in m.value)
    return html.split(">", 1)[1].rsplit("</div>", 1)[0]


def test_the_page_says_what_the_model_was_trained_on(app):
    assert not app.exception and not app.error
    assert any("not a diagnosis" in text for text in texts(app.info))
    warnings = " ".join(texts(app.warning))
    assert "SYNTHETIC" in warnings and "RANDOMLY initialised" in warnings
    trained_on = " ".join(texts(app.markdown))
    assert "Data source: **SYNTHETIC data**" in trained_on and "Split: **random 70/10/20 (seed 0)**" in trained_on
    assert app.button(key="generate").disabled   # nothing uploaded yet


def test_two_views_give_a_report_findings_and_a_map_per_word(app):
    upload(app, xray_png("frontal"), xray_png("lateral", mode="I;16"))   # a 16-bit PNG just works
    assert not app.exception and not app.error
    text = report_text(app)
    assert text and text != "(empty)"
    assert any(s.value == "Findings" for s in app.subheader)
    if generate.labeler_module() is None:
        assert any("cxrgen.data.labeler not yet available" in t for t in texts(app.info))
    words = app.selectbox(key="word")
    assert " ".join(option.split(". ", 1)[1] for option in words.options) == text
    assert len(app.image) == 1
    words.select(len(words.options) - 1).run()
    assert not app.exception and len(app.image) == 1
    # settings changed → the old report is not shown as if it were the new one
    app.radio(key="decoding").set_value("greedy").run()
    assert any("press Generate report" in t for t in texts(app.info))
    app.button(key="generate").click().run()
    assert report_text(app) and "greedy" in " ".join(s.value for s in app.subheader)


def test_one_view_works_with_a_note(app):
    upload(app, xray_png("frontal"))
    assert not app.exception and not app.error and report_text(app)
    assert any("used as both the frontal and the lateral" in t for t in texts(app.warning))


def test_the_baseline_has_no_maps_but_says_so(app):
    app.radio(key="model").set_value("baseline").run()
    upload(app, xray_png("frontal"), xray_png("lateral"))
    assert not app.exception and report_text(app)
    assert any("no attention map" in t for t in texts(app.info))


@pytest.mark.parametrize("data, problem", [
    (b"GIF89a? not really", "not an image"),
    (b"plain text, named like an image", "not an image"),
    (xray_png()[:400], "truncated"),
])
def test_bad_uploads_are_a_message(app, data, problem):
    upload(app, data, xray_png("lateral"), name="bad.png")
    assert not app.exception
    assert [e for e in texts(app.error) if "frontal-bad.png" in e and problem in e]


def test_a_very_large_file_is_a_message(app_project, monkeypatch):
    """(The server refuses uploads over the limit before they reach the page; the page checks again.)"""
    monkeypatch.setenv("CXRGEN_PROJECT", str(app_project))
    monkeypatch.setattr(generate, "MAX_FILE_BYTES", 1000)
    at = upload(AppTest.from_file(str(APP), default_timeout=180).run(), xray_png("frontal"))
    assert not at.exception
    assert any("file too large" in e and "frontal-view.png" in e for e in texts(at.error))


def test_a_missing_model_is_a_message(app_project, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(app_project, project, ignore=shutil.ignore_patterns("spatial-*.npy", "pooled-*.npy", "dvclive", "attention.keras"))
    monkeypatch.setenv("CXRGEN_PROJECT", str(project))
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert not at.exception
    assert any("attention.keras: model file not found" in e for e in texts(at.error))
    assert any("not a diagnosis" in t for t in texts(at.info))
    at.radio(key="model").set_value("baseline").run()   # the other model still works
    assert not at.error and not at.exception


def test_the_beam_width_starts_at_the_projects_setting(app_project, tmp_path, monkeypatch):
    import yaml

    project = tmp_path / "project"
    shutil.copytree(app_project, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.setdefault("decode", {})["beam_width"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("CXRGEN_PROJECT", str(project))
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert not at.exception
    assert at.slider(key="beam").value == 5        # as `cxrgen generate` would decode
    params["decode"]["beam_width"] = 1             # greedy in params.yaml: the page starts greedy
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert at.radio(key="decoding").value == "greedy"
