"""TensorFlow without its start-up chatter.

TensorFlow's C++ side prints lines such as "oneDNN custom operations are on" and (E-level, on CPUs
without AVX-512) "oneDNN supports DT_HALF only on platforms with AVX-512" through absl before its
logging is set up, so TF_CPP_MIN_LOG_LEVEL does not silence them. They say nothing a user can act
on, yet look like errors at every stage. `import_tensorflow` imports TensorFlow and Keras and runs
the ops that trigger those lines with stderr sent to a file, then passes on anything else that was
written there. It changes no setting that affects results (oneDNN stays on).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|util|cpu_feature_guard)\.cc:\d+\] )"
)


def import_tensorflow():
    """Import TensorFlow (and Keras) quietly; return the tensorflow module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras
            import tensorflow as tf

            half = tf.constant([[1.0]], tf.float16)   # the first half-precision op prints the DT_HALF line
            tf.cast(tf.matmul(half, half) + half, tf.float32)
            keras.ops.add(tf.zeros((1,)), 1.0)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines():
            if not NOISE.match(line):
                print(line, file=sys.stderr)
    return tf
