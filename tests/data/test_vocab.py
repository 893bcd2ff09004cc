"""The vocabulary: special ids, deterministic order, min_count, encode/decode, JSON round trip."""

from __future__ import annotations

import json

import pytest

from cxrgen.data.text import clean, tokenize
from cxrgen.data.vocab import (
    END,
    END_ID,
    PAD,
    PAD_ID,
    SPECIAL_TOKENS,
    START,
    START_ID,
    UNK,
    UNK_ID,
    Vocab,
    build_vocab,
)
from cxrgen.errors import BadInput, CxrgenError

TRAIN = [
    ["the", "heart", "is", "normal", "."],
    ["the", "lungs", "are", "clear", "."],
    ["no", "effusion", ".", "the", "heart", "is", "normal", "."],
    ["heart", "normal", "."],
]


def test_special_token_ids():
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    assert SPECIAL_TOKENS == (PAD, START, END, UNK) == ("<pad>", "<start>", "<end>", "<unk>")


def test_order_is_count_then_alphabetical():
    vocab = build_vocab(TRAIN, min_count=1)
    # counts: "." 5, heart 3, normal 3, the 3, is 2, then the ones seen once, alphabetically.
    assert vocab.words == [
        *SPECIAL_TOKENS,
        ".", "heart", "normal", "the", "is",
        "are", "clear", "effusion", "lungs", "no",
    ]  # fmt: skip
    assert vocab.counts["."] == 5 and vocab.counts["is"] == 2
    assert vocab.ids["heart"] == 5 and len(vocab) == 14


def test_same_tokens_in_any_order_give_the_same_file(tmp_path):
    build_vocab(TRAIN, min_count=2, max_len=10).save(tmp_path / "a.json")
    build_vocab(list(reversed(TRAIN)), min_count=2, max_len=10).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_min_count_sends_rare_words_to_unk():
    vocab = build_vocab(TRAIN, min_count=3)
    assert vocab.words == [*SPECIAL_TOKENS, ".", "heart", "normal", "the"]
    assert vocab.rare_words == 6 and vocab.rare_occurrences == 2 + 5
    assert vocab.encode(["the", "lungs", "."]) == [START_ID, 7, UNK_ID, 4, END_ID]


def test_special_tokens_in_the_text_do_not_get_their_own_id():
    vocab = build_vocab([["<unk>", "<pad>", "heart"]] * 3, min_count=1)
    assert vocab.words == [*SPECIAL_TOKENS, "heart"]


def test_encode_counts_start_and_end_in_max_len():
    vocab = build_vocab(TRAIN, min_count=1, max_len=5)
    tokens = ["the", "heart", "is", "normal", "."]
    ids = [vocab.ids[t] for t in tokens]
    assert vocab.encode(tokens) == [START_ID, *ids[:3], END_ID]  # 5 ids in all, still ends
    assert vocab.encode(tokens, max_len=7) == [START_ID, *ids, END_ID]
    assert vocab.encode(tokens, max_len=9, pad=True) == [START_ID, *ids, END_ID, PAD_ID, PAD_ID]
    unlimited = build_vocab(TRAIN, min_count=1)
    assert len(unlimited.encode(tokens * 20)) == 102
    with pytest.raises(CxrgenError):
        unlimited.encode(tokens, pad=True)


def test_decode_stops_at_end_and_drops_special_tokens():
    vocab = build_vocab(TRAIN, min_count=1)
    heart, normal = vocab.ids["heart"], vocab.ids["normal"]
    assert vocab.decode([START_ID, heart, UNK_ID, normal, END_ID, heart, PAD_ID]) == "heart normal"
    assert vocab.decode([heart, PAD_ID, normal]) == "heart normal"
    assert vocab.decode(vocab.encode(["the", "heart", "is", "normal", "."])) == "the heart is normal ."
    with pytest.raises(CxrgenError, match="outside the vocabulary"):
        vocab.decode([len(vocab)])


def test_save_and_load_round_trip(tmp_path):
    vocab = build_vocab(TRAIN, min_count=2, max_len=60)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    assert data["min_count"] == 2 and data["max_len"] == 60
    assert data["words"][:4] == list(SPECIAL_TOKENS)
    assert data["counts"] == {".": 5, "heart": 3, "normal": 3, "the": 3, "is": 2}
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.ids == vocab.ids
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not a readable JSON"),
        ('{"format": "something-else"}', "format"),
        (None, "first words are not the special tokens"),
    ],
)
def test_load_refuses_malformed_files(tmp_path, content, problem):
    path = tmp_path / "vocab.json"
    if content is None:
        data = build_vocab(TRAIN, min_count=1).to_json()
        data["words"] = data["words"][1:]
        content = json.dumps(data)
    path.write_text(content)
    with pytest.raises(BadInput, match=problem) as info:
        Vocab.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        Vocab.load(tmp_path / "absent.json")


@pytest.mark.parametrize("min_count", [0, -1, 1.5, True, "3"])
def test_bad_min_count(min_count):
    with pytest.raises(BadInput, match="params.yaml"):
        build_vocab(TRAIN, min_count=min_count)


def test_strings_are_refused_as_token_lists():
    with pytest.raises(TypeError):
        build_vocab(["heart normal ."], min_count=1)


def test_vocab_from_real_cleaned_reports(shared_sample):
    data = json.loads((shared_sample / "annotation_sample.json").read_text())
    train = [tokenize(clean(entry["report"], "r2gen")) for entry in data["train"]]
    vocab = build_vocab(train, min_count=3, max_len=60)
    assert {".", "no", "xxxx", "heart", "pneumothorax"} <= set(vocab.words)
    assert "" not in vocab.words and all(count >= 3 for count in vocab.counts.values())
    first_test = tokenize(clean(data["test"][0]["report"], "r2gen"))
    ids = vocab.encode(first_test)
    assert ids[0] == START_ID and ids[-1] == END_ID and len(ids) <= 60
