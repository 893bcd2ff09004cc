"""The DVC pipeline end to end, run by DVC itself in a scratch copy of the project.

The copy holds the project's tracked and not-ignored files (what a clone has), becomes its own git
repository, and runs `dvc exp run` / `dvc repro` with the project's virtual environment on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.pipeline

SYNTHETIC_REPORTS = 40


def _run(cmd: list[str], cwd: Path, timeout: float = 1200, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _dvc(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], cwd=cwd, **kw)


def _copy_project(src: Path, dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    _run(["git", "init", "-q"], cwd=dest)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "add", "-A"], cwd=dest)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "copy"], cwd=dest)
    return dest


def _set_params(repo: Path, updates: dict) -> None:
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for dotted, value in updates.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def synthetic_repo(project_root: Path, tmp_path_factory) -> Path:
    """A copy of the project after `dvc exp run` on the synthetic source (the README's command)."""
    repo = _copy_project(project_root, tmp_path_factory.mktemp("pipeline"))
    _dvc(
        "exp", "run",
        "-S", "download.sources=[synthetic]",
        "-S", f"download.synthetic.n_reports={SYNTHETIC_REPORTS}",
        cwd=repo,
    )
    return repo


def test_synthetic_download_makes_the_archives(synthetic_repo: Path):
    raw = synthetic_repo / "data" / "raw"
    record = json.loads((raw / "source.json").read_text())
    assert record["source"] == "synthetic"
    for name in ("NLMCXR_png.tgz", "NLMCXR_reports.tgz"):
        assert (raw / name).stat().st_size > 0
        sidecar = json.loads((raw / f"{name}.json").read_text())
        assert sidecar["size"] == (raw / name).stat().st_size
    assert not list(synthetic_repo.glob("data/.raw.staging*")), "staging folder left behind"


def test_second_repro_does_nothing(synthetic_repo: Path):
    before = {p: p.stat().st_mtime_ns for p in (synthetic_repo / "data" / "raw").iterdir()}
    result = _dvc("repro", cwd=synthetic_repo)
    assert "Running stage" not in result.stdout, result.stdout
    status = _dvc("status", "--json", cwd=synthetic_repo)
    assert json.loads(status.stdout) == {}, status.stdout
    after = {p: p.stat().st_mtime_ns for p in (synthetic_repo / "data" / "raw").iterdir()}
    assert before == after


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_source_reachable_fails_fast_with_the_synthetic_command(project_root: Path, tmp_path: Path):
    """The default sources (torrent, then https) with every address unreachable, as offline.

    The real hosts are replaced by a closed port on 127.0.0.1 so the test never touches the internet
    even on a machine that has it; the real default was timed by hand (see the README).
    """
    repo = _copy_project(project_root, tmp_path)
    dead = f"http://127.0.0.1:{_closed_port()}"
    peer_timeout = 5
    _set_params(repo, {
        "download.sources": ["torrent", "https"],
        "download.torrent.torrent_url": dead + "/{infohash}.torrent",
        "download.torrent.trackers": [],
        "download.torrent.dht": False,
        "download.torrent.peer_timeout_s": peer_timeout,
        "download.https.urls": {"images": dead + "/NLMCXR_png.tgz", "reports": dead + "/NLMCXR_reports.tgz"},
        "download.https.retries": 2,
        "download.https.backoff_s": 0.2,
    })
    started = time.monotonic()
    result = _dvc("repro", "download", cwd=repo, check=False, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "could not get the IU X-ray archives" in result.stderr, result.stderr
    assert "torrent:" in result.stderr and "https:" in result.stderr, result.stderr
    assert "dvc exp run -S 'download.sources=[synthetic]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert elapsed < peer_timeout + 60, f"took {elapsed:.0f} s"
    assert not (repo / "data" / "raw").exists(), "a failed download left data/raw behind"


def _truth(repo: Path) -> dict:
    return json.loads((repo / "data" / "raw" / "synthetic_truth.json").read_text())


def test_data_counts_match_what_the_generator_made(synthetic_repo: Path):
    truth = _truth(synthetic_repo)
    data = json.loads((synthetic_repo / "metrics" / "data.json").read_text())
    extract = json.loads((synthetic_repo / "metrics" / "extract.json").read_text())
    reports = truth["reports"].values()
    with_findings = [r for r in reports if r["sections"]["FINDINGS"]]
    assert data["data_source"] == extract["data_source"] == "synthetic"
    assert extract["reports"] == data["counts"]["reports"] == truth["n_reports"] == SYNTHETIC_REPORTS
    assert extract["images"] == data["counts"]["images_listed"] == truth["n_images"]
    assert extract["skipped"] == {}
    assert data["counts"]["reports_with_target_text"] == len(with_findings)
    assert data["dropped"].get("no usable image", 0) == sum(not r["images"] for r in with_findings)
    assert data["counts"]["studies_single_view_used_twice"] == sum(len(r["images"]) == 1 for r in with_findings)
    assert data["counts"]["studies_with_more_than_two_images"] == sum(len(r["images"]) > 2 for r in with_findings)
    kept = sum(bool(r["images"]) for r in with_findings)
    assert sum(data["counts"][f"studies_{s}"] for s in ("train", "val", "test")) == kept
    assert extract["projection_truth"] == "synthetic ground truth"
    assert 0.5 < extract["projection_rule_accuracy"]["accuracy"] <= 1.0


def _hashes(repo: Path, folder: str) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((repo / folder).iterdir())}


def test_rerunning_extract_and_prepare_gives_identical_bytes(synthetic_repo: Path):
    before = {f: _hashes(synthetic_repo, f) for f in ("data/interim", "data/prepared")}
    metrics_before = (synthetic_repo / "metrics" / "data.json").read_text()
    _dvc("repro", "--force", "--single-item", "extract", cwd=synthetic_repo)
    _dvc("repro", "--force", "--single-item", "prepare", cwd=synthetic_repo)
    after = {f: _hashes(synthetic_repo, f) for f in ("data/interim", "data/prepared")}
    assert before == after
    assert (synthetic_repo / "metrics" / "data.json").read_text() == metrics_before


def test_changing_the_target_reruns_prepare_but_not_extract_or_download(synthetic_repo: Path):
    result = _dvc("exp", "run", "-S", "text.target=impression", cwd=synthetic_repo)
    ran = result.stdout
    assert "Running stage 'prepare'" in ran, ran
    assert "Running stage 'extract'" not in ran and "Running stage 'download'" not in ran, ran
    data = json.loads((synthetic_repo / "metrics" / "data.json").read_text())
    assert data["target"] == "impression"
    with_impression = [r for r in _truth(synthetic_repo)["reports"].values() if r["sections"]["IMPRESSION"]]
    assert data["counts"]["reports_with_target_text"] == len(with_impression)
