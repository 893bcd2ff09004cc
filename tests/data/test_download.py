"""The download orchestrator: source order, fall-through, the offline message, nothing partial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrgen.data.download import LOCAL_COMMAND, SYNTHETIC_COMMAND, NoSourceWorked, run_download
from cxrgen.errors import BadInput, CxrgenError

SMALL_SYNTHETIC = {"n_reports": 6, "seed": 1, "image_width": 128}


def _params(tmp_path: Path, sources, **sections) -> dict:
    return {"sources": sources, "cache_dir": str(tmp_path / "downloads"), **sections}


def test_unavailable_source_falls_through_to_the_next(tmp_path, capsys):
    raw = tmp_path / "data" / "raw"
    record = run_download(
        _params(tmp_path, ["local", "synthetic"], local={"path": None}, synthetic=SMALL_SYNTHETIC), raw
    )
    assert record["source"] == "synthetic"
    assert json.loads((raw / "source.json").read_text())["source"] == "synthetic"
    err = capsys.readouterr().err
    assert "local:" in err and "moving on" in err


def test_no_source_gives_what_was_tried_and_the_synthetic_command(tmp_path):
    raw = tmp_path / "data" / "raw"
    with pytest.raises(NoSourceWorked) as info:
        run_download(_params(tmp_path, ["local"], local={"path": None}), raw)
    message = str(info.value)
    assert "local:" in message and SYNTHETIC_COMMAND in message and LOCAL_COMMAND in message
    assert not raw.exists()
    assert not list(raw.parent.glob(".raw.staging*"))


@pytest.mark.parametrize("sources", [[], ["ftp"], "nonsense"])
def test_bad_sources_setting_is_refused(tmp_path, sources):
    with pytest.raises(CxrgenError, match="download.sources"):
        run_download(_params(tmp_path, sources), tmp_path / "raw")


def test_bad_input_stops_and_keeps_the_previous_raw_folder(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("earlier result")
    bad = tmp_path / "mine"
    bad.mkdir()
    (bad / "NLMCXR_png.tgz").write_bytes(b"this is not a tar archive at all")
    (bad / "NLMCXR_reports.tgz").write_bytes(b"nor is this")
    with pytest.raises(BadInput) as info:
        run_download(_params(tmp_path, ["local", "synthetic"], local={"path": str(bad)}), raw)
    assert "NLMCXR_" in str(info.value)
    assert (raw / "keep.txt").read_text() == "earlier result"
    assert not list(raw.parent.glob(".raw.staging*"))
