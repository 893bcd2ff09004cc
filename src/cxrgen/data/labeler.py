"""A rule-based labeler for the 14 CheXpert observations, for clinical-correctness (CE) metrics.

The design follows the CheXpert labeler (Irvin et al. 2019) in three steps, with its parser-based
negation step approximated by NegEx-style trigger-and-scope rules (REFERENCE.md, "Clinical
correctness"):

1. **Mentions.** Each observation has a list of phrases (precompiled regexes over the normalised
   text, word-boundary safe). Some observations are also stated through an anatomical term plus a
   qualifier — "heart size is normal", "the cardiac silhouette is mildly enlarged", "normal
   cardiomediastinal silhouette", "the lungs are clear", "blunting of the costophrenic angle" —
   handled by `_Anatomy` rules: the anatomy alone is no mention; with an abnormal qualifier it is a
   mention judged like any other ("the heart is *not* enlarged" → negative), with a normal qualifier
   it is a negative mention whose trigger is the qualifier.
2. **Negation and uncertainty.** Triggers before a mention ("no", "without", "negative for", "free
   of", "clear of", "no evidence of", "not", "resolved", "may", "possible", "probable", "likely",
   "suggestive of", "concerning for", "cannot exclude", "versus" ...) or shortly after it ("is not
   seen", "are absent", "has resolved", "is likely", "cannot be excluded" ...). A trigger reaches a
   mention only inside one clause: the scope ends at the sentence end and at "but", "however",
   "although", "except", "otherwise", "there is/are" ...; commas are not used (the project's
   cleaned text has none). The trigger nearest the mention decides; triggers before the mention
   are read before triggers after it. Pseudo-negations ("no change", "not changed", "no interval
   increase") are no triggers, and the "not" inside "cannot be excluded" is uncertainty, not
   negation.
3. **Aggregation.** Per observation: positive beats uncertain beats negative; None when never
   mentioned. "No Finding" is 1 when no other observation is positive or uncertain — Support
   Devices excepted, as in CheXpert (a report of a pacemaker and nothing else is a normal study),
   otherwise 0; all None for an empty text.

Decisions (and why):

- Lung Lesion = nodule, mass, lesion, tumour, neoplasm, carcinoma, malignancy, metastasis (CheXpert's
  list). **Calcified granulomas are not lung lesions** here: a healed benign finding, not on
  CheXpert's list, and in IU MeSH they are a term of their own ("Calcified Granuloma"), which
  the MeSH mapping below accordingly leaves unmapped. "Lesion"/"mass" next to a bone, soft-tissue
  or abdominal word ("expansile lesion of the right 9th rib", "soft tissue mass") is no lung lesion.
- "The lungs are clear" / "clear lungs" negate **Lung Opacity only**: clear lungs say nothing
  about the heart, the pleural space or devices, and the more specific airspace findings are
  usually negated explicitly when the radiologist means it.
- Normal heart phrasing ("heart size is normal", "normal heart size", "the heart is not enlarged",
  "heart and mediastinum are unremarkable") → Cardiomegaly negative; the mediastinum and the
  *cardiomediastinal* silhouette → Enlarged Cardiomediastinum (as in CheXpert, where
  "cardiomediastinal silhouette" is an Enlarged Cardiomediastinum phrase).
- Edema includes vascular congestion, heart failure / CHF and prominent pulmonary vascularity
  (CheXpert lists congestion and heart failure under Edema).
- Support Devices: pacemakers/ICDs and their generators, catheters and named lines (central,
  PICC, jugular ...), named tubes (endotracheal, chest, feeding ...), shunt tubing, sternotomy and
  sternal wires, surgical clips, stents, coils, drains, prosthetic valves, "device", "hardware".
  Bare "line" and "lead" are too ambiguous ("pleural line", "leads to") and are left out.
- Pleural Other: pleural thickening, plaques, calcification, scarring, "pleural abnormality",
  apical caps, fibrothorax. Interstitial markings and scarring are no Lung Opacity (chronic, and
  IU indexes them as separate MeSH terms, "Markings" and "Cicatrix").
- Uncertainty includes "borderline" ("borderline cardiomegaly" is uncertain) and "favored".
- "xxxx" (the de-identification token, any run of 2+ x's) is an ordinary word: it never matches a
  phrase, and scopes run across it ("no xxxx consolidation" is negative).

The text is normalised first (`normalise`), so raw report text and both cleaning schemes of
`cxrgen.text` give the same labels: lower case, HTML escapes decoded, "xxxx" unified,
contractions spelled out ("can't", "cannot", "isnt" → "... not"), punctuation other than sentence
ends dropped, sentences joined with " . " as the cleaned text does. Spans of `Mention` index that
normalised text.

The second half of the module validates the labeler against the human MeSH major terms of IU
X-ray (`mesh_observations`, `agreement_with_mesh`).
"""

from __future__ import annotations

import html
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cxrgen.data.text import present_text
from cxrgen.observations import NO_FINDING, OBSERVATIONS, PATHOLOGIES, SUPPORT_DEVICES

