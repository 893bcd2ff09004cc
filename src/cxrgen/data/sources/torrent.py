"""Download source `torrent`: the two IU X-ray archives from Academic Torrents, with libtorrent.

Metadata (the torrent's file list and piece hashes), per archive, from the first of:
  1. a local .torrent file (`torrent_files.<kind>`),
  2. what an earlier run kept in the download cache (resume data or the fetched .torrent),
  3. `torrent_url` (Academic Torrents serves `<infohash>.torrent`), with a short timeout,
  4. a magnet link: the metadata comes from peers (trackers, DHT, `peers`).

Both torrents run concurrently in one libtorrent session and use the torrent's web seeds when it
has any. If for `peer_timeout_s` no peer or web seed delivers anything (metadata or data; counted
from the start of fetch, so the .torrent download is included, and again after every piece that
arrives), the source is unavailable and the orchestrator tries the next one.

Resuming: the data lives in `<cache_dir>/torrent/<infohash>/data/`. Resume data (bencoded, saved
periodically and on exit) keeps the metadata and the peers known so far; which pieces are present
is always re-established by libtorrent's piece-hash check of the files on disk, so a run killed at
any moment continues from verified data only. A complete download gets a size/sha256 sidecar in the
cache and is reused later without any network once that sidecar still matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import libtorrent as lt
from tqdm import tqdm

from cxrgen.data.archives import (
    ARCHIVES,
    check_archive,
    sidecar_path,
    verify_sidecar,
    write_sidecar,
)
from cxrgen.errors import BadInput, CxrgenError, SourceUnavailable
from cxrgen.files import CHUNK, atomic_path, sha256_of

SOURCE = "torrent"

DEFAULTS: dict = {
    "infohashes": {
        "images": "5a3a439df24931f410fac269b87b050203d9467d",
        "reports": "66450ba52ba3f83fbf82ef9c91f2bde0e845aba9",
    },
    "torrent_files": {"images": None, "reports": None},
    "torrent_url": "https://academictorrents.com/download/{infohash}.torrent",
    "torrent_url_timeout_s": 15,
    "trackers": [
        "https://academictorrents.com/announce.php",
        "udp://tracker.opentrackr.org:1337/announce",
    ],
    "web_seeds": {"images": [], "reports": []},
    "peers": [],
    "listen_interfaces": "0.0.0.0:6881,[::]:6881",
    "dht": True,
    "lsd": True,
    # Off by default: a data pipeline should not open ports on the user's router.
    "upnp": False,
    "natpmp": False,
    "peer_timeout_s": 60,
    "resume_save_interval_s": 10,
}

MAX_TORRENT_FILE_BYTES = 32 << 20  # a 1.3 GB torrent's metadata is ~100 KB; refuse anything absurd
QUIET_BELOW_BYTES = 64 << 20
POLL_S = 0.25
RECONNECT_PEERS_S = 5.0
SHUTDOWN_WAIT_S = 5.0
CHECKING_STATES = {
    lt.torrent_status.states.checking_files,
    lt.torrent_status.states.checking_resume_data,
    lt.torrent_status.states.queued_for_checking,
    lt.torrent_status.states.allocating,
}


def _log(message: str) -> None:
    # tqdm.write keeps an active progress bar intact.
    tqdm.write(f"{SOURCE}: {message}", file=sys.stderr)
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Settings


def settings_from_cfg(cfg: dict | None) -> dict:
    """params.yaml `download.torrent` merged over DEFAULTS; unknown keys are refused (typos)."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise CxrgenError(
            f"params.yaml download.torrent: unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}"
        )
    settings = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
    for key in ("infohashes", "torrent_files", "web_seeds"):
        settings[key] = {**DEFAULTS[key], **(settings[key] or {})}
    for key in ("trackers", "peers"):
        value = settings[key] or []
        if isinstance(value, str):
            value = [value]
        settings[key] = list(value)
    try:
        settings["peer_timeout_s"] = float(settings["peer_timeout_s"])
        settings["torrent_url_timeout_s"] = float(settings["torrent_url_timeout_s"])
        settings["resume_save_interval_s"] = float(settings["resume_save_interval_s"])
    except (TypeError, ValueError) as exc:
        raise CxrgenError(f"params.yaml download.torrent: a timeout is not a number ({exc})") from None
    if settings["peer_timeout_s"] <= 0:
        raise CxrgenError("params.yaml download.torrent.peer_timeout_s must be > 0")
    return settings


