"""Report text: choosing the target section, cleaning it, splitting it into tokens.

Two cleaning schemes produce the same output shape (space-separated tokens, " . " between
sentences, a final " ."), so one tokenizer and one vocabulary builder serve both:

- "r2gen": the cleaning of R2Gen (Chen et al. 2020, `clean_report_iu_xray`), reproduced rule for
  rule, quirks included, so scores can be compared with the published IU X-ray results.
- "default": this project's scheme, which keeps what R2Gen's loses (see `clean_default`).
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from cxrgen.errors import BadInput

PARAMS_FILE = "params.yaml"
SCHEMES = ("r2gen", "default")
TARGETS = ("findings", "impression", "both")
SENTENCE_JOIN = " . "
REPORT_END = " ."


# --------------------------------------------------------------------------- missing values


def present_text(value) -> str | None:
    """`value` as a string, or None when it is missing (None, NaN, pandas NA, blank)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):  # also numpy.float64 NaN
        return None
    if not isinstance(value, str):
        raise TypeError(f"report text must be a string or missing, not {type(value).__name__}")
    return value if value.strip() else None


# --------------------------------------------------------------------------- R2Gen

# R2Gen's list-numbering replacements, applied one after the other in exactly this order
# (the order matters: '1. ' goes first, so '. 1. ' leaves '. ' and 'T11. ' loses '1. ').
_R2GEN_REPLACEMENTS = (
    ("..", "."),
    ("..", "."),
    ("..", "."),
    ("1. ", ""),
    (". 2. ", ". "),
    (". 3. ", ". "),
    (". 4. ", ". "),
    (". 5. ", ". "),
    (" 2. ", ". "),
    (" 3. ", ". "),
    (" 4. ", ". "),
    (" 5. ", ". "),
)

# R2Gen's character class, character for character. Read as a regex, ':-\[' inside the class is
# the RANGE ':' (0x3A) .. '[' (0x5B), i.e. ': ; < = > ? @ A-Z ['. So '-' is NOT deleted, and
# digits (0x30-0x39) survive; upper-case letters would be deleted, but the text is already
# lower-cased by then. (R2Gen wrote it as a non-raw string; '\[' and '\]' are invalid string
# escapes kept verbatim, so this raw string is the same pattern.)
_R2GEN_DELETE = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def _r2gen_sentence(sentence: str) -> str:
    for char in ('"', "/", "\\", "'"):
        sentence = sentence.replace(char, "")
    # strip happens BEFORE the deletion, as in R2Gen: "clear ," becomes "clear " (trailing space).
    return _R2GEN_DELETE.sub("", sentence.strip().lower())


def clean_r2gen(text: str) -> str:
    """R2Gen's IU X-ray cleaning, exactly (including its quirks).

    Quirks kept on purpose: "T12-L1. Heart" becomes "t12-lheart" (the '1. ' rule), '/' joins
    words ("XXXX/CT" -> "xxxxct"), and empty sentences are kept: "Clear. ." -> "clear .  .".
    The empty string gives " ." (use `clean` to map missing text to "").
    """
    for old, new in _R2GEN_REPLACEMENTS:
        text = text.replace(old, new)
    sentences = text.strip().lower().split(". ")
    # R2Gen filters with `sent_cleaner(sent) != []`: a string never equals a list, so the filter
    # keeps everything, and sentences that clean to "" stay in (they show up as " .  . ").
    cleaned = [_r2gen_sentence(sentence) for sentence in sentences]
    return SENTENCE_JOIN.join(cleaned) + REPORT_END


# --------------------------------------------------------------------------- the project's scheme

# Any run of two or more x's is a de-identified word ("XXXX"); no English word has "xx".
# A hyphen that ties it to a neighbour goes with it, so "x-XXXX" -> "x xxxx" and
# "XXXX-year-old" -> "xxxx year-old": the placeholder is always the single token "xxxx".
_DEIDENTIFIED = re.compile(r"-?x{2,}-?")
DEIDENTIFIED_TOKEN = "xxxx"

# Contractions spelled out so negations stay visible as "not" (needed by negation rules).
_IRREGULAR_NEGATIONS = {"can't": "can not", "won't": "will not", "cannot": "can not"}
_NT = re.compile(r"(?<=\w)n't\b")
_APOSTROPHES = re.compile(r"['\u2019\u2018`]")

# A unit glued to its number is split off: "1.5cm" -> "1.5 cm" ("9th", "t12", "2v" stay whole).
_GLUED_UNIT = re.compile(r"(?<=\d)(cm|mm|ml)\b")

# List numbering: one or two digits then '.' or ')' then whitespace, standing alone.
_LIST_MARKER = re.compile(r"(?:(?<=^)|(?<=\s))(\d{1,2})[.)](?=\s)")
_AFTER_SENTENCE_END = re.compile(r"[.;:?!]\s*$")