LABELER_VERSION = "cxrgen-chexpert-rules/1"


POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
STATUS_VALUE = {"positive": POSITIVE, "negative": NEGATIVE, "uncertain": UNCERTAIN}


@dataclass(frozen=True)
class Mention:
    """One statement about an observation, as found in the normalised text (see `normalise`)."""

    observation: str
    status: str  # "positive" | "negative" | "uncertain"
    sentence: int  # index of the sentence in the normalised text
    phrase: str  # the matched words
    trigger: str | None  # the negation / uncertainty / normal-qualifier words that decided, if any
    span: tuple[int, int]  # [start, end) of `phrase` in the normalised text


# --------------------------------------------------------------------------- normalisation

_DEIDENTIFIED = re.compile(r"-?x{2,}-?")
_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_CONTRACTIONS = (
    (re.compile(r"\bcan ?not\b|\bcan'?t\b"), "can not"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (re.compile(r"(?<=\w)n't\b"), " not"),
    # R2Gen's cleaning deletes apostrophes: "isn't" arrives as "isnt".
    (re.compile(r"\b(is|are|was|were|do|does|did|has|have|had|could|should|would)nt\b"), r"\1 not"),
)
# A sentence ends at '.', unless a digit follows (decimals), and at ';', '?', '!'.
_SENTENCE_END = re.compile(r"\.(?!\d)|[;?!]")
_DROP = re.compile(r"[^a-z0-9.\- ]+")


def _sentences(text) -> list[str]:
    text = present_text(text)  # None for None / NaN / NA / blank; TypeError for a non-string
    if text is None:
        return []
    text = html.unescape(text).lower()
    text = _DEIDENTIFIED.sub(" xxxx ", text)
    text = _APOSTROPHES.sub("'", text)
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = text.replace("'", "").replace("/", " ")
    sentences = []
    for piece in _SENTENCE_END.split(text):
        words = _DROP.sub(" ", piece).split()
        if words:
            sentences.append(" ".join(words))
    return sentences


def normalise(text) -> str:
    """The text the labeler reads (spans of `Mention` index it): lower-case words, " . " between
    sentences, a final " ."; "" for missing or empty text. Idempotent."""
    sentences = _sentences(text)
    return " . ".join(sentences) + " ." if sentences else ""


# --------------------------------------------------------------------------- phrase lists


def _words(*alternatives: str) -> str:
    """One regex alternation, longest alternatives first, with word boundaries around it."""
    ordered = sorted(alternatives, key=len, reverse=True)
    return r"(?<![\w-])(?:" + "|".join(ordered) + r")(?![\w-])"


# Direct mentions: words that state the observation (negation and uncertainty decide the status).
_PHRASES: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"widen(?:ed|ing) (?:of )?(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
        r"enlarged (?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac enlargement",
        r"(?:enlarged|large) (?:heart|cardiac (?:silhouette|shadow|size))",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow))",
    ),
    "Lung Lesion": (
        r"nodules?",
        r"nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification|lesions?)",
        r"(?<!soft tissue )mass(?:es)?(?! effect)",
        r"lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
        r"malignanc(?:y|ies)",
        r"metastas[ie]s",
        r"metastatic (?:disease|lesions?|deposits?|foci)",
    ),
    "Lung Opacity": (
        r"(?<!nodular )opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"infiltrat(?:e|es|ion|ions|ive)",
        r"air[- ]?space (?:disease|process|density|densities)",
        r"(?<!nodular )(?<!metallic )(?<!calcific )(?<!calcified )(?<!bone )(?<!soft tissue )densit(?:y|ies)",
        r"haziness",
    ),
    "Edema": (
        r"(?<!soft tissue )(?<!tissue )o?edema",
        r"(?:vascular|pulmonary|venous) congestion",
        r"(?:congestive )?heart failure",
        r"cardiac failure",
        r"chf",
        r"(?:pulmonary )?vascular (?:engorgement|redistribution|prominence)",
        r"cephalization",
        r"kerley (?:b )?lines",
    ),
    "Consolidation": (
        r"consolidat(?:ion|ions|ive|ed)",
    ),
    "Pneumonia": (
        r"(?:broncho)?pneumonias?",
        r"(?:pulmonary |lung )?infections?",
        r"infectious (?:process|etiology|disease)",
    ),
    "Atelectasis": (
        r"atelecta(?:sis|ses|tic)",
        r"(?:lobar|lobe|lung|segmental) collapse",
        r"collapse of the (?:\S+ ){0,2}(?:lobe|lung)",
    ),
    "Pneumothorax": (
        r"(?:hydro)?pneumothora(?:x|ces|xes)",
    ),
    "Pleural Effusion": (
        r"pleural effusions?",
        r"(?<!pericardial )(?<!joint )(?<!pleural )effusions?",
        r"pleural fluid",
        r"hydrothorax",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|calcifications?|scarring|fibrosis|abnormalit(?:y|ies))",
        r"pleural-parenchymal (?:scarring|thickening|changes)",
        r"pleuroparenchymal (?:scarring|thickening|changes)",
        r"thicken(?:ing|ed) (?:of )?(?:the )?(?:\S+ )?pleura",
        r"(?:apical )?pleural caps?",
        r"apical capping",
        r"fibrothorax",
    ),
    "Fracture": (
        r"fractur(?:e|es|ed|ing)",
        r"fx",
    ),
    "Support Devices": (
        r"pacemakers?",
        r"pacers?",
        r"pacing (?:leads?|wires?|device)",
        r"a?icds?",
        r"(?:cardiac )?defibrillators?",
        r"generators?",
        r"catheters?",
        r"piccs?",
        r"(?:central|venous|jugular|subclavian|arterial|dialysis|hemodialysis|swan-ganz|swan ganz|picc|port) lines?",
        r"port-?a-?caths?",
        r"mediports?",
        r"(?:chest|infusion|venous|power) ports?",
        r"(?:endotracheal|et|nasogastric|ng|orogastric|og|feeding|chest|tracheostomy|gastrostomy|enteric"
        r"|dobhoff|drainage|thoracostomy|nasoenteric|tracheal|g|j) tubes?",
        r"tracheostomy",
        r"tubing",
        r"(?:vp |ventriculoperitoneal |tips )?shunts?",
        r"(?:sternotomy|sternal|cerclage|surgical|epicardial) wires?",
        r"(?:median )?sternotomy",
        r"(?:surgical |vascular |cholecystectomy )?clips?",
        r"stents?",
        r"coils?",
        r"drains?",
        r"(?:prosthetic|mechanical|artificial) (?:\S+ )?valves?",
        r"valve (?:replacement|prosthesis)",
        r"devices?",
        r"hardware",
        r"loop recorder",
        r"(?:ekg|ecg|telemetry|monitoring) (?:leads|wires|electrodes)",
        # Where de-identification hid the device's name: "right chest xxxx tip in the low svc".
        r"tip (?:\S+ ){0,4}(?:svc|superior vena cava|cavoatrial junction|right atrium|carina)",
    ),
}

