"""Every params.yaml section a stage reads refuses a key it does not know, naming params.yaml and the
key; the project's params.yaml, with the settings CI's pipeline run changes, is accepted by all."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline import CI_OVERRIDES

from cxrgen.data.download import DOWNLOAD_KEYS, run_download
from cxrgen.data.extract import extract_settings
from cxrgen.data.prepare import SECTION_KEYS, prepare
from cxrgen.data.sources import https, local, synthetic, torrent
from cxrgen.errors import BadInput
from cxrgen.params import check_keys

PROJECT = Path(__file__).resolve().parents[1]


def _project_params(overrides: list[str] = ()) -> dict:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for setting in overrides:   # as `dvc exp run -S key.path=value` sets them
        dotted, value = setting.split("=", 1)
        *path, key = dotted.split(".")
        section = params
        for part in path:
            section = section.setdefault(part, {})
        section[key] = yaml.safe_load(value)
    return params


def _with(params: dict, dotted: str, value) -> dict:
    params = copy.deepcopy(params)
    *path, key = dotted.split(".")
    section = params
    for part in path:
        section = section[part]
    section[key] = value
    return params


@pytest.mark.parametrize("overrides", [[], CI_OVERRIDES], ids=["params.yaml", "with CI's overrides"])
def test_the_project_settings_pass_every_check(overrides):
    params = _project_params(overrides)
    download = params["download"]
    check_keys(download, DOWNLOAD_KEYS, "download")
    https._settings(download["https"])
    check_keys(download["local"], local.LOCAL_KEYS, "download.local")
    local._pins(download["local"])
    torrent.settings_from_cfg(download["torrent"])
    check_keys(download["synthetic"], synthetic.DEFAULTS, "download.synthetic")
    extract_settings(params)
    for name, known in SECTION_KEYS.items():
        check_keys(params[name], known, name)
    from cxrgen.features.densenet import FEATURES_KEYS
    check_keys(params["features"], FEATURES_KEYS, "features")
    check_keys(params["labeler"], ("sample_dir",), "labeler")


def test_the_project_settings_pass_the_model_checks():
    """(Imports TensorFlow: the train, model, decode and evaluate sections are checked there.)"""
    from cxrgen.evaluation.evaluate import EVALUATE_DEFAULTS
    from cxrgen.modeling.decode import DECODE_DEFAULTS
    from cxrgen.modeling.models import DEFAULT_SIZES
    from cxrgen.modeling.train import train_settings
    from cxrgen.params import with_defaults

    for overrides in ([], CI_OVERRIDES):
        params = _project_params(overrides)
        train_settings(params)
        with_defaults(params, "decode", DECODE_DEFAULTS)
        with_defaults(params, "evaluate", EVALUATE_DEFAULTS)
        check_keys(params["model"], DEFAULT_SIZES, "model")
        for name, sizes in params["model"].items():
            check_keys(sizes, DEFAULT_SIZES[name], f"model.{name}")


def _empty_tables():
    reports = pd.DataFrame(columns=["report_id", "findings", "impression", "mesh_major", "image_ids",
                                    "source_file"])
    images = pd.DataFrame(columns=["image_id", "report_id", "position", "projection", "archive", "member",
                                   "problem"])
    return reports, images


@pytest.mark.parametrize("dotted", [f"{name}.{known[0]}x" for name, known in SECTION_KEYS.items()])
def test_prepare_refuses_unknown_keys(tmp_path, dotted):
    params = _with(_project_params(), dotted, 1)
    section, key = dotted.split(".")
    with pytest.raises(BadInput, match=rf"^params.yaml: {section} has unknown keys \['{key}'\]"):
        prepare(*_empty_tables(), tmp_path, params)


@pytest.mark.parametrize("dotted, call", [
    ("download.source", lambda p, tmp: run_download(p["download"], tmp / "raw")),
    ("download.https.timeout", lambda p, tmp: https.fetch(p["download"]["https"], tmp, tmp)),
    ("download.local.sha256sum", lambda p, tmp: local.fetch(p["download"]["local"], tmp, tmp)),
    ("extract.max_xml_byte", lambda p, tmp: extract_settings(p)),
])
def test_download_and_extract_refuse_unknown_keys(tmp_path, dotted, call):
    params = _with(_project_params(), dotted, 1)
    where, key = dotted.rsplit(".", 1)
    with pytest.raises(BadInput, match=rf"^params.yaml: {where} has unknown keys \['{key}'\]"):
        call(params, tmp_path)
    assert not (tmp_path / "raw").exists()


def test_extract_bounds_must_be_positive_byte_counts():
    with pytest.raises(BadInput, match=r"extract.max_image_bytes must be a positive number of bytes"):
        extract_settings(_with(_project_params(), "extract.max_image_bytes", "64M"))


@pytest.mark.parametrize("stage, dotted, args", [
    ("labeler", "labeler.sample_folder", []),
    ("train", "model.attenton", ["--model", "attention"]),
    ("features", "features.weight", []),
])
def test_stage_scripts_refuse_unknown_keys_in_one_line(tmp_path, stage, dotted, args):
    params = _with(_project_params(), dotted, {"units": 64} if dotted.startswith("model") else "x")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(PROJECT / "stages" / f"{stage}.py"), "--params", "params.yaml",
                             *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    where, key = dotted.rsplit(".", 1)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"{stage}: error: params.yaml: {where} has unknown keys ['{key}']" in result.stderr