# Tokens: a word is letters/digits (any script) or a decimal number, optionally hyphenated
# ("t12-l1", "well-expanded", "1.5-2.0"); ". ? ! ;" end a sentence; "/" and "%" are kept as
# tokens of their own; every other character (, : ( ) " [ ] < > & * ...) is dropped. Letters are
# never deleted from inside a word.
_PIECE = r"(?:\d+\.\d+|[^\W_]+)"
_TOKEN = re.compile(rf"(?P<word>{_PIECE}(?:-{_PIECE})*)|(?P<end>[.?!;])|(?P<symbol>[/%])")


def _remove_list_numbering(text: str) -> str:
    """Replace list markers ("1. ", "2) ") by a sentence end; keep numbers that are data.

    A marker counts when it opens the text, follows a sentence end (". 2. "), or, in a list that
    opened with "1.", is the next number of the list ("1. Cardiomegaly 2. Effusion"). So
    "fracture of rib 7. No effusion" keeps its 7, and decimals ("1.5 cm") never match.
    """
    numbered_list = bool(re.match(r"\s*1[.)]\s", text))
    expected = 2
    pieces, last = [], 0
    for match in _LIST_MARKER.finditer(text):
        number = int(match.group(1))
        before = text[: match.start()]
        is_marker = (
            not before.strip()
            or _AFTER_SENTENCE_END.search(before)
            or (numbered_list and number == expected)
        )
        if not is_marker:
            continue
        if numbered_list and number == expected:
            expected += 1
        pieces.append(text[last : match.start()] + " . ")
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces)


def _normalise(text: str) -> str:
    text = html.unescape(text).lower()  # "&gt;" in a few reports is an escaped '>'
    text = _DEIDENTIFIED.sub(f" {DEIDENTIFIED_TOKEN} ", text)
    text = _APOSTROPHES.sub("'", text)
    for contraction, spelled in _IRREGULAR_NEGATIONS.items():
        text = re.sub(rf"\b{contraction}\b", spelled, text)
    text = _NT.sub(" not", text)
    text = _APOSTROPHES.sub("", text)  # "patient's" -> "patients", as in R2Gen
    return _GLUED_UNIT.sub(r" \1", text)


def _sentences(text: str) -> list[list[str]]:
    sentences, current = [], []
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "end":
            sentences.append(current)
            current = []
        else:
            current.append(match.group())
    sentences.append(current)
    return [sentence for sentence in sentences if sentence]  # unlike R2Gen, no empty sentences


def clean_default(text: str) -> str:
    """The project's cleaning: lower-case tokens, nothing clinical lost.

    - numbers stay, decimals included ("1.5 cm"); a glued unit is split ("2cm" -> "2 cm");
    - hyphenated words and vertebra levels stay one token ("well-expanded", "t12-l1");
    - "/" and "%" are tokens of their own ("and / or", "xxxx / ct", "50 %");
    - list numbering ("1. ", "2) ") is removed (see `_remove_list_numbering`);
    - sentences end at '.', '?', '!' and ';'; empty sentences are dropped;
    - other punctuation (, : ( ) quotes brackets ...) is removed; letters inside words never are;
    - de-identified words (any run of 2+ x's, also "x-XXXX", "XXXX-year-old") become "xxxx";
    - "n't" becomes " not" ("isn't" -> "is not") so negations stay visible; other apostrophes go;
    - "&gt;" style HTML escapes are decoded first.
    Output: tokens joined by spaces, " . " between sentences, ending in " ."; "" if nothing is left.
    """
    text = _remove_list_numbering(_normalise(text))
    sentences = _sentences(text)
    if not sentences:
        return ""
    return SENTENCE_JOIN.join(" ".join(words) for words in sentences) + REPORT_END


# --------------------------------------------------------------------------- entry points

_CLEANERS = {"r2gen": clean_r2gen, "default": clean_default}


def clean(text, scheme: str) -> str:
    """Clean report text with `scheme` ("r2gen" | "default"); missing or blank text gives ""."""
    if scheme not in _CLEANERS:
        raise BadInput(PARAMS_FILE, f"unknown cleaning scheme {scheme!r}; choose one of {SCHEMES}")
    value = present_text(text)
    return "" if value is None else _CLEANERS[scheme](value)


def tokenize(cleaned: str) -> list[str]:
    """Tokens of cleaned text (both schemes separate tokens, '.' included, by whitespace)."""
    return cleaned.split()


def target_text(findings, impression, target: str) -> str | None:
    """The raw text the model learns to write, or None when the report has none.

    target: "findings", "impression", or "both" (findings then impression; when one of them is
    missing, the other alone). Missing means None, NaN or blank.
    """
    if target not in TARGETS:
        raise BadInput(PARAMS_FILE, f"unknown report target {target!r}; choose one of {TARGETS}")
    findings, impression = present_text(findings), present_text(impression)
    if target == "findings":
        return findings
    if target == "impression":
        return impression
    if findings is None or impression is None:
        return findings if impression is None else impression
    findings = findings.rstrip()
    # Keep a sentence boundary between the two parts, in the form R2Gen splits on (". ").
    joiner = " " if findings.endswith((".", "?", "!")) else ". "
    return findings + joiner + impression.lstrip()
