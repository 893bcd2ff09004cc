"""Which device and TensorFlow build a run used, for the metrics files that stages write.

A number measured on a GPU and one measured on two CPU cores are not the same kind of result;
every record of features, training and evaluation names the device (CPU, or the GPUs' model and
count) and whether the installed TensorFlow is a CUDA build (see bin/setup: CXRGEN_TF).
"""

from __future__ import annotations

import os


def describe_device() -> dict:
    """{"device": "CPU" | "GPU", "gpus": [model names], "gpu_count", "cpu_count", "tensorflow",
    "tensorflow_build": "cuda" | "cpu", "cuda_version", "cudnn_version"} of this process."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
    build = dict(tf.sysconfig.get_build_info())
    cuda = bool(build.get("is_cuda_build"))
    return {
        "device": "GPU" if gpus else "CPU",
        "gpus": names,
        "gpu_count": len(names),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "tensorflow_build": "cuda" if cuda else "cpu",
        "cuda_version": build.get("cuda_version") if cuda else None,
        "cudnn_version": build.get("cudnn_version") if cuda else None,
    }
