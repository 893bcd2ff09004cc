"""Files every phase writes and reads: atomic writes, JSON, checksums.

Every file the pipeline writes goes to a temporary name in the same folder and is renamed
only when complete, so an interrupted or refused run leaves nothing partial behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from cxrgen.errors import BadInput

CHUNK = 1 << 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_partials(target: Path) -> None:
    """Temporary files of `target` left by a process that no longer runs (killed with SIGKILL, or
    the machine went down): nothing renamed them, nothing else would remove them."""
    prefix = f".{target.name}.partial-"
    with os.scandir(target.parent) as entries:
        for entry in entries:
            pid = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
            stale = pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))
            if stale and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    A process killed outright (SIGKILL) leaves its `.<name>.partial-<pid>`, never a partial file
    under the final name; the next write of the same target removes such leftovers.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_json(path: str | Path, missing: str) -> dict:
    """A JSON file a stage needs; `missing` says what to do when it is not there (e.g. which stage to run)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(path, missing) from None
    except ValueError as exc:
        raise BadInput(path, f"not valid JSON ({exc})") from None


def write_json_atomic(path: str | Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_of(path: str | Path, progress=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            if progress is not None:
                progress.update(len(block))
    return digest.hexdigest()
