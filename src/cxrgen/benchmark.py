"""What the benchmark scripts (benchmarks/) share: the machine they ran on, and writing metrics/speed.json."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from cxrgen.device import describe_device
from cxrgen.errors import BadInput
from cxrgen.files import write_json_atomic


def describe_machine() -> dict:
    import keras

    device = describe_device()   # the GPUs and TensorFlow, as the stages record them
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": device["cpu_count"],
        "python": platform.python_version(),
        "tensorflow": device["tensorflow"],
        "keras": keras.__version__,
        "gpus": device["gpus"],
        "tensorflow_build": device["tensorflow_build"],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def record_speed(out: str | Path, key: str, result: dict) -> None:
    """Put `result` under `key` in metrics/speed.json, keeping what other benchmarks wrote there."""
    out = Path(out)
    try:
        speed = json.loads(out.read_text()) if out.is_file() else {}
    except json.JSONDecodeError as exc:
        raise BadInput(out, f"not valid JSON ({exc}); fix or remove it") from None
    speed[key] = result
    write_json_atomic(out, speed)
