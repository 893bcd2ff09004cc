"""Writing tables and small reports the same way every time (stable bytes, atomic rename)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxrgen.files import atomic_path


def write_parquet(df: pd.DataFrame, path: str | Path, schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # No pandas metadata: it would tie the bytes to the pandas version, not to the data.
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


# The manifest of inputs left out (data/interim/dropped.parquet from extract, data/prepared/dropped.parquet
# with prepare's added): one row per input, named, with the reason it is counted under in the metrics.
DROPPED_SCHEMA = pa.schema([
    ("stage", pa.string()),    # extract | prepare
    ("kind", pa.string()),     # report | image | study
    ("id", pa.string()),       # report or image id, when known
    ("file", pa.string()),     # "<archive>:<member>" (or the file) that held it, when there is one
    ("reason", pa.string()),   # as counted in metrics/extract.json "skipped" and metrics/data.json "dropped"
    ("detail", pa.string()),   # what exactly was wrong with this one
])


def dropped_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=DROPPED_SCHEMA.names).astype(object)


def write_dropped(rows: list[dict], path: str | Path) -> None:
    frame = dropped_frame(rows).where(lambda df: df.notna(), None)
    write_parquet(frame, path, schema=DROPPED_SCHEMA)
