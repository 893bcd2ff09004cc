"""The DVC pipeline end to end, run by DVC itself in a scratch copy of the project, through the
README's own commands.

The copy holds the project's tracked and not-ignored files (what a fresh clone has) and becomes its
own git repository. Its `.venv` is a link to the environment `bin/setup` made for this checkout, so
`bin/setup` there finds everything installed. The README's commands run in `bash -c` with no
activated environment (the virtual environment is neither on PATH nor in VIRTUAL_ENV), as a user
pastes them into a fresh shell; each command must appear verbatim in the README.
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
from conftest import SHARED_SAMPLE

pytestmark = pytest.mark.pipeline

README = Path(__file__).resolve().parents[1] / "README.md"
# The README's commands, run as written (the demo with CI's settings appended, as -S options).
DEMO = "bin/setup && .venv/bin/dvc exp run -n demo -S 'download.sources=[synthetic]'"
SAMPLES_EXPERIMENT = ".venv/bin/dvc exp run -n samples10 -S decode.rerank_samples=10"
METRICS_DIFF = ".venv/bin/dvc metrics diff demo samples10"
METRICS_SHOW = ".venv/bin/dvc metrics show"
EXP_SHOW = (".venv/bin/dvc exp show --only-changed --hide-workspace --drop '.*' "
            "--keep 'Experiment|.*rerank_samples|.*attention.json:(bleu_4|f1_abnormal|distinct)'")
TABLE_COMMANDS = (METRICS_DIFF, METRICS_SHOW, EXP_SHOW)
MAX_TABLE_LINE = 200

SYNTHETIC_REPORTS = 1200
# CI-sized models on two CPU cores (see the README for the full-size settings). Every stage runs,
# through DVC, with these overrides (after the demo's own `download.sources=[synthetic]`).
CI_OVERRIDES = [
    f"download.synthetic.n_reports={SYNTHETIC_REPORTS}",
    # One wording per set of findings: the report is then what the image shows, so whether a model
    # uses the image shows in its val loss (with varied wording even the true finding labels gain
    # only ~.013 nats/token on a few hundred studies; with fixed wording ~.06; see the README).
    "download.synthetic.wording=fixed",
    # 112 px images (a 3 x 3 grid per view) make features ~4x cheaper, which buys ~700 training
    # studies in CI's time: with ~250 the finding heads read too little (val AUC .75) for a clear gain.
    "download.synthetic.image_width=256", "image.size=112",
    "model.baseline.embedding_dim=64", "model.baseline.units=128",
    "model.attention.embedding_dim=64", "model.attention.units=128",
    "model.attention.projection_dim=64", "model.attention.attention_dim=64",
    "train.epochs=30", "train.batch_size=16", "train.learning_rate=0.005",
    # Val and test splits of ~150 studies each: enough for early stopping, and for the paired
    # bootstraps (image vs blank images; model vs floor) to tell a real difference from noise.
    "split.fractions.train=0.7", "split.fractions.val=0.15", "split.fractions.test=0.15",
    "evaluate.n_resamples=300",
]


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


def _fresh_shell_env() -> dict:
    """The environment of a new shell: the project's virtual environment neither on PATH nor active."""
    venv_bin = Path(sys.prefix) / "bin"
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != venv_bin.resolve())
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _shell(command: str, cwd: Path, timeout: float = 2400, documented: str | None = None) -> subprocess.CompletedProcess:
    """A README command (`documented`, by default the command itself) as a user runs it; it must
    succeed without a traceback."""
    assert (documented or command) in README.read_text(), f"not in the README: {documented or command}"
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=_fresh_shell_env(), capture_output=True,
                            text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{output[-6000:]}"
    assert "Traceback" not in output, f"{command}\n{output[-6000:]}"
    return result


def _link_environment(repo: Path) -> None:
    """The copy's .venv is the environment bin/setup made here (checked: its stamp is this pyproject's)."""
    import hashlib

    stamp = Path(sys.prefix) / ".cxrgen-installed"
    want = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()
    # bin/setup's stamp: the pyproject's hash, then the TensorFlow build it installed
    assert stamp.is_file() and stamp.read_text().split()[:1] == [want], \
        f"run the tests through bin/test (or run bin/setup first): {stamp} does not match pyproject.toml"
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)


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
    """A fresh copy of the project after the README's offline demo (with CI's settings)."""
    repo = _copy_project(project_root, tmp_path_factory.mktemp("pipeline"))
    _link_environment(repo)
    settings = list(CI_OVERRIDES)
    if SHARED_SAMPLE.is_dir():   # the copy lives elsewhere: point the labeler check at the real sample
        settings.append(f"labeler.sample_dir={SHARED_SAMPLE}")
    result = _shell(DEMO + "".join(f" -S '{setting}'" for setting in settings), cwd=repo, documented=DEMO)
    (repo / "demo.log").write_text(result.stdout + result.stderr)
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
    assert ".venv/bin/dvc exp run -S 'download.sources=[synthetic]'" in result.stderr, result.stderr
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


