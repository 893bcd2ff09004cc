"""The cluster a process belongs to, from the standard TF_CONFIG environment variable (the one
tf.distribute.MultiWorkerMirroredStrategy reads): which workers there are and which one this is.
Used by multi-worker training (cxrgen.modeling.distributed) and by the features stage, which
splits its shards between the same workers (`--shards cluster`)."""

from __future__ import annotations

import json
import os

from cxrgen.errors import BadInput

EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
           '"task": {"type": "worker", "index": 0}}\' (each worker its own index)')


def cluster_spec(purpose: str = "train.strategy is multi_worker") -> dict:
    """TF_CONFIG, parsed and checked: {"cluster": {...}, "task": {"type", "index"}}."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise BadInput("params.yaml" if purpose.startswith("train") else "TF_CONFIG",
                       f"{purpose}, but TF_CONFIG is not set: every worker needs {EXAMPLE}")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput("TF_CONFIG", f"not a cluster description ({exc}); expected "
                                    '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}') from None
    if not isinstance(workers, list) or not workers or kind not in config["cluster"] or not (
            0 <= index < len(config["cluster"][kind])):
        raise BadInput("TF_CONFIG", f"task {kind} {index} is not in the cluster {config['cluster']}")
    return config


def worker_position(purpose: str) -> tuple[int, int]:
    """(this process's position, number of processes) among the cluster's chief and workers."""
    config = cluster_spec(purpose)
    members = [(kind, i) for kind in ("chief", "worker") for i in range(len(config["cluster"].get(kind, [])))]
    return members.index((config["task"]["type"], int(config["task"]["index"]))), len(members)
