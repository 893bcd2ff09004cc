"""The https source against a real HTTP server on 127.0.0.1 (Range/206, If-Range, ETag, drops)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import random
import re
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cxrgen.data.archives import IMAGES_ARCHIVE, REPORTS_ARCHIVE, deterministic_tarinfo
from cxrgen.data.sources import https
from cxrgen.errors import BadInput, SourceUnavailable

IMAGES_PATH = "/imgs/collections/NLMCXR_png.tgz"
REPORTS_PATH = "/imgs/collections/NLMCXR_reports.tgz"


def _tgz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            tar.addfile(deterministic_tarinfo(name, len(data)), io.BytesIO(data))
    return raw.getvalue()


def _images_tgz(seed: int = 0) -> bytes:
    # Random (incompressible) member bodies so the archive is big enough to drop halfway.
    rng = random.Random(seed)
    return _tgz({f"CXR{i}_IM-000{i}-1001.png": rng.randbytes(40_000) for i in range(1, 4)})


def _reports_tgz() -> bytes:
    xml = "<eCitation><IUXRId id='{}'/></eCitation>"
    return _tgz({f"ecgen-radiology/{i}.xml": xml.format(i).encode() for i in (1, 2)})


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


class FileServer:
    """What the test server serves and what it saw; the tests change it between fetches."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.drop_once_after: dict[str, int] = {}  # path -> bytes sent before closing the socket
        self.stall_once_after: dict[str, int] = {}  # path -> bytes sent before going silent
        self.ignore_range = False
        self.fail_status: int | None = None
        self.fail_after_drop = False  # after the drop, answer 503 to everything (server went down)
        self.release = threading.Event()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and path in (None, r["path"])]

    def cfg(self, **extra) -> dict:
        urls = {"images": self.url(IMAGES_PATH), "reports": self.url(REPORTS_PATH)}
        return {"urls": urls, "retries": 2, "backoff_s": 0.01, "timeout_s": 5, **extra}