# Words that make a Lung Lesion phrase something else ("expansile lesion of the right 9th rib").
_NOT_LUNG = re.compile(_words(
    r"ribs?", r"clavic\w*", r"humer\w*", r"scapul\w*", r"vertebra\w*", r"spine", r"spinal", r"osseous",
    r"bones?", r"bony", r"lytic", r"sclerotic", r"blastic", r"expansile", r"skin", r"cutaneous",
    r"soft", r"breast", r"thyroid", r"liver", r"hepatic", r"renal", r"kidneys?", r"adrenal",
    r"abdom\w*", r"nipple", r"sternum", r"sternal",
))
_EXCLUDE_CONTEXT = {"Lung Lesion": (_NOT_LUNG, 2, 3)}  # (pattern, tokens before, tokens after)


@dataclass(frozen=True)
class _Anatomy:
    """An anatomical term that states an observation only together with a qualifier."""

    observation: str
    anatomy: re.Pattern
    abnormal: re.Pattern | None  # qualifier → a mention judged by the trigger rules
    normal: re.Pattern | None  # qualifier → a negative mention
    after: int = 8  # tokens after the anatomy searched for a qualifier
    before: int = 3  # tokens before it


_NORMAL = _words(r"normal", r"unremarkable")
_ANATOMY = (
    _Anatomy(
        "Cardiomegaly",
        re.compile(_words(
            r"heart(?: size| silhouette| shadow| contours?)?(?! failure| rate| valves?| disease)",
            r"cardiac (?:size|silhouette|shadow|contours?)",
            r"cardiac(?= and mediastinal)",
        )),
        abnormal=re.compile(_words(r"enlarged", r"enlargement(?: of)?(?: the)?", r"large", r"increased",
                                   r"prominent")),
        normal=re.compile(_NORMAL),
    ),
    _Anatomy(
        "Enlarged Cardiomediastinum",
        re.compile(_words(
            r"cardiomediastinal(?: silhouettes?| contours?| size| shadow| width)?",
            r"mediastin(?:um|al)(?: silhouettes?| contours?| shadow| width)?"
            r"(?! lymph| nodes?| adenopathy| lymphadenopathy| clips?| mass| masses| drains?| shift)",
        )),
        abnormal=re.compile(_words(r"enlarged", r"enlargement(?: of)?(?: the)?", r"widened",
                                   r"widening(?: of)?(?: the)?", r"wide", r"prominent", r"large")),
        normal=re.compile(_NORMAL),
    ),
    _Anatomy(
        "Lung Opacity",
        re.compile(_words(r"lungs?", r"lung fields", r"lung bases")),
        abnormal=None,
        normal=re.compile(_words(r"clear")),
        after=5,
        before=2,
    ),
    _Anatomy(
        "Pleural Effusion",
        re.compile(_words(r"costophrenic (?:angles?|sulcus|sulci|recess(?:es)?)")),
        abnormal=re.compile(_words(r"blunt(?:ed|ing)(?: of)?(?: the)?", r"blunt")),
        normal=re.compile(_words(r"sharp", r"clear", r"normal")),
        after=5,
        before=4,
    ),
    _Anatomy(
        "Edema",
        re.compile(_words(r"(?:pulmonary )?vascul(?:arity|ature)", r"pulmonary vessels",
                          r"vascular markings")),
        abnormal=re.compile(_words(r"prominent", r"prominence of(?: the)?", r"congested", r"engorged",
                                   r"increased", r"indistinct")),
        normal=None,  # normal vessels say little about edema
        after=5,
        before=3,
    ),
)

