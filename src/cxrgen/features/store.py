"""The feature store: each split's features as fixed-size shards of plain `.npy` files.

Layout of data/features (written by the features stage, cxrgen.features.densenet):

    features.json                      the description, with "shard_studies" and "splits":
                                       {split: {"studies": N, "shards": K}} (the blank control too)
    <split>/spatial-00000.npy          (rows, 2, positions, 1024) float16, rows <= shard_studies
    <split>/pooled-00000.npy           (rows, 2, 1024) float16
    blank/spatial-00000.npy ...        one study of two black images (the image control)

Shard i of a split holds its studies [i * shard_studies, min((i + 1) * shard_studies, N)), so the
shards of a split are its rows in order; a split always has at least one shard (an empty split one
of 0 rows, which keeps its row shape). A shard is a plain .npy file (format 1.0, little-endian
float16, C order): np.load(path, mmap_mode="r") maps it, and its rows are fixed-size records after
the header, which is what the tf.data reader streams.

Reading never holds a split in memory: `ShardedArray` gives its length and row shape, reads a
range of rows (`array[start:stop]`, `chunks(size)`) with plain file reads into a chunk-sized
buffer, and `dataset()` is a tf.data pipeline of rows read from the files by
FixedLengthRecordDataset (no Python generator: under TensorFlow's op determinism a pipeline holding
a py_func runs serially and without prefetch). Row reads go through read() rather than a memory
map on purpose: pages of a map that a process has touched count in its resident memory until the
kernel evicts them, so streaming a 37 GB split through a map would grow the process's RSS with the
collection; read() leaves them in the page cache, which is not the process's. `memmaps()` still
maps the shards for who wants random access to a few rows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrgen.errors import BadInput
from cxrgen.files import atomic_path, read_json

KEYS = ("spatial", "pooled")
BLANK = "blank"
DESCRIPTION = "features.json"
DEFAULT_SHARD_STUDIES = 4096
DTYPE = np.dtype("<f2")
READ_BUFFER = 4 << 20            # bytes FixedLengthRecordDataset reads from a file at once
RERUN = "rerun the features stage"
M_MMAP_THRESHOLD = -3            # glibc's mallopt parameter
LARGE_BUFFER = 1 << 17           # bytes from which a freed buffer goes back to the system: 128 KB,
                                 # below one study's spatial maps (200 KB), which the shuffle churns


# ---------------------------------------------------------------------------------------------
# Layout


def shard_count(studies: int, shard_studies: int) -> int:
    """Shards of a split of `studies` rows: at least one (an empty split keeps its row shape)."""
    return max(1, -(-int(studies) // int(shard_studies)))


def shard_ranges(studies: int, shard_studies: int) -> list[tuple[int, int]]:
    """[(start, stop)] rows of each shard of a split."""
    return [(i * shard_studies, min((i + 1) * shard_studies, studies))
            for i in range(shard_count(studies, shard_studies))]


def shard_path(features_dir: str | Path, split: str, key: str, index: int) -> Path:
    return Path(features_dir) / split / f"{key}-{index:05d}.npy"


def check_shard_studies(value, source: str | Path = "params.yaml") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadInput(source, f"features.shard_studies must be a positive integer, not {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Writing


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """One .npy file (format 1.0, little-endian), written under a temporary name and renamed into
    place: same array, same bytes, and never a half-written file under the final name."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, array, version=(1, 0), allow_pickle=False)


