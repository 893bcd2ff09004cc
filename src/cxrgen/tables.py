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