# All direct phrases in one regex, one named group per observation: one scan of the text instead of
# thirteen (the phrases of different observations do not overlap, so nothing is lost).
_GROUP_OBSERVATION = {f"o{i}": observation for i, observation in enumerate(_PHRASES)}
_MENTIONS = re.compile(r"(?<![\w-])(?:" + "|".join(
    f"(?P<o{i}>" + "|".join(sorted(phrases, key=len, reverse=True)) + ")"
    for i, phrases in enumerate(_PHRASES.values())
) + r")(?![\w-])")

# --------------------------------------------------------------------------- triggers

# kind: "neg" / "unc"; where: "pre" (before the mention) / "post" (after it); max gap in tokens.
_TRIGGERS = (
    ("neg", "pre", 12, _words(
        r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"absence of", r"absent", r"none",
        r"no evidence of", r"no signs? of", r"no findings? of", r"no radiographic evidence of",
        r"resolved", r"resolution of", r"interval resolution of", r"removal of", r"removed", r"nor",
        r"neither", r"rather than", r"never",
    )),
    ("neg", "pre", 3, _words(r"clear")),  # "lungs are expanded and clear airspace disease"
    ("neg", "post", 6, _words(
        r"(?:is |are |was |were )?not (?:seen|identified|present|visualized|visualised|demonstrated"
        r"|evident|appreciated|noted|detected|shown)",
        r"(?:is |are |was |were )?absent",
        r"(?:has |have )?(?:resolved|cleared)",
        r"(?:has |have )?(?:been )?removed",
        r"(?:is |are )?no longer (?:seen|present|visualized|identified|evident)",
        r"(?:is |are |has been |have been )?ruled out",
    )),
    ("unc", "pre", 12, _words(
        r"may", r"might", r"could", r"possible", r"possibly", r"probable", r"probably", r"likely",
        r"(?<!to )suggest(?:s|ed|ing)?", r"suggestive of", r"suggestion of", r"suspicious(?: for)?",
        r"suspect(?:s|ed)?", r"concern(?:ing)? for", r"worrisome for", r"questionable",
        r"question of", r"equivocal", r"borderline", r"differential(?: diagnosis)?(?: includes)?",
        r"versus", r"vs", r"favou?r(?:s|ed|ing)?", r"indeterminate", r"uncertain", r"cannot be excluded",
        r"(?:can|could|may) not (?:entirely |completely |definitely )?(?:exclude|rule out)",
        r"not (?:entirely |completely )?(?:exclude|rule out)", r"(?:to )?rule out", r"difficult to exclude",
    )),
    ("unc", "post", 3, _words(
        # "possible" etc. after a mention only with a verb: "atelectasis is likely", but
        # "pleural abnormality with possible effusions" leaves the abnormality certain.
        r"(?:is|are|was|were|remains?|seems?|appears?) (?:also |more |most )?(?:possible|likely|probable"
        r"|suspected|questioned|questionable|favou?red)",
        r"suspected", r"not excluded",
        r"versus", r"vs",
        r"(?:can|could|may) not (?:be )?(?:entirely |completely |definitely )?(?:excluded|ruled out)",
        r"(?:is |are )?not (?:entirely |completely |definitely )?(?:excluded|ruled out)",
    )),
)
_TRIGGER_PATTERNS = tuple((kind, where, gap, re.compile(pattern)) for kind, where, gap, pattern in _TRIGGERS)

# Negation words that are no negation here.
_PSEUDO = re.compile(_words(
    r"no (?:significant |appreciable |interval |substantial |definite )*(?:change|increase|worsening|progression)",
    r"not (?:significantly )?(?:changed|increased)",
    r"without (?:significant |interval )*(?:change|increase|worsening)",
    r"not only",
))
# Words that end a trigger's scope.
_TERMINATORS = re.compile(_words(
    r"but", r"however", r"although", r"though", r"except", r"aside from", r"apart from", r"otherwise",
    r"whereas", r"while", r"nevertheless", r"yet", r"there (?:is|are)", r"with the exception of",
))


@dataclass(frozen=True)
class _Trigger:
    kind: str
    where: str
    max_gap: int
    start: int
    end: int
    text: str