def write_shard(features_dir: str | Path, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Shard `index` of `split`: one .npy file per key (spatial, pooled), float16."""
    for key in sorted(arrays):
        write_npy(shard_path(features_dir, split, key, index), np.asarray(arrays[key]).astype(DTYPE, copy=False))


def write_split(features_dir: str | Path, split: str, arrays: dict[str, np.ndarray], shard_studies: int) -> dict:
    """Every shard of a split held in memory (tests, benchmarks); returns its features.json entry."""
    studies = len(next(iter(arrays.values())))
    for index, (start, stop) in enumerate(shard_ranges(studies, shard_studies)):
        write_shard(features_dir, split, index, {key: array[start:stop] for key, array in arrays.items()})
    return {"studies": studies, "shards": shard_count(studies, shard_studies)}


def write_store(features_dir: str | Path, splits: dict[str, dict[str, np.ndarray]], blank: dict[str, np.ndarray],
                info: dict | None = None, shard_studies: int = DEFAULT_SHARD_STUDIES) -> dict:
    """A whole store from arrays in memory (what tests and benchmarks build): the splits, the blank
    control and features.json (`info` plus the layout). Returns the description."""
    from cxrgen.files import write_json_atomic

    layout = {split: write_split(features_dir, split, arrays, shard_studies) for split, arrays in splits.items()}
    layout[BLANK] = write_split(features_dir, BLANK, blank, shard_studies)
    description = {**(info or {}), "shard_studies": shard_studies, "splits": layout,
                   "counts": {split: entry["studies"] for split, entry in layout.items() if split != BLANK}}
    write_json_atomic(Path(features_dir) / DESCRIPTION, description)
    return description


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Shard:
    path: Path
    start: int           # first row of the split in this shard
    rows: int
    header_bytes: int


def read_header(path: Path) -> tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, fortran_order, header length in bytes) of a .npy file, without reading its data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            return tuple(shape), dtype, fortran, f.tell()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadInput(path, f"not a readable .npy file ({exc}); {RERUN}") from None


class ShardedArray:
    """One key (spatial | pooled) of one split across its shards: a read-only (N, *row_shape)
    float16 array that reads its rows from the files on demand."""

    def __init__(self, shards: list[Shard], row_shape: tuple, name: str):
        self.shards, self.row_shape, self.name = shards, tuple(row_shape), name
        self.dtype = DTYPE
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * DTYPE.itemsize
        self._starts = np.array([s.start for s in shards] + [len(self)], np.int64)

    @classmethod
    def open(cls, paths: list[Path], expected_rows: list[int] | None = None, name: str = "") -> ShardedArray:
        """Check every shard's header, row shape and size against the others (and against
        `expected_rows` per shard); a missing, truncated or mismatched shard is a BadInput naming it."""
        if not paths:
            raise ValueError("a sharded array needs at least one shard")
        shards, row_shape, start = [], None, 0
        for index, path in enumerate(paths):
            path = Path(path)
            try:
                shape, dtype, fortran, header = read_header(path)
            except FileNotFoundError:
                raise BadInput(path, f"feature shard not found ({RERUN})") from None
            if dtype != DTYPE or fortran or len(shape) < 1:
                raise BadInput(path, f"expected a C-order float16 array of rows, found {dtype} {shape}"
                                     f"{' (Fortran order)' if fortran else ''}; {RERUN}")
            if row_shape is None:
                row_shape = shape[1:]
            elif shape[1:] != row_shape:
                raise BadInput(path, f"rows are {shape[1:]}, those of {paths[0]} are {row_shape}; {RERUN}")
            if expected_rows is not None and shape[0] != expected_rows[index]:
                raise BadInput(path, f"{shape[0]} rows, features.json says {expected_rows[index]}; {RERUN}")
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * DTYPE.itemsize
            wanted, size = header + shape[0] * row_bytes, path.stat().st_size
            if size != wanted:
                raise BadInput(path, f"{'truncated' if size < wanted else 'too long'}: {size} bytes, "
                                     f"{wanted} expected for {shape[0]} rows of {shape[1:]}; {RERUN}")
            shards.append(Shard(path, start, shape[0], header))
            start += shape[0]
        return cls(shards, row_shape, name)

    # numpy-like -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def row_ranges(self) -> list[tuple[int, int]]:
        """[(start, stop)] of the split's rows in each shard."""
        return [(s.start, s.start + s.rows) for s in self.shards]

    def __array__(self, dtype=None, copy=None):
        # np.asarray(store_array) would read the whole split into memory: what this class is there
        # to avoid. Read what is needed: array[start:stop], chunks(size), read_all() for a small one.
        raise TypeError(f"{self.name}: a sharded feature array is not read whole implicitly; "
                        "use [start:stop], chunks(size) or read_all()")

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            position = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= position < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} rows")
            return self.read(position, position + 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("sharded feature arrays take contiguous row ranges only")
            return self.read(start, max(start, stop))
        raise IndexError("sharded feature arrays take a row number or a contiguous range of rows")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new float16 array, read from the shards they are in."""
        out = np.empty((max(stop - start, 0), *self.row_shape), DTYPE)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        for shard in self.shards:
            lo, hi = max(start, shard.start), min(stop, shard.start + shard.rows)
            if lo >= hi:
                continue
            nbytes = (hi - lo) * self.row_bytes
            with open(shard.path, "rb", buffering=0) as f:
                f.seek(shard.header_bytes + (lo - shard.start) * self.row_bytes)
                got = 0
                while got < nbytes:
                    count = f.readinto(view[done + got: done + nbytes])
                    if not count:
                        raise BadInput(shard.path, f"ended early (truncated while being read?); {RERUN}")
                    got += count
            done += nbytes
        return out

    def read_all(self) -> np.ndarray:
        """Every row in memory: for the blank control and small splits only."""
        return self.read(0, len(self))

    def chunks(self, size: int, desc: str | None = None):
        """(start, rows) for consecutive chunks of at most `size` rows; a progress bar on stderr
        when `desc` is given and there is more than one chunk."""
        from tqdm import tqdm

        starts = range(0, len(self), max(int(size), 1))
        with tqdm(total=len(self), desc=desc, unit=" studies", file=sys.stderr, mininterval=2,
                  disable=desc is None or len(starts) < 2) as bar:
            for start in starts:
                rows = self.read(start, min(start + size, len(self)))
                yield start, rows
                bar.update(len(rows))

    def memmaps(self) -> list[np.memmap]:
        """Each shard memory-mapped read-only (random access to a few rows)."""
        return [np.load(s.path, mmap_mode="r", allow_pickle=False) for s in self.shards]

    # tf.data ----------------------------------------------------------------------------------

    def dataset(self):
        """A tf.data.Dataset of the rows (float16 tensors of row_shape), in order, streamed from the
        files: FixedLengthRecordDataset per shard (its .npy header skipped), decode_raw, reshape."""
        import tensorflow as tf

        row_shape = list(self.row_shape)

        def decode(record):
            return tf.reshape(tf.io.decode_raw(record, tf.float16, little_endian=True), row_shape)

        parts = [tf.data.FixedLengthRecordDataset(str(s.path), record_bytes=self.row_bytes,
                                                  header_bytes=s.header_bytes, buffer_size=READ_BUFFER)
                 for s in self.shards if s.rows]
        if not parts:
            return tf.data.Dataset.from_tensor_slices(np.zeros((0, *self.row_shape), DTYPE))
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset.map(decode).apply(tf.data.experimental.assert_cardinality(len(self)))


class FeatureStore:
    """data/features as the features stage wrote it: features.json and the shards it lists."""

    def __init__(self, features_dir: str | Path):
        self.root = Path(features_dir)
        self.info = read_json(self.root / DESCRIPTION, "not found (run the features stage)")
        self.layout = self.info.get("splits")
        if not isinstance(self.layout, dict) or not isinstance(self.info.get("shard_studies"), int):
            raise BadInput(self.root / DESCRIPTION, "no shard layout (written by an older features stage, "
                                                    "which wrote one .npz per split): rerun the features stage")
        self.shard_studies = int(self.info["shard_studies"])

    def studies(self, split: str) -> int:
        return int(self._entry(split)["studies"])

    def _entry(self, split: str) -> dict:
        if split not in self.layout:
            raise BadInput(self.root / DESCRIPTION, f"no '{split}' split (has {sorted(self.layout)}); {RERUN}")
        return self.layout[split]

    def open(self, split: str, key: str) -> ShardedArray:
        """`key` (spatial | pooled) of `split` (train | val | test | blank)."""
        if key not in KEYS:
            raise BadInput(self.root / DESCRIPTION, f"no '{key}' features (the store holds {', '.join(KEYS)})")
        entry = self._entry(split)
        studies, shards = int(entry["studies"]), int(entry["shards"])
        ranges = shard_ranges(studies, self.shard_studies)
        if shards != len(ranges):
            raise BadInput(self.root / DESCRIPTION, f"'{split}': {shards} shards listed for {studies} studies of "
                                                    f"{self.shard_studies} per shard; {RERUN}")
        paths = [shard_path(self.root, split, key, i) for i in range(shards)]
        return ShardedArray.open(paths, [stop - start for start, stop in ranges], name=f"{split}/{key}")

    def blank(self, key: str) -> np.ndarray:
        """(1, *row_shape): the features of one study of two black images."""
        array = self.open(BLANK, key)
        if len(array) != 1:
            raise BadInput(array.shards[0].path, f"the blank control should hold one study, has {len(array)}")
        return array.read_all()


def return_large_buffers_to_the_system(threshold: int = LARGE_BUFFER) -> bool:
    """Have glibc's malloc serve every block of `threshold` bytes or more with its own mmap, given
    back to the system when freed (mallopt M_MMAP_THRESHOLD; a fixed threshold also stops glibc
    from raising it as it sees large blocks freed). Streaming thousands of batches of a few MB
    each (TensorFlow allocates tensors with malloc) otherwise leaves the heap fragmented, and the
    process's peak memory creeps up with the number of batches, i.e. with the collection. Returns
    False where there is no glibc (nothing changes there)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def parse_range(text: str) -> tuple[int, int]:
    """"START:STOP" (either may be empty) → (start, stop), stop -1 for "to the end"."""
    try:
        start, stop = text.split(":")
        return int(start or 0), int(stop) if stop else -1
    except ValueError:
        raise BadInput("--shards", f"expected START:STOP (e.g. 0:4), not {text!r}") from None


__all__ = ["BLANK", "DEFAULT_SHARD_STUDIES", "FeatureStore", "KEYS", "ShardedArray", "check_shard_studies",
           "parse_range", "return_large_buffers_to_the_system", "shard_count", "shard_path", "shard_ranges", "write_npy", "write_shard",
           "write_split", "write_store"]
