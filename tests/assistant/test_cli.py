"""The `cxrgen` command: one study, a folder of studies (the real sample's 5 images), errors, the app command."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from app_project import app_project, xray_png  # noqa: E402, F401

from cxrgen.assistant.cli import app_command, main  # noqa: E402

CXRGEN = Path(sys.executable).with_name("cxrgen")


def test_one_study_prints_report_findings_and_provenance(app_project, tmp_path, capsys):
    (tmp_path / "f.png").write_bytes(xray_png("frontal"))
    (tmp_path / "l.png").write_bytes(xray_png("lateral", mode="RGBA"))
    assert main(["generate", str(tmp_path / "f.png"), str(tmp_path / "l.png"), "--project", str(app_project),
                 "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "Report (attention model, beam search, width 2):" in out
    assert "Findings:" in out or "Findings: not available (cxrgen.data.labeler not yet available)" in out
    assert "Provenance: attention model · trained on SYNTHETIC data · feature weights random" in out
    assert "split random 70/10/20 (seed 0) · train seed 0" in out
    assert out.count("WARNING:") == 2 and "not a diagnosis" in out
    assert main(["generate", str(tmp_path / "f.png"), "--model", "baseline", "--greedy",
                 "--project", str(app_project)]) == 0
    out = capsys.readouterr().out
    assert "Report (baseline model, greedy):" in out and "used as both the frontal and the lateral" in out


def test_the_real_sample_through_the_cli(app_project, shared_sample, tmp_path, capsys):
    images = shared_sample / "images"
    out_csv = tmp_path / "reports.csv"
    assert main(["generate", "--folder", str(images), "--out", str(out_csv), "--project", str(app_project),
                 "--greedy"]) == 0
    rows = {row["study"]: row for row in csv.DictReader(out_csv.open())}
    assert set(rows) == {"CXR1900_IM-0584", "CXR3_IM-1384", "CXR7_IM-2263"}
    assert rows["CXR7_IM-2263"]["frontal"] == "CXR7_IM-2263-1001.png"
    assert rows["CXR7_IM-2263"]["lateral"] == "CXR7_IM-2263-2001.png"
    assert rows["CXR3_IM-1384"]["single_view"] == "True" and rows["CXR1900_IM-0584"]["single_view"] == "False"
    assert all(row["report"] and row["data_source"] == "synthetic" and row["weights"] == "random" for row in rows.values())
    captured = capsys.readouterr()
    assert "3 of 3 studies" in captured.out and "studies" in captured.err   # the progress bar
    # one real image, one study
    assert main(["generate", str(images / "CXR3_IM-1384-1001.png"), "--project", str(app_project)]) == 0
    assert "Report (attention model, beam search, width 3)" in capsys.readouterr().out


def test_a_bad_file_in_a_folder_is_one_row_with_its_error(app_project, tmp_path, capsys):
    folder = tmp_path / "studies"
    (folder / "good").mkdir(parents=True)
    (folder / "bad").mkdir()
    (folder / "good" / "a.png").write_bytes(xray_png())
    (folder / "bad" / "a.png").write_bytes(b"not a png")
    # the others are written, but the exit status says that not every study went through
    assert main(["generate", "--folder", str(folder), "--out", str(tmp_path / "r.csv"), "--project",
                 str(app_project), "--greedy"]) == 1
    rows = {row["study"]: row for row in csv.DictReader((tmp_path / "r.csv").open())}
    assert rows["bad"]["error"].endswith("a.png: not an image (PNG, JPEG or DICOM expected)") and not rows["bad"]["report"]
    assert rows["good"]["report"]
    err = capsys.readouterr().err
    assert "study bad left out" in err
    assert "1 of 2 studies left out" in err and "bad: " in err and "not an image" in err


def test_errors_are_one_line_from_the_installed_command(app_project, tmp_path):
    """Through the console script; these are refused before TensorFlow loads, so they are quick."""
    def run(*args):
        result = subprocess.run([str(CXRGEN), *args], capture_output=True, text=True, timeout=60)
        return result.returncode, result.stderr.strip().splitlines()

    code, err = run("generate", str(tmp_path / "missing.png"), "--project", str(app_project))
    assert code == 1 and err == [f"cxrgen: error: {tmp_path / 'missing.png'}: file not found"]
    project = tmp_path / "project"
    shutil.copytree(app_project, project, ignore=shutil.ignore_patterns("spatial-*.npy", "pooled-*.npy", "dvclive", "attention.keras"))
    (tmp_path / "f.png").write_bytes(xray_png())
    code, err = run("generate", str(tmp_path / "f.png"), "--project", str(project))
    assert code == 1 and len(err) == 1 and "attention.keras: model file not found" in err[0]
    code, err = run("generate", "--folder", str(tmp_path))
    assert code == 2 and "--folder needs --out" in err[-1]
    code, err = run("generate", str(tmp_path / "f.png"), "--samples", "-1")
    assert code == 2 and "--samples must be 0 or more" in err[-1]
    code, err = run("generate", str(tmp_path / "f.png"), "--greedy", "--samples", "5")
    assert code == 2 and "--samples goes with beam search" in err[-1]


def test_the_app_command_serves_on_localhost(tmp_path):
    command = app_command(8765, tmp_path)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("cxrgen/assistant/app.py")
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8765"
    assert command[-2:] == ["--project", str(tmp_path)]
    with pytest.raises(SystemExit):
        main(["app", "--port", "not-a-number"])
    assert main(["app", "--project", str(tmp_path / "nowhere")]) == 1