class _Doc:
    """A normalised text with the positions the rules need (sentences, clauses, tokens, triggers)."""

    def __init__(self, text: str):
        self.text = text
        self.sentence_starts = [0]
        for match in re.finditer(r" \. ", text):
            self.sentence_starts.append(match.end())
        # Clause boundaries: sentence separators and scope terminators.
        bounds = [m.start() + 1 for m in re.finditer(r" \. ", text)]
        bounds += [m.start() for m in _TERMINATORS.finditer(text)]
        self.bounds = sorted(bounds)
        pseudo = [m.span() for m in _PSEUDO.finditer(text)]
        triggers = []
        for kind, where, gap, pattern in _TRIGGER_PATTERNS:
            for m in pattern.finditer(text):
                if not any(a <= m.start() < b for a, b in pseudo):
                    triggers.append(_Trigger(kind, where, gap, m.start(), m.end(), m.group()))
        # A trigger inside a longer one ("not" in "can not be excluded") gives way to it.
        triggers.sort(key=lambda t: (t.start, -(t.end - t.start)))
        kept: list[_Trigger] = []
        for t in triggers:
            if any(k.start <= t.start and t.end <= k.end and (k.end - k.start) > (t.end - t.start)
                   for k in kept[-4:]):
                continue
            kept.append(t)
        # Uncertainty words right after a negation belong to the negated phrase: "no suspicious
        # nodules", "no definite effusion", "no possible pneumonia" are negations.
        self.token_starts = [m.start() for m in re.finditer(r"\S+", text)]
        self.triggers = [
            t for i, t in enumerate(kept)
            if not (t.kind == "unc" and t.where == "pre" and any(
                k.kind == "neg" and k.where == "pre" and k.end <= t.start and self.gap(k.end, t.start) <= 1
                and self.same_clause(k.start, t.start) for k in kept[max(0, i - 3):i]))
        ]

    def sentence_of(self, pos: int) -> int:
        return bisect_right(self.sentence_starts, pos) - 1

    def token_of(self, pos: int) -> int:
        """Index of the token containing (or starting after) `pos`."""
        return bisect_right(self.token_starts, pos) - 1

    def same_clause(self, a: int, b: int) -> bool:
        """No clause boundary in (a, b] (a <= b)."""
        return bisect_right(self.bounds, a) == bisect_right(self.bounds, b)

    def gap(self, left_end: int, right_start: int) -> int:
        """Tokens strictly between a span ending at `left_end` and one starting at `right_start`."""
        return self.token_of(right_start) - self.token_of(left_end - 1) - 1

    def window(self, start: int, end: int, before: int, after: int) -> tuple[int, int]:
        """Character range from `before` tokens before `start` to `after` tokens after `end`,
        cut to the clause."""
        first = max(self.token_of(start) - before, 0)
        last = min(self.token_of(end - 1) + after, len(self.token_starts) - 1)
        lo = self.token_starts[first]
        hi = self.token_starts[last + 1] - 1 if last + 1 < len(self.token_starts) else len(self.text)
        i = bisect_right(self.bounds, start)
        if i > 0:
            lo = max(lo, self.bounds[i - 1])
        j = bisect_left(self.bounds, end)
        if j < len(self.bounds):
            hi = min(hi, self.bounds[j])
        return lo, hi


def _crosses_sentence(match_text: str) -> bool:
    return " . " in match_text


def _assert(doc: _Doc, anchor: int, end: int) -> tuple[str, str | None]:
    """Status of a mention whose abnormality words start at `anchor` and whose span ends at `end`."""
    best_pre = None
    for t in doc.triggers:
        if t.start >= anchor:
            break
        if t.where != "pre" or t.end > anchor or not doc.same_clause(t.start, anchor):
            continue
        if doc.gap(t.end, anchor) <= t.max_gap:
            best_pre = t  # triggers are in order: the last one kept is the nearest
    if best_pre is not None:
        return ("negative" if best_pre.kind == "neg" else "uncertain"), best_pre.text
    for t in doc.triggers:
        if t.where != "post" or t.start < end:
            continue
        if not doc.same_clause(end - 1, t.start):
            continue
        if doc.gap(end, t.start) <= t.max_gap:
            return ("negative" if t.kind == "neg" else "uncertain"), t.text
    return "positive", None


def _excluded(doc: _Doc, observation: str, start: int, end: int) -> bool:
    rule = _EXCLUDE_CONTEXT.get(observation)
    if rule is None:
        return False
    pattern, before, after = rule
    lo, hi = doc.window(start, end, before, after)
    context = doc.text[lo:start] + " " + doc.text[end:hi]
    return pattern.search(context) is not None