def _session_settings(settings: dict) -> dict:
    return {
        "listen_interfaces": str(settings["listen_interfaces"]),
        "enable_dht": bool(settings["dht"]),
        "enable_lsd": bool(settings["lsd"]),
        "enable_upnp": bool(settings["upnp"]),
        "enable_natpmp": bool(settings["natpmp"]),
        # Peers given in `peers` may share an IP (several seeders on one host, or loopback).
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage,
        "user_agent": f"cxrgen libtorrent/{lt.__version__}",
        # Don't hang on exit waiting for unreachable trackers to acknowledge "stopped".
        "stop_tracker_timeout": 1,
    }


def _parse_peer(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (ip, port); the host is resolved here (libtorrent wants an IP)."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise CxrgenError(f"params.yaml download.torrent.peers: {text!r} is not 'host:port'")
    try:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SourceUnavailable(f"cannot resolve peer {text!r} ({exc})") from None
    return info[0][4][0], int(port)


# --------------------------------------------------------------------------------------------
# Metadata


@dataclasses.dataclass
class TorrentJob:
    """One archive to download: what it is called, its infohash and where its metadata came from."""

    kind: str  # "images" or "reports"
    archive_name: str  # the expected file name inside the torrent, e.g. NLMCXR_png.tgz
    infohash: str  # v1, 40 hex digits
    params: lt.add_torrent_params  # metadata (ti set) or a magnet link (ti None)
    origin: str  # where the metadata came from, for messages

    @property
    def has_metadata(self) -> bool:
        return self.params.ti is not None


def _load_torrent_bytes(data: bytes) -> lt.add_torrent_params:
    """Parse a .torrent; trackers and web seeds end up in the returned params (libtorrent >= 2.0.9)."""
    loader = getattr(lt, "load_torrent_buffer", None)
    if loader is not None:
        return loader(data)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(data)  # older 2.0.x: web seeds and trackers stay inside ti
    return params


def _infohash_of(params: lt.add_torrent_params) -> str:
    return str(params.ti.info_hashes().v1)


def _job_folder(cache_root: Path, infohash: str) -> Path:
    return cache_root / infohash


def _resume_file(folder: Path) -> Path:
    return folder / "resume.fastresume"


def _metadata_file(folder: Path) -> Path:
    return folder / "metadata.torrent"


def _read_resume(folder: Path, infohash: str) -> lt.add_torrent_params | None:
    """The resume data an earlier run saved, or None (missing, unreadable or for another torrent)."""
    path = _resume_file(folder)
    if not path.is_file():
        return None
    try:
        params = lt.read_resume_data(path.read_bytes())
    except RuntimeError as exc:
        _log(f"ignoring unreadable resume data {path} ({exc})")
        return None
    if str(params.info_hashes.v1) != infohash:
        _log(f"ignoring resume data {path}: it belongs to another torrent")
        return None
    return params


def _torrent_from_file(path: Path, kind: str, expected: str | None) -> lt.add_torrent_params:
    if not path.is_file():
        raise BadInput(path, f"torrent file for the {kind} archive does not exist")
    try:
        params = _load_torrent_bytes(path.read_bytes())
    except RuntimeError as exc:
        raise BadInput(path, f"not a valid .torrent file ({exc})") from None
    actual = _infohash_of(params)
    if expected and actual != expected.lower():
        raise BadInput(
            path,
            f"infohash {actual} is not the expected {expected} of the {kind} archive "
            f"(set download.torrent.infohashes.{kind} to null to accept any)",
        )
    return params


def _torrent_from_url(url: str, infohash: str, timeout_s: float) -> tuple[lt.add_torrent_params, bytes]:
    """Fetch and parse a .torrent; raises OSError/ValueError/RuntimeError when that fails."""
    request = urllib.request.Request(url, headers={"User-Agent": f"cxrgen libtorrent/{lt.__version__}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        data = response.read(MAX_TORRENT_FILE_BYTES + 1)
    if len(data) > MAX_TORRENT_FILE_BYTES:
        raise ValueError("answer too large to be a .torrent file")
    params = _load_torrent_bytes(data)
    if _infohash_of(params) != infohash:
        raise ValueError(f"it is a torrent with another infohash ({_infohash_of(params)})")
    return params, data


def _magnet(infohash: str, name: str, trackers: list[str]) -> lt.add_torrent_params:
    query = [("xt", f"urn:btih:{infohash}"), ("dn", name)] + [("tr", t) for t in trackers]
    return lt.parse_magnet_uri("magnet:?" + urllib.parse.urlencode(query, safe=":/"))


def resolve_job(kind: str, settings: dict, cache_root: Path, deadline: float) -> TorrentJob:
    """Find the metadata of one archive's torrent (see the module docstring for the order)."""
    name = ARCHIVES[kind]
    expected = (settings["infohashes"].get(kind) or "").strip().lower() or None
    local = settings["torrent_files"].get(kind)
    if local:
        path = Path(local).expanduser()
        params = _torrent_from_file(path, kind, expected)
        return TorrentJob(kind, name, _infohash_of(params), params, f"torrent file {path}")
    if not expected:
        raise SourceUnavailable(
            f"neither download.torrent.torrent_files.{kind} nor download.torrent.infohashes.{kind} is set"
        )
    folder = _job_folder(cache_root, expected)

    resume = _read_resume(folder, expected)
    if resume is not None and resume.ti is not None:
        return TorrentJob(kind, name, expected, resume, f"metadata kept in {folder}")
    cached = _metadata_file(folder)
    if cached.is_file():
        try:
            params = _load_torrent_bytes(cached.read_bytes())
            if _infohash_of(params) == expected:
                return TorrentJob(kind, name, expected, params, f"metadata kept in {cached}")
        except RuntimeError:
            pass
        _log(f"ignoring unusable cached metadata {cached}")

    url_template = settings["torrent_url"]
    url_problem = "no torrent_url configured"
    if url_template:
        try:
            url = str(url_template).format(infohash=expected)
        except (KeyError, IndexError, ValueError) as exc:
            raise CxrgenError(
                f"params.yaml download.torrent.torrent_url: {url_template!r} is not a template "
                f"with {{infohash}} ({exc!r})"
            ) from None
        timeout = min(settings["torrent_url_timeout_s"], deadline - time.monotonic())
        if timeout > 0:
            try:
                params, data = _torrent_from_url(url, expected, timeout)
            # URLError and timeouts are OSErrors; RuntimeError is libtorrent refusing the content.
            except (OSError, ValueError, RuntimeError, http.client.HTTPException) as exc:
                url_problem = f"{url}: {exc}"
            else:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(cached) as tmp:
                    tmp.write_bytes(data)
                return TorrentJob(kind, name, expected, params, url)
        else:
            url_problem = f"{url}: no time left"
    _log(f"no .torrent file for {name} ({url_problem}); asking peers for the metadata (magnet link)")
    params = _magnet(expected, name, settings["trackers"])
    return TorrentJob(kind, name, expected, params, f"magnet link (.torrent unavailable: {url_problem})")


# --------------------------------------------------------------------------------------------
# Which file of the torrent is the archive


def _torrent_files(ti: lt.torrent_info) -> list[tuple[str, int]]:
    """(path inside the save folder, size) of each real file; pad files (BEP 47) are ('', 0)."""
    storage = ti.layout() if hasattr(ti, "layout") else ti.files()
    files = []
    for index in range(storage.num_files()):
        if storage.file_flags(index) & storage.flag_pad_file:
            files.append(("", 0))
        else:
            files.append((storage.file_path(index), storage.file_size(index)))
    return files


def choose_archive_file(files: list[tuple[str, int]], expected_name: str) -> int | None:
    """Index of the archive: the file named `expected_name`, else the largest .tgz/.tar.gz, else None."""
    names = [os.path.basename(path.replace("\\", "/")) for path, _ in files]
    for index, name in enumerate(names):
        if name == expected_name:
            return index
    for index, name in enumerate(names):
        if name and name.lower() == expected_name.lower():
            return index
    tarballs = [
        index
        for index, name in enumerate(names)
        if name.lower().endswith((".tgz", ".tar.gz")) and files[index][1] > 0
    ]
    if not tarballs:
        return None
    return max(tarballs, key=lambda index: (files[index][1], -index))


def _archive_index(job: TorrentJob, ti: lt.torrent_info) -> tuple[int, str, int]:
    """(file index, path inside the save folder, size) of the archive, or BadInput."""
    files = _torrent_files(ti)
    index = choose_archive_file(files, job.archive_name)
    if index is None:
        listed = ", ".join(path for path, _ in files if path)[:300]
        raise BadInput(
            job.origin,
            f"torrent {job.infohash} has no {job.archive_name} and no .tgz file (files: {listed})",
        )
    path, size = files[index]
    if os.path.isabs(path) or ".." in Path(path).parts:
        raise BadInput(job.origin, f"torrent {job.infohash} names an unsafe path {path!r}")
    return index, path, size


# --------------------------------------------------------------------------------------------
# Downloading


@dataclasses.dataclass
class TorrentResult:
    kind: str
    path: Path  # the complete archive inside the download cache
    sha256: str
    already_on_disk: int  # bytes verified on disk before this run downloaded anything
    size: int
    reused: bool  # complete from an earlier run; nothing downloaded


@dataclasses.dataclass
class _Transfer:
    """The live state of one torrent in the session."""

    job: TorrentJob
    handle: lt.torrent_handle
    folder: Path
    last_progress: float  # when a peer or web seed last delivered something (or we were checking)
    file_index: int | None = None
    file_path: Path | None = None
    size: int = 0
    done: int = 0
    already_on_disk: int | None = None  # set once the pieces on disk are checked
    received: int = 0
    complete: bool = False

    def percent(self) -> float:
        return 100.0 * self.done / self.size if self.size else 0.0

    def take_metadata(self, ti: lt.torrent_info) -> None:
        index, path, size = _archive_index(self.job, ti)
        self.file_index, self.size = index, size
        self.file_path = self.folder / "data" / path

    def poll(self, now: float) -> None:
        status = self.handle.status()
        if status.errc.value():
            raise CxrgenError(
                f"{self.job.archive_name} (infohash {self.job.infohash}, in {self.folder}): "
                f"{status.errc.message()}"
            )
        if self.file_index is None:
            if not status.has_metadata:
                return
            # A magnet link: the metadata has just arrived from a peer.
            ti = self.handle.torrent_file()
            self.take_metadata(ti)
            self.handle.prioritize_files(_only_the_archive(ti, self.file_index))
            self.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)  # keep the metadata
            self.last_progress = now
            _log(f"metadata of {self.job.archive_name} received from peers")
            return
        checking = status.state in CHECKING_STATES
        if checking or status.total_payload_download > self.received:
            self.last_progress = now
        self.received = status.total_payload_download
        if checking:
            return
        progress = self.handle.file_progress(flags=lt.torrent_handle.piece_granularity)
        self.done = progress[self.file_index]
        if self.already_on_disk is None:
            # Pieces may have arrived between the end of the check and this first look; those
            # were not on disk before (an estimate: bytes of unfinished pieces are subtracted too).
            self.already_on_disk = max(0, self.done - status.total_payload_download)
            self._log_start()
        if self.done >= self.size:
            self.complete = True

    def _log_start(self) -> None:
        name, size, already = self.job.archive_name, self.size, self.already_on_disk or 0
        if already >= size:
            _log(f"{name} is already complete on disk (checked by piece hashes)")
        elif already > 0:
            _log(
                f"resuming {name}, {100.0 * already / size:.0f}% already on disk "
                f"({already:,} of {size:,} bytes checked by piece hashes)"
            )
        else:
            _log(f"downloading {name} ({size:,} bytes, metadata from {self.job.origin})")

    def stall_message(self, timeout_s: float, settings: dict) -> str:
        name, infohash = self.job.archive_name, self.job.infohash
        if self.file_index is None:
            return (
                f"no peer answered with the metadata of {name} within {timeout_s:g} s "
                f"(infohash {infohash}; {self.job.origin}; DHT {'on' if settings['dht'] else 'off'}, "
                f"{len(settings['trackers'])} trackers, {len(settings['peers'])} extra peers)"
            )
        if self.received == 0:
            status = self.handle.status()
            return (
                f"no peer or web seed answered within {timeout_s:g} s for {name} "
                f"(infohash {infohash}; {self.percent():.0f}% on disk, {status.num_peers} peers "
                f"connected, {len(self.handle.url_seeds())} web seeds)"
            )
        return (
            f"download of {name} stalled: no data from any peer or web seed for {timeout_s:g} s "
            f"at {self.percent():.0f}% (infohash {infohash}); rerun to continue where it stopped"
        )


def _only_the_archive(ti: lt.torrent_info, index: int) -> list[int]:
    """File priorities that download the archive and skip any other file of the torrent."""
    priorities = [0] * ti.num_files()
    priorities[index] = 4  # libtorrent's default priority
    return priorities


def _unique(items) -> list:
    return list(dict.fromkeys(item for item in items if item))


def _add_transfer(
    ses: lt.session, job: TorrentJob, cache_root: Path, settings: dict, started: float
) -> _Transfer:
    folder = _job_folder(cache_root, job.infohash)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    resume = _read_resume(folder, job.infohash)
    params = resume if resume is not None else job.params
    if params.ti is None and job.params.ti is not None:
        params.ti = job.params.ti
    # Which pieces are present is established by hashing the files on disk, never taken on trust
    # from resume data that a killed run may have written before its last pieces (or a user's edit).
    params.have_pieces = []
    params.verified_pieces = []
    params.save_path = str(folder / "data")
    clear = (
        lt.torrent_flags.paused
        | lt.torrent_flags.auto_managed
        | lt.torrent_flags.seed_mode
        | lt.torrent_flags.upload_mode
        | lt.torrent_flags.share_mode
    )
    params.flags = params.flags & ~clear
    params.url_seeds = _unique(
        list(params.url_seeds) + list(job.params.url_seeds) + list(settings["web_seeds"].get(job.kind) or [])
    )
    params.trackers = _unique(list(params.trackers) + list(job.params.trackers) + settings["trackers"])
    if params.ti is not None:
        index, _, _ = _archive_index(job, params.ti)
        params.file_priorities = _only_the_archive(params.ti, index)
    try:
        handle = ses.add_torrent(params)
    except RuntimeError as exc:
        raise CxrgenError(f"libtorrent refused the torrent of {job.archive_name}: {exc}") from None
    transfer = _Transfer(job=job, handle=handle, folder=folder, last_progress=started)
    if params.ti is not None:
        transfer.take_metadata(params.ti)
    return transfer


def _write_resume(alert, folders: dict[str, Path]) -> None:
    folder = folders.get(str(alert.params.info_hashes.v1))
    if folder is None:
        return
    with atomic_path(_resume_file(folder)) as tmp:
        tmp.write_bytes(lt.write_resume_data_buf(alert.params))


def _handle_alerts(ses: lt.session, folders: dict[str, Path]) -> set[str]:
    """Write the resume data that arrived; return the infohashes whose save request was answered."""
    answered = set()
    for alert in ses.pop_alerts():
        if isinstance(alert, lt.save_resume_data_alert):
            _write_resume(alert, folders)
            answered.add(str(alert.params.info_hashes.v1))
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            answered.add(str(alert.handle.info_hashes().v1))
    return answered


def _save_all_resume(ses: lt.session, transfers: list[_Transfer], folders: dict[str, Path]) -> None:
    waiting = set()
    for transfer in transfers:
        if transfer.handle is not None and transfer.handle.is_valid():
            transfer.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
            waiting.add(transfer.job.infohash)
    deadline = time.monotonic() + SHUTDOWN_WAIT_S
    while waiting and time.monotonic() < deadline:
        ses.wait_for_alert(100)
        waiting -= _handle_alerts(ses, folders)


def _connect_peers(transfers: list[_Transfer], peers: list[tuple[str, int]]) -> None:
    for transfer in transfers:
        if transfer.complete:
            continue
        for endpoint in peers:
            transfer.handle.connect_peer(endpoint)


def _run_session(
    jobs: list[TorrentJob], cache_root: Path, settings: dict, started: float
) -> list[_Transfer]:
    """Download all jobs concurrently in one session; returns the transfers once all are complete."""
    peers = [_parse_peer(peer) for peer in settings["peers"]]
    timeout_s = settings["peer_timeout_s"]
    folders = {job.infohash: _job_folder(cache_root, job.infohash) for job in jobs}
    ses = lt.session(_session_settings(settings))
    transfers: list[_Transfer] = []
    bar = None
    try:
        for job in jobs:
            transfers.append(_add_transfer(ses, job, cache_root, settings, started))
        _connect_peers(transfers, peers)
        last_save = last_connect = time.monotonic()
        while True:
            _handle_alerts(ses, folders)
            now = time.monotonic()
            for transfer in transfers:
                if not transfer.complete:
                    transfer.poll(now)
            if all(t.complete for t in transfers):
                break
            stalled = [t for t in transfers if not t.complete and now - t.last_progress > timeout_s]
            if stalled:
                raise SourceUnavailable("; ".join(t.stall_message(timeout_s, settings) for t in stalled))
            bar = _update_bar(bar, transfers)
            if now - last_save >= settings["resume_save_interval_s"]:
                for transfer in transfers:
                    if transfer.handle.need_save_resume_data():
                        transfer.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
                last_save = now
            if peers and now - last_connect >= RECONNECT_PEERS_S:
                # A listed peer may not have been up yet, or dropped us; dialing again is cheap.
                _connect_peers([t for t in transfers if t.handle.status().num_peers == 0], peers)
                last_connect = now
            time.sleep(POLL_S)
        _update_bar(bar, transfers)
    finally:
        if bar is not None:
            bar.close()
        _save_all_resume(ses, transfers, folders)
        # Ending the session here (not when a traceback lets go of it) closes files and sockets now.
        del ses
    return transfers


def _update_bar(bar, transfers: list[_Transfer]):
    """One bar for all torrents, shown once every torrent knows its size and what is on disk."""
    if any(t.already_on_disk is None and not t.complete for t in transfers):
        return bar
    done = sum(t.done for t in transfers)
    if bar is None:
        bar = tqdm(
            total=sum(t.size for t in transfers),
            initial=done,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="torrent",
            file=sys.stderr,
            mininterval=1.0,
        )
    elif done > bar.n:
        bar.update(done - bar.n)
    return bar


def _reuse_complete(job: TorrentJob, cache_root: Path) -> TorrentResult | None:
    """A complete earlier download whose size and sha256 still match its record, or None."""
    if not job.has_metadata:
        return None
    _, path, size = _archive_index(job, job.params.ti)
    archive = _job_folder(cache_root, job.infohash) / "data" / path
    if not archive.is_file() or not sidecar_path(archive).is_file():
        return None
    problem = verify_sidecar(archive)
    if problem is not None:
        _log(f"the cached {archive} changed since it was downloaded ({problem}); checking its pieces")
        sidecar_path(archive).unlink()
        return None
    sha = _recorded_sha256(archive)
    _log(f"reusing the complete {job.archive_name} in {archive.parent} (size and sha256 match)")
    return TorrentResult(job.kind, archive, sha, size, size, reused=True)


def _recorded_sha256(archive: Path) -> str:
    return str(json.loads(sidecar_path(archive).read_text())["sha256"])


def download_torrents(
    jobs: dict[str, TorrentJob], cache_root: Path, settings: dict, started: float | None = None
) -> dict[str, TorrentResult]:
    """Bring every job's archive into `cache_root/<infohash>/data/`, complete and piece-hash checked.

    `settings` as from settings_from_cfg. `started` (time.monotonic()) is when the caller began
    waiting for this source; the peer timeout counts from there. Raises SourceUnavailable when no peer
    or web seed delivers within `peer_timeout_s`, BadInput when a torrent holds no archive.
    """
    started = time.monotonic() if started is None else started
    cache_root = Path(cache_root)
    infohashes = [job.infohash for job in jobs.values()]
    if len(set(infohashes)) != len(infohashes):
        raise CxrgenError(f"download.torrent: the same torrent is configured twice ({infohashes})")
    results: dict[str, TorrentResult] = {}
    pending = []
    for kind, job in jobs.items():
        reused = _reuse_complete(job, cache_root)
        if reused is not None:
            results[kind] = reused
        else:
            pending.append(job)
    if pending:
        for transfer in _run_session(pending, cache_root, settings, started):
            archive = transfer.file_path
            with _bar(transfer.size, f"sha256 {transfer.job.archive_name}") as progress:
                sha = sha256_of(archive, progress)
            write_sidecar(archive, sha)
            results[transfer.job.kind] = TorrentResult(
                transfer.job.kind,
                archive,
                sha,
                transfer.already_on_disk or 0,
                transfer.size,
                reused=False,
            )
    return {kind: results[kind] for kind in jobs}


def _bar(total: int, desc: str):
    """A progress bar for a pass over a file; none for small files (they take a moment only)."""
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        file=sys.stderr,
        mininterval=1.0,
        disable=total < QUIET_BELOW_BYTES,
    )


# --------------------------------------------------------------------------------------------
# The source


def _copy_checked(source: Path, target: Path, expected_sha256: str) -> None:
    """Copy `source` to `target` atomically, hashing on the way; the copy must match the record."""
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, _bar(source.stat().st_size, f"copy {target.name}") as progress:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(CHUNK):
                digest.update(block)
                dst.write(block)
                progress.update(len(block))
        if digest.hexdigest() != expected_sha256:
            raise CxrgenError(f"{source} changed while it was copied to {target}; run again")


def fetch(cfg: dict, raw_dir: Path, cache_dir: Path) -> dict:
    """Download both archives by BitTorrent into `raw_dir` (see the module docstring)."""
    started = time.monotonic()
    settings = settings_from_cfg(cfg)
    cache_root = Path(cache_dir) / SOURCE
    deadline = started + settings["peer_timeout_s"]
    jobs = {kind: resolve_job(kind, settings, cache_root, deadline) for kind in ARCHIVES}
    results = download_torrents(jobs, cache_root, settings, started)
    files = {}
    for kind, result in results.items():
        try:
            check_archive(result.path, kind)
        except BadInput as exc:
            raise BadInput(
                exc.path,
                f"{exc.problem} (downloaded by torrent {jobs[kind].infohash}; "
                f"delete {result.path.parent.parent} to download it again)",
            ) from None
        target = Path(raw_dir) / ARCHIVES[kind]
        _copy_checked(result.path, target, result.sha256)
        write_sidecar(target, result.sha256)
        files[kind] = target.name
    return {
        "source": SOURCE,
        "layout": "nlmcxr",
        "files": files,
        "infohashes": {kind: job.infohash for kind, job in jobs.items()},
    }
