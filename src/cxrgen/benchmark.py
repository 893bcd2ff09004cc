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
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": gpus,
        "tensorflow_build": describe_device()["tensorflow_build"],
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