def _anatomy_mentions(doc: _Doc, rule: _Anatomy) -> list[Mention]:
    out = []
    text = doc.text
    for m in rule.anatomy.finditer(text):
        a_start, a_end = m.span()
        lo, hi = doc.window(a_start, a_end, rule.before, rule.after)
        found = None  # (distance, kind, start, end)
        for kind, pattern in (("abnormal", rule.abnormal), ("normal", rule.normal)):
            if pattern is None:
                continue
            after = pattern.search(text, a_end, hi)
            if after is not None:
                candidate = (after.start() - a_end, kind, after.start(), after.end())
                found = candidate if found is None or candidate < found else found
            for before in pattern.finditer(text, lo, a_start):
                if before.end() <= a_start:
                    candidate = (a_start - before.end(), kind, before.start(), before.end())
                    found = candidate if found is None or candidate < found else found
        if found is None:
            continue
        _, kind, q_start, q_end = found
        start, end = min(a_start, q_start), max(a_end, q_end)
        sentence = doc.sentence_of(a_start)
        if kind == "normal":
            out.append(Mention(rule.observation, "negative", sentence, text[start:end], text[q_start:q_end],
                               (start, end)))
        else:
            status, trigger = _assert(doc, q_start, end)
            out.append(Mention(rule.observation, status, sentence, text[start:end], trigger, (start, end)))
    return out


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def find_mentions(text) -> list[Mention]:
    """Every mention of an observation in `text` (raw or cleaned), in text order.

    Spans index `normalise(text)`. "No Finding" is never mentioned; it is derived in `label_report`.
    """
    return _find(normalise(text))


def _find(normalised: str) -> list[Mention]:
    if not normalised:
        return []
    doc = _Doc(normalised)
    mentions: list[Mention] = []
    for m in _MENTIONS.finditer(normalised):
        observation = _GROUP_OBSERVATION[m.lastgroup]
        if _crosses_sentence(m.group()) or _excluded(doc, observation, m.start(), m.end()):
            continue
        status, trigger = _assert(doc, m.start(), m.end())
        mentions.append(Mention(observation, status, doc.sentence_of(m.start()), m.group(), trigger, m.span()))
    for rule in _ANATOMY:
        for mention in _anatomy_mentions(doc, rule):
            if _crosses_sentence(mention.phrase):
                continue
            # A direct phrase of the same observation over the same words says it already.
            if any(o.observation == mention.observation and _overlaps(o.span, mention.span) for o in mentions):
                continue
            mentions.append(mention)
    mentions.sort(key=lambda x: (x.span, OBSERVATIONS.index(x.observation)))
    return mentions


def aggregate(mentions: Iterable[Mention], empty: bool = False) -> dict[str, int | None]:
    """CheXpert aggregation: positive > uncertain > negative > None; then "No Finding"."""
    labels: dict[str, int | None] = {o: None for o in OBSERVATIONS}
    if empty:
        return labels
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    for mention in mentions:
        value = STATUS_VALUE[mention.status]
        current = labels[mention.observation]
        if current is None or rank[value] > rank[current]:
            labels[mention.observation] = value
    abnormal = any(labels[o] in (POSITIVE, UNCERTAIN) for o in PATHOLOGIES)
    labels[NO_FINDING] = NEGATIVE if abnormal else POSITIVE
    return labels


def label_report(text) -> dict[str, int | None]:
    """{observation: 1 positive | 0 negative | -1 uncertain | None not mentioned}, all 14 keys.

    "No Finding" is 1 when no observation other than Support Devices is positive or uncertain,
    else 0; every label is None when the text is missing or empty.
    """
    normalised = normalise(text)
    return aggregate(_find(normalised), empty=not normalised)


def label_matrix(texts: Iterable) -> np.ndarray:
    """Labels of many texts: float32 array (n, 14) in `OBSERVATIONS` order, nan = not mentioned."""
    rows = []
    for text in texts:
        labels = label_report(text)
        rows.append([np.nan if labels[o] is None else float(labels[o]) for o in OBSERVATIONS])
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(OBSERVATIONS))


