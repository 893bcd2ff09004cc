"""The word vocabulary: built from the TRAINING reports only, saved as plain JSON.

Ids 0..3 are the special tokens; the words follow, most frequent first, ties alphabetical, so the
same training texts always give the same ids and the same file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cxrgen.errors import BadInput, CxrgenError
from cxrgen.files import write_json_atomic

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(len(SPECIAL_TOKENS))
PARAMS_FILE = "params.yaml"
FILE_FORMAT = "cxrgen-vocab"
FILE_VERSION = 1


@dataclass
class Vocab:
    """Words by id (`words[i]` has id i; the special tokens first) and their training counts.

    min_count: the least training count a word needed to get an id (rarer words read as <unk>).
    max_len: the default sequence length for `encode`, counting <start> and <end> (None: none).
    counts: training count of every word that has an id. rare_words / rare_occurrences: how many
    distinct words, and how many occurrences, were left out as rarer than min_count.
    """

    words: list[str]
    counts: dict[str, int]
    min_count: int
    max_len: int | None = None
    rare_words: int = 0
    rare_occurrences: int = 0
    ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = {word: index for index, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: list[str], max_len: int | None = None, pad: bool = False) -> list[int]:
        """<start>, the ids of `tokens` (<unk> for unknown words), <end>.

        max_len (default: the vocabulary's) counts <start> and <end>: a longer report keeps its
        first max_len - 2 words and still ends with <end>, so the decoder always learns to stop.
        pad=True fills with <pad> up to max_len.
        """
        max_len = self.max_len if max_len is None else max_len
        ids = [self.ids.get(token, UNK_ID) for token in tokens]
        if max_len is not None:
            if max_len < 2:
                raise CxrgenError(f"max_len {max_len} leaves no room for <start> and <end>")
            ids = ids[: max_len - 2]
        ids = [START_ID, *ids, END_ID]
        if pad:
            if max_len is None:
                raise CxrgenError("pad=True needs a max_len")
            ids += [PAD_ID] * (max_len - len(ids))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The words of `ids` joined by spaces: stops at <end>; special tokens (<unk> too) left out."""
        words = []
        for index in ids:
            index = int(index)
            if not 0 <= index < len(self.words):
                raise CxrgenError(f"token id {index} is outside the vocabulary (size {len(self)})")
            if index == END_ID:
                break
            if index >= len(SPECIAL_TOKENS):
                words.append(self.words[index])
        return " ".join(words)

    def to_json(self) -> dict:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "min_count": self.min_count,
            "max_len": self.max_len,
            "size": len(self.words),
            "words": self.words,
            "counts": self.counts,
            "rare_words": self.rare_words,
            "rare_occurrences": self.rare_occurrences,
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadInput(path, "vocabulary file not found (run the prepare stage)") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(path, f"not a readable JSON vocabulary ({exc})") from None
        problem = _vocab_file_problem(data)
        if problem:
            raise BadInput(path, f"not a valid vocabulary file: {problem}")
        return cls(
            words=list(data["words"]),
            counts={word: int(count) for word, count in data["counts"].items()},
            min_count=int(data["min_count"]),
            max_len=data["max_len"],
            rare_words=int(data.get("rare_words", 0)),
            rare_occurrences=int(data.get("rare_occurrences", 0)),
        )


def _vocab_file_problem(data) -> str | None:
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        return f"'format' is not {FILE_FORMAT!r}"
    if data.get("version") != FILE_VERSION:
        return f"version {data.get('version')!r} is not {FILE_VERSION}"
    words, counts = data.get("words"), data.get("counts")
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        return "'words' is not a list of strings"
    if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        return f"the first words are not the special tokens {list(SPECIAL_TOKENS)}"
    if len(set(words)) != len(words):
        return "'words' has duplicates"
    if not isinstance(counts, dict) or set(counts) != set(words[len(SPECIAL_TOKENS) :]):
        return "'counts' does not list exactly the words"
    if not all(isinstance(count, int) and count >= 1 for count in counts.values()):
        return "'counts' are not positive integers"
    if not _is_int(data.get("min_count")):
        return "'min_count' is not an integer"
    max_len = data.get("max_len")
    if max_len is not None and not (_is_int(max_len) and max_len >= 2):
        return "'max_len' is neither null nor an integer >= 2"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_vocab(
    token_lists: Iterable[list[str]], min_count: int, max_len: int | None = None
) -> Vocab:
    """A vocabulary of the words seen at least `min_count` times in `token_lists`.

    Pass the TRAINING reports only: a word known only from validation or test reports would leak
    them into the model. Order: special tokens, then count (descending), then alphabetical.
    """
    if not _is_int(min_count) or min_count < 1:
        raise BadInput(PARAMS_FILE, f"vocabulary min_count must be an integer >= 1, not {min_count!r}")
    if max_len is not None and (not _is_int(max_len) or max_len < 3):
        raise BadInput(
            PARAMS_FILE, f"max_len must be an integer >= 3 (<start>, a word, <end>), not {max_len!r}"
        )
    counter: Counter[str] = Counter()
    for tokens in token_lists:
        if isinstance(tokens, str):  # a cleaned string would be counted letter by letter
            raise TypeError("build_vocab takes lists of tokens; split texts with text.tokenize")
        counter.update(tokens)
    for special in SPECIAL_TOKENS:  # a report can't claim a special token's id
        counter.pop(special, None)
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    kept = [(word, count) for word, count in ranked if count >= min_count]
    rare = [count for _, count in ranked if count < min_count]
    return Vocab(
        words=[*SPECIAL_TOKENS, *(word for word, _ in kept)],
        counts=dict(kept),
        min_count=min_count,
        max_len=max_len,
        rare_words=len(rare),
        rare_occurrences=sum(rare),
    )
