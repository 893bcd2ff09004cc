"""The features stage killed with SIGKILL while it writes, then run again: no partial file ever sits
under a final output name, the rerun removes the killed run's temporary files, and its outputs are
byte for byte those of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[2]
SIZE = 64
OUTPUTS = ["blank/pooled-00000.npy", "blank/spatial-00000.npy", "features.json",
           "test/pooled-00000.npy", "test/spatial-00000.npy", "train/pooled-00000.npy",
           "train/spatial-00000.npy", "val/pooled-00000.npy", "val/spatial-00000.npy"]

# Runs the stage script in this process after wrapping numpy's array writer: at its KILL_AT-th call it
# writes half of the array's bytes, flushes them to the file and kills its own process with SIGKILL,
# which no handler can catch (as the OOM killer or `kill -9` would). Each shard is two .npy files
# (pooled, then spatial), in the order train, val, test, blank: call 3 is val/pooled-00000.npy,
# after train's two files were renamed into place.
KILLING_RUNNER = """
import io, os, runpy, signal, sys
import numpy as np
original, calls, kill_at = np.lib.format.write_array, [0], int(os.environ["KILL_AT"])
def write_array(fp, array, *args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        buffer = io.BytesIO()
        original(buffer, array, *args, **kwargs)
        fp.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        fp.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(fp, array, *args, **kwargs)
np.lib.format.write_array = write_array
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupted")
    rng = np.random.default_rng(5)
    (root / "data" / "prepared").mkdir(parents=True)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        np.save(root / "data" / "prepared" / f"images_{split}.npy",
                rng.integers(0, 256, (n, 2, SIZE, SIZE), dtype=np.uint8))
    (root / "metrics").mkdir()
    (root / "metrics" / "data.json").write_text(json.dumps({"data_source": "synthetic"}))
    (root / "params.yaml").write_text(
        f"image:\n  size: {SIZE}\nfeatures:\n  weights: random\n  imagenet_path: null\n  batch_size: 3\n  seed: 0\n")
    return root


def _stage(out: str) -> list[str]:
    return [str(PROJECT / "stages" / "features.py"), "--params", "params.yaml", "--prepared", "data/prepared",
            "--data-metrics", "metrics/data.json", "--out", out]


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def reference(project) -> dict[str, bytes]:
    subprocess.run([sys.executable, *_stage("uninterrupted")], cwd=project, env=_env(), check=True,
                   capture_output=True, timeout=300)
    out = project / "uninterrupted"
    assert _files(out) == OUTPUTS
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def _check_after_kill(out: Path, reference: dict[str, bytes]) -> list[str]:
    """Every file under a final name is complete (the uninterrupted run's bytes); the rest are the
    killed process's temporary files. Returns those."""
    leftovers = []
    for name in _files(out):
        if name in reference:
            assert (out / name).read_bytes() == reference[name], f"partial file under the final name {name}"
        else:
            assert Path(name).name.startswith(".") and ".partial-" in name, name
            leftovers.append(name)
    assert not (out / "features.json").exists()  # written last: the run did not finish
    return leftovers


def _rerun_matches(project: Path, out: Path, reference: dict[str, bytes]) -> None:
    subprocess.run([sys.executable, *_stage(out.name)], cwd=project, env=_env(), check=True,
                   capture_output=True, timeout=300)
    assert _files(out) == OUTPUTS   # the killed run's temporary files are gone
    for name, data in reference.items():
        assert (out / name).read_bytes() == data, f"{name} differs from the uninterrupted run"


def test_killed_while_writing_an_output_then_rerun(project, reference):
    out = project / "killed_in_write"
    result = subprocess.run([sys.executable, "-c", KILLING_RUNNER, *_stage(out.name)], cwd=project,
                            env={**_env(), "KILL_AT": "3"}, capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    leftovers = _check_after_kill(out, reference)
    assert (out / "train/spatial-00000.npy").exists()          # finished before the kill
    assert leftovers == [f"val/.pooled-00000.npy.partial-{leftovers[0].rsplit('-', 1)[1]}"]  # half written
    partial = out / leftovers[0]
    assert 0 < partial.stat().st_size < len(reference["val/pooled-00000.npy"])
    _rerun_matches(project, out, reference)


def test_killed_from_outside_at_an_arbitrary_moment_then_rerun(project, reference):
    """kill -9 from another process as soon as the first output is in place: wherever the stage was,
    what it leaves passes the same checks."""
    out = project / "killed_from_outside"
    process = subprocess.Popen([sys.executable, *_stage(out.name)], cwd=project, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "train/spatial-00000.npy").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the stage finished before it could be killed"
    _check_after_kill(out, reference)
    _rerun_matches(project, out, reference)
