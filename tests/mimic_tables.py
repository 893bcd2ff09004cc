"""Reading and rewriting the gzipped CSV tables of a MIMIC-CXR-layout folder, for the tests that
check what the synthetic collection holds or break it on purpose."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path


def read_table(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def write_table(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
