"""What a benchmark ran on, recorded beside its figures (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform


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
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