def positive_matrix(labels, uncertain_as_positive: bool = False) -> np.ndarray:
    """Boolean (n, 14) "stated present": label 1 (and -1 when `uncertain_as_positive`).

    `labels`: a `label_matrix` array, or a label dict / a list of label dicts from `label_report`.
    """
    if isinstance(labels, Mapping):
        labels = [labels]
    if not isinstance(labels, np.ndarray):
        labels = [[np.nan if row[o] is None else row[o] for o in OBSERVATIONS] for row in labels]
    array = np.asarray(labels, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != len(OBSERVATIONS):
        raise ValueError(f"expected labels of shape (n, {len(OBSERVATIONS)}), got {array.shape}")
    positive = array == POSITIVE
    if uncertain_as_positive:
        positive |= array == UNCERTAIN
    return positive


# =========================================================================== MeSH validation

# IU X-ray MeSH major terms look like "Term/modifier/modifier": the head decides, modifiers refine.
_MESH_HEADS: dict[str, tuple[str, ...]] = {
    "normal": (NO_FINDING,),
    "cardiomegaly": ("Cardiomegaly",),
    "pulmonary atelectasis": ("Atelectasis",),
    "atelectasis": ("Atelectasis",),
    "opacity": ("Lung Opacity",),
    "infiltrate": ("Lung Opacity",),
    "airspace disease": ("Lung Opacity",),
    "density": ("Lung Opacity",),
    "nodule": ("Lung Lesion",),
    "multiple pulmonary nodules": ("Lung Lesion",),
    "solitary pulmonary nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "lung neoplasms": ("Lung Lesion",),
    "neoplasms": ("Lung Lesion",),
    "edema": ("Edema",),
    "pulmonary edema": ("Edema",),
    "pulmonary congestion": ("Edema",),
    "heart failure": ("Edema",),
    "consolidation": ("Consolidation",),
    "pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "pleural effusion": ("Pleural Effusion",),
    "pleura": ("Pleural Other",),
    "pleural thickening": ("Pleural Other",),
    "catheters, indwelling": (SUPPORT_DEVICES,),
    "central venous catheters": (SUPPORT_DEVICES,),
    "implanted medical device": (SUPPORT_DEVICES,),
    "medical device": (SUPPORT_DEVICES,),
    "pacemaker, artificial": (SUPPORT_DEVICES,),
    "defibrillators, implantable": (SUPPORT_DEVICES,),
    "tubes": (SUPPORT_DEVICES,),
    "stents": (SUPPORT_DEVICES,),
    "surgical instruments": (SUPPORT_DEVICES,),
    "sternotomy": (SUPPORT_DEVICES,),
    "prostheses and implants": (SUPPORT_DEVICES,),
    "heart valve prosthesis": (SUPPORT_DEVICES,),
    "electrodes": (SUPPORT_DEVICES,),
    "electrodes, implanted": (SUPPORT_DEVICES,),
}
_ENLARGED = {"enlarged", "enlargement", "large", "widened", "wide", "prominent"}
_NOT_LUNG_MODIFIERS = {"breast", "soft tissue", "ribs", "bone", "thyroid", "abdomen", "skin", "spine",
                       "clavicle", "humerus", "neck", "shoulder"}
UNINDEXED = "No Indexing"


def _mesh_term_observations(term: str) -> set[str]:
    parts = [p.strip().lower() for p in term.split("/")]
    head, modifiers = parts[0], set(parts[1:])
    if head.startswith("fracture") or head == "rib fractures":
        return {"Fracture"}
    if head in ("cardiac shadow", "heart") and modifiers & _ENLARGED:
        return {"Cardiomegaly"}
    if head == "mediastinum" and modifiers & _ENLARGED:
        return {"Enlarged Cardiomediastinum"}
    if head == "thickening" and "pleura" in modifiers:
        return {"Pleural Other"}
    if head == "costophrenic angle" and modifiers & {"blunted", "blunting"}:
        return {"Pleural Effusion"}
    observations = set(_MESH_HEADS.get(head, ()))
    if "Lung Lesion" in observations and modifiers & _NOT_LUNG_MODIFIERS:
        observations.discard("Lung Lesion")
    return observations


def mesh_observations(terms) -> frozenset[str] | None:
    """The observations IU MeSH major `terms` state positive; None when the report is unindexed
    (no terms, or only "No Indexing").

    Mapped: Cardiomegaly, Cardiac Shadow/enlarged → Cardiomegaly;
    Mediastinum/enlarged|widened → Enlarged Cardiomediastinum; Opacity, Infiltrate, Airspace
    Disease, Density → Lung Opacity; Nodule, Mass (not of a bone/soft tissue) → Lung Lesion;
    (Pulmonary) Edema, Pulmonary Congestion, Heart Failure → Edema; Consolidation; Pneumonia;
    (Pulmonary) Atelectasis; Pneumothorax; Pleural Effusion, Costophrenic Angle/blunted → Pleural
    Effusion; Pleura/..., Thickening/pleura → Pleural Other; Fractures, ... → Fracture; catheters,
    devices, pacemakers, tubes, stents, surgical instruments (clips), sternotomy → Support Devices.
    Left out on purpose (no CheXpert observation): Calcified Granuloma, Granuloma, Cicatrix,
    Markings, Lung/hypoinflation|hyperdistention, Emphysema, spine and other bone terms, Aorta ...
    "No Finding" follows the labeler's rule: no term maps to one of the 12 pathologies ("normal"
    included; MeSH's own "normal" alone — nothing abnormal at all — is stricter than CheXpert's).
    """
    if terms is None or (isinstance(terms, float) and math.isnan(terms)):
        return None
    terms = [str(t).strip() for t in terms if t is not None and str(t).strip()]
    indexed = [t for t in terms if t.lower() != UNINDEXED.lower()]
    if not indexed:
        return None
    out: set[str] = set()
    for term in indexed:
        out |= _mesh_term_observations(term)
    # "No Finding" by the labeler's own rule, so both sides mean the same thing: "normal", or only
    # terms outside the 14 observations (degenerative spine, granuloma, ...) or only devices.
    out.discard(NO_FINDING)
    if not out & set(PATHOLOGIES):
        out.add(NO_FINDING)
    return frozenset(out)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _confusion_stats(tp: int, fp: int, fn: int, tn: int) -> dict:
    n = tp + fp + fn + tn
    accuracy = _ratio(tp + tn, n)
    kappa = None
    if n:
        observed = (tp + tn) / n
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
        if expected < 1:
            kappa = round((observed - expected) / (1 - expected), 4)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": accuracy,
        "cohen_kappa": kappa,
    }