class RangeHandler(BaseHTTPRequestHandler):
    server_state: FileServer  # set on the per-test subclass

    def log_message(self, *args) -> None:  # keep test output readable
        pass

    def do_GET(self) -> None:
        state = self.server_state
        body = state.files.get(self.path)
        seen = {
            "method": "GET",
            "path": self.path,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
        }
        state.requests.append(seen)
        if state.fail_status or body is None:
            seen["status"] = state.fail_status or 404
            self.send_error(seen["status"])
            return
        etag, start, status = _etag(body), 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", seen["range"] or "")
        if wanted and not state.ignore_range and seen["if_range"] in (None, etag):
            start, status = int(wanted[1]), 206
            if start >= len(body):
                seen["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        seen["status"] = status
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if (cut := state.drop_once_after.pop(self.path, None)) is not None:
            self.wfile.write(payload[:cut])
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the body end early
            self.close_connection = True
            if state.fail_after_drop:
                state.fail_status = 503
            return
        if (cut := state.stall_once_after.pop(self.path, None)) is not None:
            self.wfile.write(payload[:cut])
            state.release.wait(10)  # silent until the test ends; the client must time out
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    state = FileServer()
    handler = type("Handler", (RangeHandler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    httpd.handle_error = lambda request, address: None  # dropped clients are expected here
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.files = {IMAGES_PATH: _images_tgz(), REPORTS_PATH: _reports_tgz()}
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dirs(tmp_path):
    cache = tmp_path / "downloads"
    cache.mkdir()

    def raw(name: str = "raw") -> Path:
        path = tmp_path / name
        path.mkdir()
        return path

    return raw, cache


def _assert_served(server: FileServer, raw: Path) -> None:
    for path, name in ((IMAGES_PATH, IMAGES_ARCHIVE), (REPORTS_PATH, REPORTS_ARCHIVE)):
        body = server.files[path]
        assert (raw / name).read_bytes() == body
        sidecar = json.loads((raw / f"{name}.json").read_text())
        assert sidecar == {"file": name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_download_is_byte_identical_with_sidecars(server, dirs):
    raw_dir, cache = dirs
    raw = raw_dir()
    record = https.fetch(server.cfg(), raw, cache)
    _assert_served(server, raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [IMAGES_ARCHIVE, IMAGES_ARCHIVE + ".json", REPORTS_ARCHIVE, REPORTS_ARCHIVE + ".json"]
    )
    assert record["source"] == "https" and record["layout"] == "nlmcxr"
    assert record["files"] == {"images": IMAGES_ARCHIVE, "reports": REPORTS_ARCHIVE}
    assert record["sha256"]["images"] == hashlib.sha256(server.files[IMAGES_PATH]).hexdigest()
    json.dumps(record)  # JSON-able
    assert [r["range"] for r in server.gets()] == [None, None]
    assert not list((cache / "https").glob("*.partial*"))


def test_dropped_connection_resumes_with_range(server, dirs):
    raw_dir, cache = dirs
    half = len(server.files[IMAGES_PATH]) // 2
    server.drop_once_after[IMAGES_PATH] = half
    https.fetch(server.cfg(), raw := raw_dir(), cache)
    _assert_served(server, raw)
    image_gets = server.gets(IMAGES_PATH)
    assert [(r["range"], r["status"]) for r in image_gets] == [(None, 200), (f"bytes={half}-", 206)]
    assert image_gets[1]["if_range"] == _etag(server.files[IMAGES_PATH])


def test_stalled_connection_times_out_and_resumes(server, dirs):
    raw_dir, cache = dirs
    server.stall_once_after[IMAGES_PATH] = 1000
    started = time.monotonic()
    https.fetch(server.cfg(timeout_s=0.5), raw := raw_dir(), cache)
    assert time.monotonic() - started < 8
    _assert_served(server, raw)
    assert [r["range"] for r in server.gets(IMAGES_PATH)] == [None, "bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(server, dirs):
    raw_dir, cache = dirs
    server.ignore_range = True
    server.drop_once_after[IMAGES_PATH] = 5000
    https.fetch(server.cfg(), raw := raw_dir(), cache)
    _assert_served(server, raw)
    seen = [(r["range"], r["status"]) for r in server.gets(IMAGES_PATH)]
    assert seen == [(None, 200), ("bytes=5000-", 200)]


def _interrupted_run(server: FileServer, raw: Path, cache: Path, cut: int) -> None:
    """A first run that fails: the connection drops after `cut` bytes, then the server answers 503."""
    server.drop_once_after[IMAGES_PATH] = cut
    server.fail_after_drop = True
    with pytest.raises(SourceUnavailable) as info:
        # retries=1: the drop made progress, then two 503 tries without progress -> give up
        https.fetch(server.cfg(retries=1), raw, cache)
    assert "503" in str(info.value) and "the next run resumes" in str(info.value)
    assert (cache / "https" / f"{IMAGES_ARCHIVE}.partial").stat().st_size == cut
    assert list(raw.iterdir()) == []
    server.fail_status = None
    server.fail_after_drop = False


def test_partial_from_an_interrupted_run_is_resumed(server, dirs):
    raw_dir, cache = dirs
    cut = len(server.files[IMAGES_PATH]) // 3
    _interrupted_run(server, raw_dir("raw1"), cache, cut)
    https.fetch(server.cfg(), raw := raw_dir("raw2"), cache)
    _assert_served(server, raw)
    last = server.gets(IMAGES_PATH)[-1]
    assert (last["range"], last["status"]) == (f"bytes={cut}-", 206)


def test_file_changed_between_runs_restarts_instead_of_stitching(server, dirs):
    raw_dir, cache = dirs
    old_etag = _etag(server.files[IMAGES_PATH])
    _interrupted_run(server, raw_dir("raw1"), cache, len(server.files[IMAGES_PATH]) // 2)
    server.files[IMAGES_PATH] = _images_tgz(seed=1)  # same size, other bytes, other ETag
    https.fetch(server.cfg(), raw := raw_dir("raw2"), cache)
    _assert_served(server, raw)
    last = server.gets(IMAGES_PATH)[-1]
    assert last["if_range"] == old_etag and last["status"] == 200


def test_changed_byte_is_caught_by_the_expected_sha256(server, dirs):
    raw_dir, cache = dirs
    good = server.files[IMAGES_PATH]
    expected = hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    server.files[IMAGES_PATH] = bytes(bad)
    actual = hashlib.sha256(bad).hexdigest()
    raw = raw_dir()
    with pytest.raises(BadInput) as info:
        https.fetch(server.cfg(sha256={"images": expected, "reports": None}), raw, cache)
    message = str(info.value)
    assert IMAGES_ARCHIVE in message and expected in message and actual in message
    assert list(raw.iterdir()) == []
    assert list((cache / "https").iterdir()) == []  # the bad download is deleted


def test_wrong_kind_of_archive_is_refused_and_not_cached(server, dirs):
    raw_dir, cache = dirs
    server.files[IMAGES_PATH] = server.files[REPORTS_PATH]
    raw = raw_dir()
    with pytest.raises(BadInput, match="wrong kind of archive") as info:
        https.fetch(server.cfg(), raw, cache)
    assert IMAGES_PATH in str(info.value)
    assert list(raw.iterdir()) == []
    assert not (cache / "https" / IMAGES_ARCHIVE).exists()


def test_cached_download_is_reused_and_checked_against_its_sidecar(server, dirs, caplog):
    raw_dir, cache = dirs
    first = https.fetch(server.cfg(), raw_dir("raw1"), cache)
    assert len(server.gets()) == 2
    second = https.fetch(server.cfg(), raw2 := raw_dir("raw2"), cache)
    assert len(server.gets()) == 2  # no new GET: both archives came from the cache
    assert first == second
    _assert_served(server, raw2)

    cached = cache / "https" / IMAGES_ARCHIVE
    corrupted = bytearray(cached.read_bytes())
    corrupted[100] ^= 0x01
    cached.write_bytes(bytes(corrupted))
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.sources.https"):
        https.fetch(server.cfg(), raw3 := raw_dir("raw3"), cache)
    assert [r["path"] for r in server.gets()][2:] == [IMAGES_PATH]  # only the bad one again
    _assert_served(server, raw3)
    warnings = [r.getMessage() for r in caplog.records if "downloading it again" in r.getMessage()]
    assert len(warnings) == 1 and IMAGES_ARCHIVE in warnings[0] and "sha256" in warnings[0]


def test_missing_file_is_unavailable_without_retries(server, dirs):
    raw_dir, cache = dirs
    del server.files[IMAGES_PATH]
    with pytest.raises(SourceUnavailable, match="HTTP 404"):
        https.fetch(server.cfg(), raw_dir(), cache)
    assert len(server.gets()) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_gives_up_quickly(dirs):
    raw_dir, cache = dirs
    port = _closed_port()
    urls = {kind: f"http://127.0.0.1:{port}/{kind}.tgz" for kind in ("images", "reports")}
    raw = raw_dir()
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as info:
        https.fetch({"urls": urls, "retries": 2, "backoff_s": 0.05}, raw, cache)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert message.startswith("could not reach 127.0.0.1 (") and message.endswith("after 3 tries")
    assert "\n" not in message
    assert list(raw.iterdir()) == []


def test_defaults_give_up_within_seconds_when_offline(dirs):
    raw_dir, cache = dirs
    port = _closed_port()
    urls = {kind: f"http://127.0.0.1:{port}/{kind}.tgz" for kind in ("images", "reports")}
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"after 4 tries"):
        https.fetch({"urls": urls}, raw_dir(), cache)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"urls": {"images": "ftp://x/y.tgz"}}, "urls.images"),
        ({"sha256": {"images": "abc"}}, "sha256.images"),
        ({"retries": -1}, "retries"),
        ({"timeout_s": "soon"}, "timeout_s"),
    ],
)
def test_bad_settings_name_the_key(cfg, key, dirs):
    raw_dir, cache = dirs
    with pytest.raises(BadInput, match=re.escape(key)):
        https.fetch(cfg, raw_dir(), cache)


def test_partial_of_another_url_is_not_resumed(server, dirs):
    raw_dir, cache = dirs
    _interrupted_run(server, raw_dir("raw1"), cache, 4000)
    moved = "/mirror/NLMCXR_png.tgz"
    server.files[moved] = server.files[IMAGES_PATH]
    cfg = server.cfg()
    cfg["urls"]["images"] = server.url(moved)
    https.fetch(cfg, raw := raw_dir("raw2"), cache)
    assert [(r["range"], r["status"]) for r in server.gets(moved)] == [(None, 200)]
    assert (raw / IMAGES_ARCHIVE).read_bytes() == server.files[moved]