def _metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def test_both_models_trained_with_their_blank_image_control(synthetic_repo: Path):
    from cxrgen.modeling.models import load_model

    for name in ("baseline", "attention"):
        train = _metrics(synthetic_repo, f"train_{name}")
        assert train["model"] == name and train["data_source"] == "synthetic"
        assert train["weights"].startswith("random")
        # The image is used: the val loss is clearly lower than the blank-image twin's. Measured
        # +.012 and +.014 nats/token (10-12 %), 95 % intervals over the val studies from ~+.009.
        low, high = train["val_loss_gain_interval"]
        assert low <= train["val_loss_gain"] <= high and train["uses_images"] == (low > 0)
        assert train["uses_images"], (name, train["val_loss_gain"], train["val_loss_gain_interval"])
        assert train["val_loss_gain"] > 0.05 * train["val_loss_blank_images"], (name, train)
        # ... and the finding head reads findings off the images of studies it never saw.
        assert train["val_finding_auc"]["Cardiomegaly"] > 0.8, (name, train["val_finding_auc"])
        assert (synthetic_repo / "dvclive" / name / "plots" / "metrics").is_dir()
        model = load_model(synthetic_repo / "models" / f"{name}.keras")
        assert model.count_params() == train["params"]


def test_evaluation_shows_floors_beside_every_model(synthetic_repo: Path):
    floors = _metrics(synthetic_repo, "details/floors")
    assert floors["constant_report"] and 0 < floors["constant_val_bleu_4"] <= 1
    for floor in ("constant", "retrieval"):
        assert 0 <= floors[floor]["bleu_4"] <= 1
        assert floors[floor]["bleu_4_low"] <= floors[floor]["bleu_4"] <= floors[floor]["bleu_4_high"]
    for name in ("baseline", "attention"):
        record = _metrics(synthetic_repo, f"details/{name}")
        assert record["data_source"] == "synthetic" and record["weights"].startswith("random")
        assert record["split"]["method"] == "random" and record["train_seed"] == 0
        for decoding in ("greedy", "beam"):
            assert set(record[decoding]) >= {"bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "micro_f1"}
            assert record[decoding]["meteor"] is not None, "METEOR is null: is Java installed?"
            for floor in ("constant", "retrieval"):
                assert "micro_f1" in record[f"{decoding}_vs_{floor}"]
        # The floors are scored by the same code in every evaluation.
        assert record["beam_vs_constant"]["bleu_4"]["difference"] == pytest.approx(
            record["beam"]["bleu_4"] - floors["constant"]["bleu_4"], abs=1e-5)
    table = (synthetic_repo / "metrics" / "comparison.md").read_text()
    for row in ("floor: constant", "floor: retrieval", "ceiling: label oracle", "baseline (beam 3",
                "attention (beam 3"):
        assert row in table, table
    assert "synthetic" in table and "random" in table
    # The label oracle (a ceiling) is scored beside the floors. The attention model's reports (beam 3
    # plus 50 samples, chosen by the finding head) state abnormal findings better than both floors,
    # and the table says so; they differ between studies: at least half as many distinct reports as
    # the label oracle's. Over the 14 observations too, it beats both floors.
    attention = _metrics(synthetic_repo, "details/attention")
    oracle = floors["label_oracle"]
    assert attention["final"] == "rerank" and attention["decode"]["rerank_samples"] == 50
    assert oracle["abnormal_f1"] > 0.5 and oracle["distinct_reports"] > 10, oracle
    final = attention["rerank"]
    for floor in ("constant", "retrieval"):
        assert final["abnormal_f1"] > floors[floor]["abnormal_f1"], (floor, final, floors[floor])
        assert attention["rerank_vs_" + floor]["abnormal_f1"]["verdict"] == "better", attention["rerank_vs_" + floor]
        assert attention["rerank_vs_" + floor]["micro_f1"]["verdict"] == "better", attention["rerank_vs_" + floor]
        assert f"attention BEATS the {floor} floor on abnormal-finding F1" in table, table
    assert final["distinct_reports"] >= 0.5 * oracle["distinct_reports"], (final, oracle)
    # The parts, scored on the same run: the choice read at 0.5, and the head's own labels (what a
    # decoder stating exactly what the head reads would reach); and the device the run used.
    assert attention["rerank_at_half"]["abnormal_f1"] > attention["beam"]["abnormal_f1"], attention["rerank_at_half"]
    head_alone = attention["finding_head_alone"]["calibrated"]
    assert head_alone["abnormal_f1_low"] <= head_alone["abnormal_f1"] <= head_alone["abnormal_f1_high"]
    assert attention["device"]["device"] == "CPU" and attention["device"]["tensorflow_build"] == "cpu"
    # What DVC shows: one flat headline per system, the same keys for models and floors.
    headline = _metrics(synthetic_repo, "attention")
    assert headline["f1_abnormal"] == round(final["abnormal_f1"], 4)
    assert headline["image_gain"] == round(_metrics(synthetic_repo, "train_attention")["val_loss_gain"], 4)
    for name in ("floor_constant", "floor_retrieval", "oracle"):
        assert set(_metrics(synthetic_repo, name)) == set(headline) - {"image_gain"}, name
    maps = sorted((synthetic_repo / "metrics" / "attention_maps").glob("*.png"))
    assert maps, "no attention maps written"


def test_labeler_agreement_is_recorded(synthetic_repo: Path, shared_sample: Path):
    labeler = _metrics(synthetic_repo, "labeler")
    assert labeler["shared_sample"] is not None
    assert labeler["shared_sample"]["micro"]["f1"] > 0.8
    assert labeler["collection"]["micro"]["f1"] > 0.8  # synthetic MeSH terms follow the grammar's findings


def test_readme_experiment_commands_compare_two_experiments(synthetic_repo: Path):
    """Another number of sampled candidates as an experiment beside the demo, then DVC's tables, all as
    the README shows them:
    nothing upstream of evaluation reruns, and every table fits a terminal."""
    ran = _shell(SAMPLES_EXPERIMENT, cwd=synthetic_repo, timeout=1200).stdout
    for stage in ("download", "extract", "prepare", "features", "train@baseline", "train@attention",
                  "floors", "labeler"):
        assert f"Running stage '{stage}'" not in ran, ran
    assert "Running stage 'evaluate@attention'" in ran, ran
    assert _metrics(synthetic_repo, "details/attention")["decode"]["rerank_samples"] == 10
    outputs = {command: _shell(command, cwd=synthetic_repo, timeout=300).stdout for command in TABLE_COMMANDS}
    for command, out in outputs.items():
        (synthetic_repo / f"table_{TABLE_COMMANDS.index(command)}.txt").write_text(out)
        longest = max((len(line) for line in out.splitlines()), default=0)
        assert longest <= MAX_TABLE_LINE, f"{command}: a {longest}-character line\n{out}"
    assert len(outputs[METRICS_SHOW].splitlines()) <= 60, outputs[METRICS_SHOW]
    diff = outputs[METRICS_DIFF]
    assert "metrics/attention.json" in diff and "bleu_4" in diff, diff
    assert "train_" not in diff and "floor_" not in diff, diff   # training and floors did not change
    shown = outputs[EXP_SHOW]
    assert "demo" in shown and "samples10" in shown and "rerank_samples" in shown, shown


def test_app_serves_the_pipeline_models_to_a_real_browser(synthetic_repo: Path, project_root: Path):
    """The README's app command on what this synthetic `dvc repro` made, driven by headless chromium."""
    env = {**os.environ, "CXRGEN_TEST_PROJECT": str(synthetic_repo)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(project_root / "tests" / "assistant" / "test_app_browser.py")],
                            cwd=project_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _tracked_outputs(repo: Path) -> dict[str, str]:
    """{path: sha256} of every file of every cached output dvc.lock names."""
    import hashlib

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    hashes = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = repo / out["path"]
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                hashes[str(file.relative_to(repo))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def test_a_dvc_remote_carries_the_outputs_to_another_clone(synthetic_repo: Path, tmp_path: Path):
    """The README's way to share features and models between machines: push to a remote (here a
    local folder, as a shared disk would be), clone the repository elsewhere, pull; the clone then
    has byte-identical outputs and nothing to rerun."""
    remote = tmp_path / "remote"
    _dvc("remote", "add", "-d", "shared", str(remote), cwd=synthetic_repo)
    pushed = _dvc("push", cwd=synthetic_repo).stdout
    assert remote.is_dir() and any(remote.rglob("*")), pushed
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    _run([*git, "add", "-A"], cwd=synthetic_repo)
    _run([*git, "commit", "-qm", "outputs pushed to the shared remote"], cwd=synthetic_repo)
    clone = tmp_path / "elsewhere"
    _run(["git", "clone", "-q", str(synthetic_repo), str(clone)], cwd=tmp_path)
    assert not (clone / "data" / "features").exists()
    _dvc("pull", cwd=clone)
    mine, theirs = _tracked_outputs(synthetic_repo), _tracked_outputs(clone)
    assert mine and theirs == mine
    assert any(name.startswith("models/") for name in mine) and any(name.startswith("data/features") for name in mine)
    status = _dvc("status", cwd=clone).stdout
    assert "up to date" in status, status


# Last: it leaves the workspace on another target.
def test_changing_the_target_reruns_prepare_and_what_follows_not_extract_or_download(synthetic_repo: Path):
    # Only up to prepare (retraining is not what this checks); `dvc status` shows what follows is stale.
    result = _dvc("exp", "run", "-S", "text.target=impression", "prepare", cwd=synthetic_repo)
    ran = result.stdout
    assert "Running stage 'prepare'" in ran, ran
    assert "Running stage 'extract'" not in ran and "Running stage 'download'" not in ran, ran
    data = json.loads((synthetic_repo / "metrics" / "data.json").read_text())
    assert data["target"] == "impression"
    with_impression = [r for r in _truth(synthetic_repo)["reports"].values() if r["sections"]["IMPRESSION"]]
    assert data["counts"]["reports_with_target_text"] == len(with_impression)
    stale = json.loads(_dvc("status", "--json", cwd=synthetic_repo).stdout)
    assert "features" in stale and "extract" not in stale and "download" not in stale, stale
