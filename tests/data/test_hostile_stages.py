"""The extract and prepare stages, run as scripts, on archives full of hostile members: every input
left out is named with its reason in the warnings, counted in the metrics, listed in the manifest
(data/prepared/dropped.parquet); 512 MiB members do not grow the stages' memory; nothing of a file
outside the project reaches data/; the vocabulary holds no word of an unexpanded entity."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hostile_inputs import (
    HOSTILE_PNG,
    HOSTILE_XML,
    Zeros,
    external_entity,
    png_bytes,
    png_cut_in_data,
    png_bad_crc,
    report_xml,
    write_tgz,
)

from cxrgen.tables import read_parquet

PROJECT = Path(__file__).resolve().parents[2]
HUGE = 512 << 20       # the measurement: a 512 MiB XML member, a PNG followed by 512 MiB of zeros
SECRET_WORD = "leakedsecretword"
GOOD = 20


def _ids(n: int) -> list[str]:
    return [f"CXR{n}_IM-{n:04d}-1001", f"CXR{n}_IM-{n:04d}-2001"]


def _collection(root: Path, hostile: bool) -> tuple[Path, dict]:
    """data/raw with GOOD studies of two views; with `hostile`, one member of every bad kind more.
    Returns the raw folder and what must be dropped: {reason: [file or id, ...]}."""
    raw = root / "raw"
    reports = {f"ecgen-radiology/{n}.xml": report_xml(n, f"The heart is normal. Finding {n % 4}.", _ids(n))
               for n in range(1, GOOD + 1)}
    images = {f"{image_id}.png": png_bytes(40, 30, 40 + n) for n in range(1, GOOD + 1) for image_id in _ids(n)}
    expected: dict[str, list[str]] = {}

    def expect(reason: str, name: str) -> None:
        expected.setdefault(reason, []).append(name)

    if hostile:
        secret = root / "outside" / "passwd"
        secret.parent.mkdir(parents=True)
        secret.write_text(f"root:x:0:0:{SECRET_WORD}\n")
        for number, name in enumerate(sorted(HOSTILE_XML), start=101):
            make, reason = HOSTILE_XML[name]
            reports[f"ecgen-radiology/{number}.xml"] = make(number)
            expect(f"report: {reason}", f"NLMCXR_reports.tgz:ecgen-radiology/{number}.xml")
        reports["ecgen-radiology/130.xml"] = external_entity(130, secret, _ids(130))
        expect("report: external entity", "NLMCXR_reports.tgz:ecgen-radiology/130.xml")
        reports["ecgen-radiology/131.xml"] = (HUGE, Zeros(HUGE, b'<?xml version="1.0"?><eCitation>'))
        expect("report: file too large", "NLMCXR_reports.tgz:ecgen-radiology/131.xml")
        reports["ecgen-radiology/132.xml"] = report_xml(132, None, _ids(132))   # no findings
        images.update({f"{image_id}.png": png_bytes(40, 30) for image_id in _ids(132)})
        expect("no findings text", "CXR132")
        reports["ecgen-radiology/133.xml"] = report_xml(133, "Heart normal.", _ids(133))
        images[f"{_ids(133)[0]}.png"] = png_cut_in_data()
        images[f"{_ids(133)[1]}.png"] = png_bad_crc()
        expect("image: truncated", _ids(133)[0])
        expect("image: corrupt PNG header", _ids(133)[1])
        expect("no usable image", "CXR133")
        # Studies 1..9 lose their lateral to one bad kind each, study 10 to a valid PNG + 512 MiB of zeros.
        for n, name in enumerate(sorted(HOSTILE_PNG), start=1):
            make, reason = HOSTILE_PNG[name]
            images[f"{_ids(n)[1]}.png"] = make()
            expect(f"image: {reason}", _ids(n)[1])
        images[f"{_ids(10)[1]}.png"] = (HUGE, Zeros(HUGE, png_bytes(40, 30)))
        expect("image: file too large", _ids(10)[1])
    write_tgz(raw / "NLMCXR_reports.tgz", reports)
    write_tgz(raw / "NLMCXR_png.tgz", images)
    (raw / "source.json").write_text(json.dumps(
        {"source": "local", "layout": "nlmcxr",
         "files": {"images": "NLMCXR_png.tgz", "reports": "NLMCXR_reports.tgz"}}))
    return raw, expected


def _peak_rss_mib(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run a stage script in a fresh wrapper process: the wrapper's only child is the stage, so
    RUSAGE_CHILDREN's ru_maxrss is the stage's own peak (KiB on Linux)."""
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], stderr=subprocess.PIPE, text=True)\n"
               "sys.stderr.write(r.stderr)\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(r.returncode)\n")
    result = subprocess.run([sys.executable, "-c", wrapper, sys.executable, *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1]) / 1024, result.stderr


