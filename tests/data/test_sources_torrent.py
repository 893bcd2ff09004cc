"""The torrent source against real libtorrent peers on 127.0.0.1 (no mocks).

Each test builds small synthetic archives, makes .torrent files for them with libtorrent, seeds them
from a second libtorrent session (or serves them from a local HTTP web seed) and downloads them
through the source's own code.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import random
import re
import signal
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import libtorrent as lt
import pytest

from cxrgen.data.archives import (
    IMAGES_ARCHIVE,
    REPORTS_ARCHIVE,
    deterministic_tarinfo,
    verify_sidecar,
)
from cxrgen.data.sources import torrent
from cxrgen.errors import BadInput, SourceUnavailable

pytestmark = pytest.mark.timeout(120)

PIECE_SIZE = 16 * 1024
QUIET_SESSION = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "allow_multiple_connections_per_ip": True,
}


# ------------------------------------------------------------------------------------------------
# Synthetic archives and torrents


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(deterministic_tarinfo(name, len(data)), io.BytesIO(data))


def make_images_archive(folder: Path, megabytes: float = 3, seed: int = 0) -> Path:
    """PNG-named members of random bytes (incompressible, so the .tgz is about `megabytes` big)."""
    rng = random.Random(seed)
    path = folder / IMAGES_ARCHIVE
    folder.mkdir(parents=True, exist_ok=True)
    member_size = 256 * 1024
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for index in range(int(megabytes * 1024 * 1024 / member_size)):
            body = b"\x89PNG\r\n\x1a\n" + rng.randbytes(member_size)
            _add_member(tar, f"CXR{index + 1}_1_IM-0001-{index:04d}.png", body)
    return path


def make_reports_archive(folder: Path) -> Path:
    path = folder / REPORTS_ARCHIVE
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for number in (1, 2):
            xml = f"<eCitation><IUXRId id='{number}'/></eCitation>".encode()
            _add_member(tar, f"ecgen-radiology/{number}.xml", xml)
    return path


def make_torrent(archive: Path, torrent_path: Path, web_seed: str | None = None) -> str:
    """A single-file torrent of `archive`; returns its v1 infohash."""
    # v1 only, like the Academic Torrents ones (libtorrent 2 would make a v1+v2 hybrid).
    creator = lt.create_torrent(lt.list_files(str(archive)), PIECE_SIZE, lt.create_torrent.v1_only)
    lt.set_piece_hashes(creator, str(archive.parent))
    if web_seed:
        creator.add_url_seed(web_seed)
    data = lt.bencode(creator.generate())
    torrent_path.write_bytes(data)
    return str(lt.torrent_info(data).info_hashes().v1)


class Seeder:
    """A libtorrent session on 127.0.0.1 seeding the given torrents from their archives' folders."""

    def __init__(self, torrents: list[tuple[Path, Path]], upload_limit: int = 0):
        self.session = lt.session(dict(QUIET_SESSION))
        self.handles = []
        for torrent_path, archive in torrents:
            params = lt.add_torrent_params()
            params.ti = lt.torrent_info(str(torrent_path))
            params.save_path = str(archive.parent)
            params.flags |= lt.torrent_flags.seed_mode  # the files are complete: skip the full check
            handle = self.session.add_torrent(params)
            handle.set_upload_limit(upload_limit)  # per torrent: loopback peers skip global limits
            self.handles.append(handle)
        deadline = time.monotonic() + 20
        while not all(h.status().is_seeding for h in self.handles):
            assert time.monotonic() < deadline, "seeder did not finish checking its files"
            time.sleep(0.05)
        self.port = self.session.listen_port()

    @property
    def peer(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uploaded(self) -> int:
        return sum(h.status().total_payload_upload for h in self.handles)

    def set_upload_limit(self, limit: int) -> None:
        for handle in self.handles:
            handle.set_upload_limit(limit)

    def close(self) -> None:
        if self.session is not None:
            self.session.pause()
            self.session = None  # the last reference: libtorrent shuts the session down


@pytest.fixture
def archives(tmp_path):
    """Synthetic archives with .torrent files: {kind: (archive, torrent file, infohash)}."""
    seed_dir = tmp_path / "seed"
    out = {}
    for kind, archive in (
        ("images", make_images_archive(seed_dir)),
        ("reports", make_reports_archive(seed_dir)),
    ):
        torrent_path = tmp_path / f"{kind}.torrent"
        out[kind] = (archive, torrent_path, make_torrent(archive, torrent_path))
    return out


@pytest.fixture
def seeder(archives):
    seeder = Seeder([(torrent_path, archive) for archive, torrent_path, _ in archives.values()])
    yield seeder
    seeder.close()


def make_cfg(archives, peers=(), **overrides) -> dict:
    cfg = {
        "infohashes": {kind: infohash for kind, (_, _, infohash) in archives.items()},
        "torrent_files": {kind: str(torrent_path) for kind, (_, torrent_path, _) in archives.items()},
        "torrent_url": None,
        "trackers": [],
        "peers": list(peers),
        "listen_interfaces": "127.0.0.1:0",
        "dht": False,
        "lsd": False,
        "peer_timeout_s": 20,
        "resume_save_interval_s": 0.5,
    }
    cfg.update(overrides)
    return cfg


def assert_fetched(record, raw_dir: Path, archives) -> None:
    assert record["source"] == "torrent" and record["layout"] == "nlmcxr"
    assert record["files"] == {"images": IMAGES_ARCHIVE, "reports": REPORTS_ARCHIVE}
    assert record["infohashes"] == {kind: infohash for kind, (_, _, infohash) in archives.items()}
    json.dumps(record)  # JSON-able
    for kind, (archive, _, _) in archives.items():
        fetched = raw_dir / record["files"][kind]
        assert fetched.read_bytes() == archive.read_bytes(), f"{kind} archive differs from the seed"
        assert verify_sidecar(fetched) is None


def cache_archive(cache_dir: Path, infohash: str, name: str = IMAGES_ARCHIVE) -> Path:
    return cache_dir / "torrent" / infohash / "data" / name


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output readable
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/www at the returned base URL (for .torrent files and web seeds)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    """A URL on a port where nothing listens: the connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{{infohash}}.torrent"


# ------------------------------------------------------------------------------------------------
# Tests


def test_downloads_both_archives_from_a_peer_then_reuses_them_offline(
    tmp_path, archives, seeder, capfd
):
    cache = tmp_path / "cache"
    raw = tmp_path / "raw"
    raw.mkdir()
    record = torrent.fetch(make_cfg(archives, peers=[seeder.peer]), raw, cache)
    assert_fetched(record, raw, archives)
    err = capfd.readouterr().err
    assert f"downloading {IMAGES_ARCHIVE}" in err
    assert "torrent" in err and "B/s" in err  # the progress bar, with its rate

    # A second run needs no peer at all: the complete download in the cache is reused.
    seeder.close()
    raw2 = tmp_path / "raw2"
    raw2.mkdir()
    started = time.monotonic()
    record2 = torrent.fetch(make_cfg(archives, peers=[], peer_timeout_s=3), raw2, cache)
    assert time.monotonic() - started < 3
    assert record2 == record
    assert_fetched(record2, raw2, archives)
    assert f"reusing the complete {IMAGES_ARCHIVE}" in capfd.readouterr().err


def test_a_damaged_cached_download_is_repaired_by_piece_hashes(tmp_path, archives, seeder, capfd):
    cache = tmp_path / "cache"
    raw = tmp_path / "raw"
    raw.mkdir()
    torrent.fetch(make_cfg(archives, peers=[seeder.peer]), raw, cache)
    cached = cache_archive(cache, archives["images"][2])
    with open(cached, "r+b") as f:  # flip bytes in the middle piece
        f.seek(cached.stat().st_size // 2)
        f.write(b"\x00damaged\x00")
    capfd.readouterr()

    raw2 = tmp_path / "raw2"
    raw2.mkdir()
    uploaded_before = seeder.uploaded()
    record = torrent.fetch(make_cfg(archives, peers=[seeder.peer]), raw2, cache)
    assert_fetched(record, raw2, archives)
    err = capfd.readouterr().err
    assert "changed since it was downloaded" in err
    assert re.search(rf"resuming {re.escape(IMAGES_ARCHIVE)}, (9\d)% already on disk", err), err
    # Only the damaged piece(s) came again, not the whole archive.
    assert 0 < seeder.uploaded() - uploaded_before <= 4 * PIECE_SIZE


RESUMABLE_RUN = """
import json, sys
from pathlib import Path
from cxrgen.data.sources.torrent import fetch
fetch(json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
"""


def test_a_killed_download_resumes_where_it_stopped(tmp_path, archives, python_exe, capfd):
    size = archives["images"][0].stat().st_size
    seeder = Seeder(
        [(torrent_path, archive) for archive, torrent_path, _ in archives.values()],
        upload_limit=300 * 1024,  # ~10 s for the whole images archive
    )
    try:
        cache = tmp_path / "cache"
        script = tmp_path / "run_fetch.py"
        script.write_text(RESUMABLE_RUN)
        cfg = make_cfg(archives, peers=[seeder.peer])
        with open(tmp_path / "child.log", "wb") as log:
            child = subprocess.Popen(
                [python_exe, str(script), json.dumps(cfg), str(tmp_path / "raw1"), str(cache)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 60
                while seeder.uploaded() < 0.45 * size:
                    assert child.poll() is None, (tmp_path / "child.log").read_text()
                    assert time.monotonic() < deadline, "the download did not get going"
                    time.sleep(0.05)
                child.send_signal(signal.SIGKILL)  # no chance to clean up or save anything
            finally:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        assert not (tmp_path / "raw1" / IMAGES_ARCHIVE).exists()
        assert cache_archive(cache, archives["images"][2]).exists()

        seeder.set_upload_limit(0)
        uploaded_before = seeder.uploaded()
        raw = tmp_path / "raw"
        raw.mkdir()
        capfd.readouterr()
        record = torrent.fetch(cfg, raw, cache)
        assert_fetched(record, raw, archives)
        err = capfd.readouterr().err
        match = re.search(rf"resuming {re.escape(IMAGES_ARCHIVE)}, (\d+)% already on disk", err)
        assert match, err
        assert 20 <= int(match.group(1)) < 100
        # The second run fetched only what was missing.
        assert seeder.uploaded() - uploaded_before < 0.8 * size
    finally:
        seeder.close()


def test_no_peer_means_source_unavailable_within_the_timeout(tmp_path, archives):
    raw = tmp_path / "raw"
    raw.mkdir()
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as info:
        torrent.fetch(make_cfg(archives, peers=[], peer_timeout_s=3), raw, tmp_path / "cache")
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 10
    message = str(info.value)
    assert "\n" not in message
    assert "no peer or web seed answered within 3 s" in message
    assert IMAGES_ARCHIVE in message and archives["images"][2] in message
    assert list(raw.iterdir()) == []


def test_magnet_link_without_peers_times_out_waiting_for_metadata(tmp_path, archives):
    cfg = make_cfg(
        archives,
        peers=[],
        peer_timeout_s=3,
        torrent_files={"images": None, "reports": None},
        torrent_url=closed_port_url(),
    )
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as info:
        torrent.fetch(cfg, tmp_path / "raw", tmp_path / "cache")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message
    assert f"no peer answered with the metadata of {IMAGES_ARCHIVE} within 3 s" in message
    assert "Connection refused" in message  # why the .torrent could not be fetched


def test_metadata_from_torrent_url_or_else_from_peers(tmp_path, archives, seeder, http_server):
    www, base_url = http_server
    images_hash = archives["images"][2]
    reports_hash = archives["reports"][2]
    # Only the images' .torrent is on the "Academic Torrents" server: reports go by magnet link.
    (www / f"{images_hash}.torrent").write_bytes(archives["images"][1].read_bytes())
    cfg = make_cfg(
        archives,
        peers=[seeder.peer],
        torrent_files={"images": None, "reports": None},
        torrent_url=base_url + "/{infohash}.torrent",
    )
    cache = tmp_path / "cache"
    raw = tmp_path / "raw"
    raw.mkdir()
    record = torrent.fetch(cfg, raw, cache)
    assert_fetched(record, raw, archives)
    assert (cache / "torrent" / images_hash / "metadata.torrent").read_bytes() == archives["images"][
        1
    ].read_bytes()
    # The magnet's metadata was kept (in bencoded resume data), so a rerun needs neither server nor peer.
    assert lt.read_resume_data((cache / "torrent" / reports_hash / "resume.fastresume").read_bytes()).ti
    raw2 = tmp_path / "raw2"
    raw2.mkdir()
    offline = dict(cfg, peers=[], torrent_url=closed_port_url(), peer_timeout_s=3)
    assert torrent.fetch(offline, raw2, cache) == record


def test_downloads_from_the_torrents_web_seed(tmp_path, http_server):
    www, base_url = http_server
    archives = {}
    for kind, archive in (
        ("images", make_images_archive(www, megabytes=1)),
        ("reports", make_reports_archive(www)),
    ):
        torrent_path = tmp_path / f"{kind}.torrent"
        archives[kind] = (archive, torrent_path, make_torrent(archive, torrent_path, base_url + "/"))
    raw = tmp_path / "raw"
    raw.mkdir()
    record = torrent.fetch(make_cfg(archives, peers=[], peer_timeout_s=10), raw, tmp_path / "cache")
    assert_fetched(record, raw, archives)


def test_a_torrent_without_the_archive_is_bad_input(tmp_path, archives):
    readme = tmp_path / "other" / "README.txt"
    readme.parent.mkdir()
    readme.write_text("not the IU X-ray collection\n")
    wrong = tmp_path / "wrong.torrent"
    infohash = make_torrent(readme, wrong)
    cfg = make_cfg(archives)
    cfg["torrent_files"]["images"] = str(wrong)
    cfg["infohashes"]["images"] = infohash
    with pytest.raises(BadInput, match=r"has no NLMCXR_png\.tgz and no \.tgz file \(files: README\.txt\)"):
        torrent.fetch(cfg, tmp_path / "raw", tmp_path / "cache")

    cfg["infohashes"]["images"] = archives["images"][2]  # the file's infohash is not the expected one
    with pytest.raises(BadInput, match=f"infohash {infohash} is not the expected"):
        torrent.fetch(cfg, tmp_path / "raw", tmp_path / "cache")


def test_choose_archive_file():
    choose = torrent.choose_archive_file
    assert choose([("a/readme.txt", 10), ("a/NLMCXR_png.tgz", 5)], "NLMCXR_png.tgz") == 1
    assert choose([("a/nlmcxr_PNG.TGZ", 5)], "NLMCXR_png.tgz") == 0
    assert choose([("x.tgz", 5), ("y.tar.gz", 50), ("z.zip", 500)], "NLMCXR_png.tgz") == 1
    assert choose([("", 0), ("z.zip", 500)], "NLMCXR_png.tgz") is None


def test_unknown_settings_are_refused():
    with pytest.raises(Exception, match="unknown setting"):
        torrent.settings_from_cfg({"peer_timeout": 5})
