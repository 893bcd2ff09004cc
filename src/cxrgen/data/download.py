"""The `download` stage: get the two IU X-ray archives into data/raw from the first source that works.

Sources are tried in the order of `download.sources` in params.yaml. A source that cannot deliver
(no network, no peer, no local path) raises SourceUnavailable and the next one is tried; bad data
(a corrupt or unsafe archive) stops the stage. Everything is written to a staging folder beside
data/raw and renamed into place only when complete, so a failed run leaves no partial data/raw.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import time
from pathlib import Path

from cxrgen.errors import CxrgenError, SourceUnavailable
from cxrgen.files import write_json_atomic
from cxrgen.params import check_keys

SOURCE_NAMES = ("torrent", "https", "local", "synthetic")
DOWNLOAD_KEYS = ("sources", "cache_dir", *SOURCE_NAMES)
SOURCE_RECORD = "source.json"
# Commands a user can paste into a fresh shell in the project root (no activated environment).
SYNTHETIC_COMMAND = ".venv/bin/dvc exp run -S 'download.sources=[synthetic]'"
LOCAL_COMMAND = ".venv/bin/dvc exp run -S 'download.sources=[local]' -S download.local.path=/path/to/your/copy"


class NoSourceWorked(CxrgenError):
    pass


def _log(message: str) -> None:
    print(f"download: {message}", file=sys.stderr, flush=True)


def run_download(params: dict, raw_dir: str | Path) -> dict:
    """Fetch from the first working source in params['sources']; return the source record."""
    raw_dir = Path(raw_dir)
    params = check_keys(params, DOWNLOAD_KEYS, "download")
    sources = params.get("sources") or []
    if isinstance(sources, str):
        sources = [sources]
    unknown = [s for s in sources if s not in SOURCE_NAMES]
    if unknown or not sources:
        raise CxrgenError(
            f"params.yaml download.sources: {sources!r} must be a non-empty list of {list(SOURCE_NAMES)}"
        )
    cache_dir = Path(params.get("cache_dir", "data/downloads"))
    cache_dir.mkdir(parents=True, exist_ok=True)

    staging = raw_dir.with_name(f".{raw_dir.name}.staging")
    tried: list[str] = []
    for name in sources:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        module = importlib.import_module(f"cxrgen.data.sources.{name}")
        started = time.monotonic()
        _log(f"trying source '{name}'")
        try:
            record = module.fetch(params.get(name) or {}, staging, cache_dir)
        except SourceUnavailable as exc:
            shutil.rmtree(staging, ignore_errors=True)
            line = f"{name}: {exc} ({time.monotonic() - started:.0f} s)"
            tried.append(line)
            _log(f"source unavailable, moving on: {line}")
            continue
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        write_json_atomic(staging / SOURCE_RECORD, record)
        shutil.rmtree(raw_dir, ignore_errors=True)
        staging.rename(raw_dir)
        _log(f"archives from '{name}' are in {raw_dir}")
        return record

    raise NoSourceWorked(
        "could not get the IU X-ray archives from any source. Tried:\n  "
        + "\n  ".join(tried)
        + "\nOffline? Run the same pipeline on the synthetic source instead:\n  "
        + SYNTHETIC_COMMAND
        + "\nor, with the archives or extracted folders already on disk (a local source is tried only when"
        " 'local' is in download.sources):\n  "
        + LOCAL_COMMAND
    )