def _run_stages(root: Path, raw: Path) -> dict:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["image"]["size"] = 32
    params["vocab"]["min_count"] = 1
    params["prepare"]["max_bad_fraction"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    extract_rss, extract_err = _peak_rss_mib(
        [str(PROJECT / "stages" / "extract.py"), "--raw", str(raw), "--out", "data/interim",
         "--metrics", "metrics/extract.json"], root)
    prepare_rss, prepare_err = _peak_rss_mib(
        [str(PROJECT / "stages" / "prepare.py"), "--raw", str(raw), "--interim", "data/interim",
         "--extract-metrics", "metrics/extract.json", "--out", "data/prepared", "--metrics",
         "metrics/data.json", "--plot", "metrics/report_length.json"], root)
    return {"extract_rss": extract_rss, "prepare_rss": prepare_rss, "stderr": extract_err + prepare_err}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for hostile in (False, True):
        root = tmp_path_factory.mktemp("hostile" if hostile else "clean")
        raw, expected = _collection(root, hostile)
        out[hostile] = {"root": root, "expected": expected, **_run_stages(root, raw)}
    return out


def test_every_input_left_out_is_named_counted_and_listed(runs):
    run = runs[True]
    root, expected = run["root"], run["expected"]
    counts = {reason: len(names) for reason, names in expected.items()}
    data = json.loads((root / "metrics" / "data.json").read_text())
    assert data["dropped"] == dict(sorted(counts.items()))
    extract_counts = json.loads((root / "metrics" / "extract.json").read_text())["skipped"]
    assert extract_counts == {r: n for r, n in sorted(counts.items()) if r.startswith("report:")}

    manifest = read_parquet(root / "data" / "prepared" / "dropped.parquet")
    assert Counter(manifest["reason"]) == Counter(counts)           # one row per counted input
    # named by id where one is known (images, reports prepare left out), else by archive:member
    named = {reason: sorted(group["id"].fillna(group["file"])) for reason, group in manifest.groupby("reason")}
    assert named == {reason: sorted(names) for reason, names in expected.items()}
    assert set(manifest["stage"]) == {"extract", "prepare"}
    self_explained = manifest["reason"].isin(["no findings text", "image: zero-byte image file"])
    assert manifest.loc[~self_explained, "detail"].notna().all()
    interim = read_parquet(root / "data" / "interim" / "dropped.parquet")
    assert interim.equals(manifest.iloc[: len(interim)].reset_index(drop=True))   # extract's rows carried

    err = run["stderr"]
    for reason, names in expected.items():
        if not reason.startswith("no "):
            for name in names:
                assert name.split(":")[-1] in err and reason in err, (name, reason)
    assert "left out 1 reports: no findings text: CXR132" in err
    assert "left out 1 reports: no usable image: CXR133" in err


def test_good_studies_survive_and_no_entity_reaches_the_vocabulary(runs):
    root = runs[True]["root"]
    studies = read_parquet(root / "data" / "prepared" / "studies.parquet")
    assert sorted(studies["report_id"]) == sorted(f"CXR{n}" for n in range(1, GOOD + 1))
    single = set(studies.loc[studies["single_view"], "report_id"])
    assert single == {f"CXR{n}" for n in range(1, len(HOSTILE_PNG) + 2)}   # their laterals were bad
    words = set(json.loads((root / "data" / "prepared" / "vocab.json").read_text())["words"])
    assert not words & {"leak", "lol9", "lol", "a", SECRET_WORD}


def test_nothing_from_outside_reaches_data(runs):
    root = runs[True]["root"]
    for path in (root / "data").rglob("*"):
        if path.is_file():
            assert SECRET_WORD.encode() not in path.read_bytes(), path


def test_huge_members_do_not_grow_memory(runs):
    """Two 512 MiB members (an XML file, a PNG followed by zeros): were either read whole, the peak
    would rise by at least 512 MiB over the same stages on the clean collection."""
    clean, hostile = runs[False], runs[True]
    for stage in ("extract_rss", "prepare_rss"):
        growth = hostile[stage] - clean[stage]
        print(f"{stage}: clean {clean[stage]:.0f} MiB, hostile {hostile[stage]:.0f} MiB")
        assert growth < 64, f"{stage} grew by {growth:.0f} MiB ({clean[stage]:.0f} → {hostile[stage]:.0f})"
