"""atomic_path: the final name appears only when complete; a killed writer's leftovers are removed
by the next write, a running writer's never."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxrgen.files import atomic_path


def test_leftovers_of_dead_writers_go_those_of_live_ones_stay(tmp_path):
    target = tmp_path / "out.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".out.bin.partial-{dead_pid}").write_bytes(b"half")
        (tmp_path / f".out.bin.partial-{live.pid}").write_bytes(b"being written")
        (tmp_path / ".other.bin.partial-1").write_bytes(b"another target's")
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"complete")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == [".other.bin.partial-1", f".out.bin.partial-{live.pid}", "out.bin"]
        assert target.read_bytes() == b"complete"
    finally:
        live.kill()
        live.wait()


def test_a_failed_block_leaves_neither_the_target_nor_its_temporary_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
