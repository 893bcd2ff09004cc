"""Source `https`: the two archives from NLM Open-i over HTTPS, resumable and verified.

A download streams into cache_dir/https/<archive>.partial. A dropped connection is resumed with an
HTTP Range request, in the same run (the retries) and in a later one (from the .partial left
behind). If-Range carries the server's ETag or Last-Modified, so a server whose file changed in
between sends the new file whole instead of the rest of it glued onto the old start. A server that
ignores Range (200 instead of 206) is read again from byte 0.

A complete download stays in cache_dir/https with its size/sha256 sidecar; later runs reuse it
after checking it against that sidecar (and download it again when it does not match).

cfg (params.yaml download.https), all optional:
  urls:      {images: <url>, reports: <url>}  default: the NLM Open-i addresses below
  sha256:    {images: null, reports: null}    expected digests; checked when set
  timeout_s: 30     seconds to connect, and the longest silence while reading
  retries:   3      further tries after a try that made no progress (a try that brought new
                    bytes starts the count again, so a long download survives many drops)
  backoff_s: 0.5    wait before the first retry, doubled each time (at most 30 s); offline,
                    the defaults give up after 4 tries and about 4 s
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from cxrgen import __version__
from cxrgen.data.archives import (
    ARCHIVES,
    check_archive,
    sidecar_path,
    verify_sidecar,
    write_sidecar,
)
from cxrgen.errors import BadInput, SourceUnavailable
from cxrgen.files import CHUNK, atomic_path, sha256_of, write_json_atomic
from cxrgen.params import check_keys

DEFAULT_URLS = {
    "images": "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz",
    "reports": "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz",
}
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
USER_AGENT = f"cxrgen/{__version__} (Python urllib)"
# 4xx answers that may succeed later; any other 4xx means the address is wrong: no retry.
RETRYABLE_CLIENT_ERRORS = {408, 425, 429}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    urls: dict[str, str]
    sha256: dict[str, str | None]
    timeout_s: float
    retries: int
    backoff_s: float


def _settings(cfg: dict) -> Settings:
    """Read and check cfg; a wrong value is reported against params.yaml."""

    def bad(key: str, problem: str) -> BadInput:
        return BadInput("params.yaml", f"download.https.{key}: {problem}")

    check_keys(cfg, ("urls", "sha256", "timeout_s", "retries", "backoff_s"), "download.https")
    for key in ("urls", "sha256"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise bad(key, f"expected a mapping {{images: ..., reports: ...}}, got {cfg[key]!r}")
    given = {kind: url for kind, url in (cfg.get("urls") or {}).items() if url is not None}
    for kind in sorted(set(given) - set(ARCHIVES)) + sorted(set(cfg.get("sha256") or {}) - set(ARCHIVES)):
        raise bad("urls/sha256", f"unknown archive {kind!r} (expected {sorted(ARCHIVES)})")
    urls = {**DEFAULT_URLS, **given}  # a null URL means the default one
    for kind, url in urls.items():
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise bad(f"urls.{kind}", f"{url!r} is not an http(s) address")
    sha256 = {kind: None for kind in ARCHIVES}
    for kind, value in (cfg.get("sha256") or {}).items():
        if value is not None:
            value = str(value).strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", value):
                raise bad(f"sha256.{kind}", f"{value!r} is not a sha256 (64 hex digits) or null")
        sha256[kind] = value
    try:
        timeout_s = float(cfg.get("timeout_s", DEFAULT_TIMEOUT_S))
        retries = int(cfg.get("retries", DEFAULT_RETRIES))
        backoff_s = float(cfg.get("backoff_s", DEFAULT_BACKOFF_S))
    except (TypeError, ValueError) as exc:
        raise bad("timeout_s/retries/backoff_s", f"not a number ({exc})") from None
    if timeout_s <= 0 or retries < 0 or backoff_s < 0:
        raise bad("timeout_s/retries/backoff_s", "timeout_s must be > 0, retries and backoff_s >= 0")
    return Settings(urls, sha256, timeout_s, retries, backoff_s)


def _bar(desc: str, total: int | None, initial: int = 0) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _state_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


class _Transient(Exception):
    """A try failed in a way another try may fix (network, 5xx, short body)."""


class _Permanent(Exception):
    """The server answered that the file is not there (404 and the like): retrying won't help."""


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Download:
    """One URL into one .partial file, resumable across tries and runs.

    The .partial file's size is the resume offset. Beside it, <name>.partial.json remembers the
    URL, the server's validators (ETag, Last-Modified) and the total size, so a later run can ask
    for the rest of the *same* file.
    """

    def __init__(self, url: str, partial: Path, timeout_s: float):
        self.url = url
        self.partial = partial
        self.state_path = _state_path(partial)
        self.timeout_s = timeout_s
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.total: int | None = None
        self.reached_server = False
        self._load_state()

    # -- state of the partial file -----------------------------------------------------------
    def _load_state(self) -> None:
        """Keep a .partial from an earlier run only when we know which file it is the start of."""
        if not self.partial.exists():
            _remove(self.state_path)
            return
        try:
            state = json.loads(self.state_path.read_text())
            if state["url"] != self.url:
                raise ValueError("another URL")
            self.etag, self.last_modified = state.get("etag"), state.get("last_modified")
            self.total = None if state.get("total") is None else int(state["total"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._start_over()
            return
        if self.total is not None and self.size() > self.total:
            self._start_over()

    def _save_state(self) -> None:
        write_json_atomic(
            self.state_path,
            {"url": self.url, "etag": self.etag, "last_modified": self.last_modified, "total": self.total},
        )

    def _start_over(self) -> None:
        _remove(self.partial, self.state_path)
        self.etag = self.last_modified = self.total = None

    def size(self) -> int:
        return self.partial.stat().st_size if self.partial.exists() else 0

    # -- one try -----------------------------------------------------------------------------
    def _request(self, offset: int) -> urllib.request.Request:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            # If-Range needs a strong validator: a weak ETag (W/...) is not allowed there.
            strong_etag = self.etag if self.etag and not self.etag.startswith("W/") else None
            validator = strong_etag or self.last_modified
            if validator:
                headers["If-Range"] = validator
        return urllib.request.Request(self.url, headers=headers)

    def attempt(self) -> None:
        """Bring the .partial file to the full size, or raise _Transient / _Permanent."""
        offset = self.size()
        try:
            response = urllib.request.urlopen(self._request(offset), timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            self.reached_server = True
            with exc:
                if exc.code == 416 and offset:
                    return self._after_range_refused(exc, offset)
                reason = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code not in RETRYABLE_CLIENT_ERRORS:
                    raise _Permanent(reason) from None
                raise _Transient(reason) from None
        except urllib.error.URLError as exc:  # DNS, refused, TLS: the server was not reached
            raise _Transient(str(exc.reason)) from None
        except (http.client.HTTPException, OSError) as exc:  # connected, then no proper answer
            self.reached_server = True
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        self.reached_server = True
        with response:
            offset = self._accept(response, offset)
            length = response.headers.get("Content-Length")
            end = offset + int(length) if length is not None else self.total
            position = self._stream(response, offset)
        if end is not None and position < end:
            raise _Transient(f"connection closed after {position} of {end} bytes")

    def _accept(self, response, offset: int) -> int:
        """Decide from the status where the body starts; returns that offset."""
        headers = response.headers
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
            total = None if not match or match[3] == "*" else int(match[3])
            same_file = self.total is None or total is None or total == self.total
            if not match or int(match[1]) != offset or not same_file:
                # Not the rest of the file we have: drop it and start again on the next try.
                self._start_over()
                raise _Transient(f"unexpected Content-Range {headers.get('Content-Range')!r}")
            self.total = total if total is not None else self.total
            return offset
        if response.status != 200:
            raise _Transient(f"unexpected HTTP {response.status}")
        if offset:
            # Range ignored, or If-Range said the file changed: this is the whole file.
            log.info("https: %s: server sent the whole file, not the rest; starting from 0", self.url)
        _remove(self.partial)
        length = headers.get("Content-Length")
        self.etag, self.last_modified = headers.get("ETag"), headers.get("Last-Modified")
        self.total = int(length) if length is not None else None
        self._save_state()  # before any byte, so an interrupted run knows what the bytes are
        return 0

    def _stream(self, response, offset: int) -> int:
        name = self.partial.name.removesuffix(".partial")
        position = offset
        with open(self.partial, "ab") as out, _bar(name, self.total, offset) as bar:
            while True:
                try:
                    # read1: what has arrived, so bytes before a stall reach the disk (read(n)
                    # would wait for all n and lose them when the timeout fires)
                    chunk = response.read1(CHUNK)
                except (http.client.HTTPException, OSError) as exc:
                    raise _Transient(f"{type(exc).__name__}: {exc}") from None
                if not chunk:  # http.client returns b"" also when the peer closed early
                    return position
                out.write(chunk)
                position += len(chunk)
                bar.update(len(chunk))

    def _after_range_refused(self, exc: urllib.error.HTTPError, offset: int) -> None:
        """416: either we already have every byte, or our partial is not of this file."""
        match = re.fullmatch(r"bytes\s+\*/(\d+)", (exc.headers.get("Content-Range") or "").strip())
        if match and int(match[1]) == offset and self.total in (None, offset):
            return
        self._start_over()
        raise _Transient("server refused the resume range") from None


def _download(url: str, partial: Path, settings: Settings) -> Path:
    """Download with retries and exponential backoff; the complete .partial file is returned."""
    download = _Download(url, partial, settings.timeout_s)
    host = urlsplit(url).hostname or url
    tries = failures = 0
    best = download.size()  # progress means a new high-water mark, so a server that keeps
    while True:  # restarting from 0 and dropping at the same point cannot loop forever
        tries += 1
        try:
            download.attempt()
            return partial
        except _Permanent as exc:
            raise SourceUnavailable(f"{url} answered {exc}") from None
        except _Transient as exc:
            problem = str(exc)
        size = download.size()
        failures = 0 if size > best else failures + 1
        best = max(best, size)
        if failures > settings.retries:
            if not download.reached_server:
                raise SourceUnavailable(f"could not reach {host} ({problem}) after {tries} tries")
            kept = f"; {size} bytes kept in {partial}, the next run resumes" if size else ""
            raise SourceUnavailable(
                f"download from {host} failed ({problem}) after {tries} tries{kept}"
            )
        wait = min(settings.backoff_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
        log.warning("https: %s: %s; retrying in %.1f s", partial.name.removesuffix(".partial"), problem, wait)
        time.sleep(wait)


def _recorded_sha256(archive: Path) -> str:
    return json.loads(sidecar_path(archive).read_text())["sha256"]


def _cached_archive(kind: str, name: str, cache: Path, settings: Settings) -> Path:
    """The complete, sidecar-checked archive in the cache: reused when intact, else downloaded."""
    url, expected = settings.urls[kind], settings.sha256[kind]
    complete = cache / name
    if complete.exists():
        problem = verify_sidecar(complete)
        if problem is None and expected and _recorded_sha256(complete) != expected:
            problem = f"its sha256 is not the expected {expected}"
        if problem is None:
            return complete
        log.warning("https: cached %s: %s; downloading it again", complete, problem)
        _remove(complete, sidecar_path(complete))

    partial = _download(url, cache / f"{name}.partial", settings)
    with _bar(f"sha256 {name}", partial.stat().st_size) as bar:
        sha = sha256_of(partial, progress=bar)
    if expected and sha != expected:
        _remove(partial, _state_path(partial))
        raise BadInput(
            url,
            f"downloaded {name} has sha256 {sha} but download.https.sha256.{kind} expects {expected}; "
            "the download was deleted",
        )
    os.replace(partial, complete)
    _remove(_state_path(partial))  # only now: until the rename, the state makes the .partial reusable
    write_sidecar(complete, sha)
    return complete


def _copy_hashing(source: Path, dest: Path) -> str:
    """Copy with a progress bar; returns the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(source, "rb") as src, open(tmp, "wb") as out:
        with _bar(f"copy {dest.name}", source.stat().st_size) as bar:
            while block := src.read(CHUNK):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def fetch(cfg: dict, raw_dir: Path, cache_dir: Path) -> dict:
    """Download (or reuse) both archives and place checked copies with sidecars in raw_dir."""
    settings = _settings(cfg or {})
    raw_dir, cache = Path(raw_dir), Path(cache_dir) / "https"
    cache.mkdir(parents=True, exist_ok=True)
    record: dict = {"source": "https", "layout": "nlmcxr", "files": {}, "urls": {}, "sha256": {}, "size": {}}
    placed: list[Path] = []
    try:
        for kind, name in ARCHIVES.items():
            url = settings.urls[kind]
            cached = _cached_archive(kind, name, cache, settings)
            dest = raw_dir / name
            placed += [dest, sidecar_path(dest)]
            sha = _copy_hashing(cached, dest)
            if sha != _recorded_sha256(cached):
                raise BadInput(dest, f"copy of {cached} reads back with another sha256 (disk problem?)")
            try:
                check_archive(dest, kind)
            except BadInput as exc:
                # A complete download that is not the expected archive: do not keep it for reuse.
                _remove(cached, sidecar_path(cached))
                raise BadInput(url, f"{exc.problem}; the download was deleted") from None
            info = write_sidecar(dest, sha)
            record["files"][kind] = name
            record["urls"][kind] = url
            record["sha256"][kind] = info["sha256"]
            record["size"][kind] = info["size"]
    except BaseException:
        _remove(*placed)  # the staging folder must not hold half a result
        raise
    return record
