"""The feature store: shards split at the right rows, arrays read back exactly (by range, by chunk,
memory-mapped, through tf.data), deterministic bytes, and one clear line for a missing, truncated or
mismatched shard."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cxrgen.errors import BadInput  # noqa: E402
from cxrgen.features.store import (  # noqa: E402
    FeatureStore,
    ShardedArray,
    parse_range,
    shard_count,
    shard_path,
    shard_ranges,
    write_npy,
    write_store,
)


def arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spatial = rng.normal(size=(n, 2, 4, 8)).astype(np.float16)
    return {"spatial": spatial, "pooled": spatial.astype(np.float32).mean(axis=2).astype(np.float16)}


@pytest.fixture
def store(tmp_path):
    splits = {"train": arrays(10, 1), "val": arrays(3, 2), "test": arrays(0, 3)}
    write_store(tmp_path, splits, arrays(1, 4), {"weights": "random"}, shard_studies=4)
    return FeatureStore(tmp_path), splits


def test_shard_ranges_cover_the_split_in_order():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(3, 4) == [(0, 3)]
    assert shard_ranges(0, 4) == [(0, 0)]        # an empty split keeps one shard (its row shape)
    assert [shard_count(n, 4096) for n in (0, 2069, 4096, 4097, 40_000)] == [1, 1, 1, 2, 10]


def test_round_trip_by_range_chunk_map_and_tf_data(store):
    store, splits = store
    assert store.info["splits"]["train"] == {"studies": 10, "shards": 3}
    assert store.info["counts"] == {"train": 10, "val": 3, "test": 0} and store.info["weights"] == "random"
    assert sorted(p.name for p in (store.root / "train").iterdir()) == [
        f"{key}-{i:05d}.npy" for key in ("pooled", "spatial") for i in range(3)]
    for key in ("spatial", "pooled"):
        expected = splits["train"][key]
        array = store.open("train", key)
        assert isinstance(array, ShardedArray) and array.shape == expected.shape and len(array) == 10
        assert array.row_ranges() == [(0, 4), (4, 8), (8, 10)]
        # each shard file holds exactly its rows
        for index, (start, stop) in enumerate(array.row_ranges()):
            np.testing.assert_array_equal(np.load(shard_path(store.root, "train", key, index)), expected[start:stop])
        np.testing.assert_array_equal(array.read_all(), expected)
        np.testing.assert_array_equal(array[3:9], expected[3:9])       # across a shard boundary
        np.testing.assert_array_equal(array[-1], expected[-1])
        np.testing.assert_array_equal(array[7:100], expected[7:])
        assert array[5:5].shape == (0, *expected.shape[1:])
        chunks = list(array.chunks(3))
        assert [start for start, _ in chunks] == [0, 3, 6, 9]
        np.testing.assert_array_equal(np.concatenate([rows for _, rows in chunks]), expected)
        maps = array.memmaps()
        assert all(isinstance(m, np.memmap) for m in maps)
        np.testing.assert_array_equal(np.concatenate(maps), expected)
        streamed = np.stack([row.numpy() for row in array.dataset()])
        assert streamed.dtype == np.float16
        np.testing.assert_array_equal(streamed, expected)
        assert int(array.dataset().cardinality()) == 10
    empty = store.open("test", "spatial")
    assert empty.shape == (0, 2, 4, 8) and list(empty.dataset()) == [] and list(empty.chunks(4)) == []
    np.testing.assert_array_equal(store.blank("pooled"), arrays(1, 4)["pooled"])


def test_a_split_is_never_read_whole_by_accident(store):
    store, _ = store
    with pytest.raises(TypeError, match="not read whole implicitly"):
        np.asarray(store.open("train", "spatial"))
    with pytest.raises(IndexError):
        store.open("train", "spatial")[::2]


def test_same_arrays_same_bytes(tmp_path):
    for name in ("a", "b"):
        write_store(tmp_path / name, {"train": arrays(9)}, arrays(1, 1), {"weights": "random"}, shard_studies=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * 3 + 2          # features.json, 3 train shards and the blank's, 2 keys
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    assert not [p for p in (tmp_path / "a").rglob(".*partial*")]   # written under a temporary name, renamed


def test_missing_truncated_and_mismatched_shards_are_named(store, tmp_path):
    store, splits = store
    root = store.root
    second = shard_path(root, "train", "spatial", 1)
    data = second.read_bytes()
    second.write_bytes(data[:-7])
    with pytest.raises(BadInput, match="truncated") as error:
        store.open("train", "spatial")
    assert str(second) in str(error.value) and "rerun the features stage" in str(error.value)
    second.unlink()
    with pytest.raises(BadInput, match="feature shard not found") as error:
        store.open("train", "spatial")
    assert str(second) in str(error.value)
    write_npy(second, splits["train"]["spatial"][4:7])            # 3 rows where 4 belong
    with pytest.raises(BadInput, match="3 rows, features.json says 4"):
        store.open("train", "spatial")
    write_npy(second, np.zeros((4, 2, 5, 8), np.float16))         # another row shape
    with pytest.raises(BadInput, match=r"rows are \(2, 5, 8\)"):
        store.open("train", "spatial")
    write_npy(second, np.zeros((4, 2, 4, 8), np.float32))         # another dtype
    with pytest.raises(BadInput, match="float16"):
        store.open("train", "spatial")
    second.write_bytes(b"not an array")
    with pytest.raises(BadInput, match="not a readable .npy file"):
        store.open("train", "spatial")
    with pytest.raises(BadInput, match="no 'regions' features"):
        store.open("val", "regions")
    with pytest.raises(BadInput, match="no 'extra' split"):
        store.open("extra", "pooled")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "features.json").write_text(json.dumps({"counts": {"train": 3}}))
    with pytest.raises(BadInput, match="older features stage"):
        FeatureStore(tmp_path / "old")
    with pytest.raises(BadInput, match="run the features stage"):
        FeatureStore(tmp_path / "nothing")


def test_shard_ranges_on_the_command_line():
    assert parse_range("0:4") == (0, 4) and parse_range("3:") == (3, -1) and parse_range(":2") == (0, 2)
    with pytest.raises(BadInput, match="START:STOP"):
        parse_range("3")