def _report_text(row, text_columns) -> str | None:
    parts = []
    for column in text_columns:
        value = present_text(row.get(column))
        if value is not None:
            parts.append(value.strip())
    # " . " keeps a sentence boundary between the sections whatever their last character.
    return " . ".join(parts) if parts else None


def agreement_with_mesh(reports_df, text_columns=("findings", "impression"),
                        uncertain_as_positive: bool = False) -> dict:
    """The labeler on the report text vs the human MeSH major terms, per observation and overall.

    Reports count when MeSH indexes them (see `mesh_observations`) and `text_columns` hold some
    text; the others are counted under "excluded". Per observation: n_reports, mesh_positive,
    labeler_positive, both, precision, recall, f1, accuracy, cohen_kappa (null when undefined).
    "micro" pools every observation's table, "macro" averages the defined per-observation values;
    "micro_findings" / "macro_findings" leave out "No Finding" (the 13 stated observations only).
    "mesh_normal_vs_no_finding" compares the labeler's No Finding with MeSH's strict "normal".
    """
    excluded = {"no_mesh_terms": 0, "no_indexing": 0, "no_text": 0}
    truth, predicted, strict_normal = [], [], []
    total = 0
    for row in reports_df.to_dict("records"):
        total += 1
        terms = row.get("mesh_major")
        terms = [] if terms is None or (isinstance(terms, float) and math.isnan(terms)) else list(terms)
        mesh = mesh_observations(terms)
        if mesh is None:
            excluded["no_indexing" if terms else "no_mesh_terms"] += 1
            continue
        text = _report_text(row, text_columns)
        if text is None:
            excluded["no_text"] += 1
            continue
        truth.append([o in mesh for o in OBSERVATIONS])
        strict_normal.append(any(str(t).strip().lower() == "normal" for t in terms))
        predicted.append(label_report(text))
    n = len(truth)
    truth_arr = np.array(truth, dtype=bool).reshape(n, len(OBSERVATIONS))
    pred_arr = positive_matrix(predicted, uncertain_as_positive) if n else np.zeros((0, len(OBSERVATIONS)), bool)

    per_observation, tables = {}, {}
    for j, observation in enumerate(OBSERVATIONS):
        t, p = truth_arr[:, j], pred_arr[:, j]
        tp, fp = int((t & p).sum()), int((~t & p).sum())
        fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
        tables[observation] = (tp, fp, fn, tn)
        per_observation[observation] = {
            "n_reports": n, "mesh_positive": tp + fn, "labeler_positive": tp + fp, "both": tp,
            **_confusion_stats(tp, fp, fn, tn),
        }

    def pooled(observations) -> dict:
        tp, fp, fn, tn = (sum(tables[o][k] for o in observations) for k in range(4))
        return {"observations": len(observations), "mesh_positive": tp + fn, "labeler_positive": tp + fp,
                "both": tp, **_confusion_stats(tp, fp, fn, tn)}

    def averaged(observations) -> dict:
        out = {}
        for key in ("precision", "recall", "f1", "cohen_kappa"):
            values = [per_observation[o][key] for o in observations if per_observation[o][key] is not None]
            out[key] = round(float(np.mean(values)), 4) if values else None
            out[f"{key}_observations"] = len(values)
        return out

    normal = np.array(strict_normal, dtype=bool)
    said_normal = pred_arr[:, OBSERVATIONS.index(NO_FINDING)]
    tp, fp = int((normal & said_normal).sum()), int((~normal & said_normal).sum())
    fn, tn = int((normal & ~said_normal).sum()), int((~normal & ~said_normal).sum())
    strict = {"mesh_positive": tp + fn, "labeler_positive": tp + fp, "both": tp, **_confusion_stats(tp, fp, fn, tn)}

    mapped = MESH_MAPPED_OBSERVATIONS
    findings = tuple(o for o in mapped if o != NO_FINDING)
    return {
        "labeler": LABELER_VERSION,
        "text_columns": list(text_columns),
        "uncertain_as_positive": uncertain_as_positive,
        "reports_total": total,
        "n_reports": n,
        "excluded": excluded,
        "per_observation": per_observation,
        "micro": pooled(mapped),
        "macro": averaged(mapped),
        "micro_findings": pooled(findings),
        "macro_findings": averaged(findings),
        "mesh_normal_vs_no_finding": strict,
    }


# Every observation has at least one MeSH head or rule mapped to it.
MESH_MAPPED_OBSERVATIONS = OBSERVATIONS
