"""Which TensorFlow build bin/setup installs, and the device record of cxrgen.device.

No GPU exists on the machines that run these tests: the GPU is a stand-in `nvidia-smi` (a script
printing what the real one prints), the only thing bin/setup asks about the hardware.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "bin" / "setup"


def which_tensorflow(tmp_path: Path, nvidia_smi: str | None = None, **env) -> subprocess.CompletedProcess:
    """`bin/setup --which-tensorflow` with a stand-in nvidia-smi (its script body) first on PATH."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        fake = tools / "nvidia-smi"
        fake.write_text("#!/bin/sh\n" + nvidia_smi + "\n")
        fake.chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if key != "CXRGEN_TF"}
    environment.update(PATH=f"{tools}:{os.environ['PATH']}", **env)
    return subprocess.run([str(SETUP), "--which-tensorflow"], capture_output=True, text=True, env=environment,
                          timeout=60)


def test_setup_chooses_the_gpu_build_where_nvidia_smi_lists_a_gpu(tmp_path):
    listed = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"'
    result = which_tensorflow(tmp_path, listed)
    assert result.returncode == 0 and result.stdout.strip() == "gpu", result


@pytest.mark.parametrize("nvidia_smi", [
    None,                                                   # no driver tools at all
    'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9',
    "exit 0",                                               # tools, but no GPU listed
])
def test_setup_chooses_the_cpu_build_elsewhere(tmp_path, nvidia_smi):
    result = which_tensorflow(tmp_path, nvidia_smi)
    assert result.returncode == 0 and result.stdout.strip() == "cpu", result


def test_the_environment_variable_decides_over_detection(tmp_path):
    listed = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"'
    assert which_tensorflow(tmp_path, listed, CXRGEN_TF="cpu").stdout.strip() == "cpu"
    assert which_tensorflow(tmp_path, None, CXRGEN_TF="gpu").stdout.strip() == "gpu"
    bad = which_tensorflow(tmp_path, None, CXRGEN_TF="tpu")
    assert bad.returncode == 2 and "CXRGEN_TF must be cpu or gpu, not 'tpu'" in bad.stderr


def test_each_choice_is_an_extra_that_installs_that_build():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(req.startswith("tensorflow[and-cuda]") for req in extras["gpu"])
    assert any(req.startswith("tensorflow-cpu") for req in extras["cpu"])
    assert not any(req.startswith("tensorflow") for req in project["dependencies"])   # one build, never both
    assert '"$ROOT[dev,$tf_build]"' in SETUP.read_text()


def test_the_device_record_names_this_machine():
    from cxrgen.device import describe_device

    record = describe_device()
    assert record["device"] == ("GPU" if record["gpu_count"] else "CPU")
    assert record["tensorflow_build"] in ("cpu", "cuda") and record["tensorflow"]
    if record["tensorflow_build"] == "cpu":
        assert record["cuda_version"] is None
    if not os.environ.get("CXRGEN_EXPECT_GPU"):   # CI and this project's machines: no GPU
        assert (record["device"], record["gpus"], record["gpu_count"], record["tensorflow_build"]) == ("CPU", [], 0, "cpu")
