"""Evaluation metrics: text overlap (BLEU, METEOR, ROUGE-L, CIDEr-D), clinical correctness, and
bootstrap intervals over test studies.

Text metrics follow the literature's protocol (REFERENCE.md): the COCO caption toolkit
(`pycocoevalcap`) on cleaned text, one reference per study.

- BLEU-1..4 is computed here, from per-study sufficient statistics (clipped n-gram matches and
  totals per order, hypothesis length, effective reference length), so that a bootstrap can
  recompute the *corpus* score of any resample with one matrix product. It reproduces
  `pycocoevalcap.bleu.Bleu(4)` exactly: whitespace tokens, "closest" reference length (ties go to
  the shorter reference), the constants tiny = 1e-15 (added to matches) and small = 1e-9 (added to
  totals), so an order without any match gives a tiny positive score instead of 0, and an empty
  hypothesis adds 0 to every total and its reference's length to the reference length.
- METEOR is pycocoevalcap's `Meteor` (meteor-1.5.jar, run by Java), with the process closed after
  use, a timeout, and input sanitised for the jar's line protocol (see `MeteorScorer`). Without Java,
  or when the jar fails, METEOR is None (with a warning), never 0.
- ROUGE-L is pycocoevalcap's `Rouge` (LCS F-measure, beta 1.2), per study, averaged.
- CIDEr-D is pycocoevalcap's `Cider` (n = 4, sigma = 6, clipped, length penalty, x10), per study,
  averaged; its document frequencies come from the references of the studies scored together.

Clinical metrics take label matrices (CheXpert order, 1 positive / 0 negative / -1 uncertain /
nan not mentioned) and give per-observation and micro / macro precision, recall and F1.

All text must already be cleaned (`cxrgen.text.clean`): lower-case tokens separated by spaces, and
never the decoder's <start> / <end> / <pad> tokens (an error names the study if they appear).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrgen.bootstrap import resample_counts
from cxrgen.errors import ScoringInputError

log = logging.getLogger(__name__)

MAX_N = 4
BLEU_TINY = 1e-15  # pycocoevalcap's `tiny`: added to matched n-gram counts
BLEU_SMALL = 1e-9  # pycocoevalcap's `small`: added to n-gram totals and the reference length

# Column layout of the per-study BLEU statistics (`bleu_statistics`).
HYP_LEN, REF_LEN = 0, 1
CORRECT = slice(2, 2 + MAX_N)  # clipped matches of 1..4-grams
GUESS = slice(2 + MAX_N, 2 + 2 * MAX_N)  # n-grams in the hypothesis, 1..4
N_BLEU_STATS = 2 + 2 * MAX_N

FORBIDDEN_TOKENS = ("<start>", "<end>", "<pad>")
TEXT_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
METEOR_TIMEOUT_S = 300.0


# =========================================================================== input checks


def _check_texts(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ScoringInputError(
            f"{len(hypotheses)} hypotheses but {len(references)} references (one reference per study)"
        )
    if not hypotheses:
        raise ScoringInputError("nothing to score: no studies")
    for kind, texts in (("hypothesis", hypotheses), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ScoringInputError(f"{kind} {i} is {type(text).__name__}, not a string")
            tokens = set(text.split())
            bad = [token for token in FORBIDDEN_TOKENS if token in tokens]
            if bad:
                raise ScoringInputError(
                    f"{kind} {i} contains the special token(s) {', '.join(bad)}: score decoded text "
                    f"without <start>/<end>/<pad> (they inflate BLEU); got {text[:80]!r}"
                )
    empty = [i for i, text in enumerate(references) if not text.split()]
    if empty:
        raise ScoringInputError(
            f"{len(empty)} empty reference(s) (first: study {empty[0]}); studies without a "
            "reference text cannot be scored"
        )
    return hypotheses, references


def _fingerprint(references: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in references:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


# =========================================================================== BLEU


def _ngram_counts(tokens: list[str], max_n: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


def study_bleu_statistics(hypothesis: str, references: str | Sequence[str]) -> np.ndarray:
    """BLEU sufficient statistics of one study: int64 vector of length `N_BLEU_STATS`.

    [hypothesis length, effective reference length, clipped matches of 1..4-grams, hypothesis
    1..4-grams]. Tokens are whitespace-separated (`str.split()`). With several references, the
    clipping count of an n-gram is its highest count in any reference, and the effective reference
    length is the one closest to the hypothesis length, the shorter on a tie ("closest", as
    pycocoevalcap's Bleu uses).
    """
    if isinstance(references, str):
        references = [references]
    hyp = hypothesis.split()
    ref_lengths, max_ref_counts = [], Counter()
    for reference in references:
        tokens = reference.split()
        ref_lengths.append(len(tokens))
        max_ref_counts |= _ngram_counts(tokens, MAX_N)  # |= keeps the maximum of each count
    stats = np.zeros(N_BLEU_STATS, dtype=np.int64)
    stats[HYP_LEN] = len(hyp)
    stats[REF_LEN] = min(ref_lengths, key=lambda length: (abs(length - len(hyp)), length))
    for ngram, count in _ngram_counts(hyp, MAX_N).items():
        stats[CORRECT.start + len(ngram) - 1] += min(count, max_ref_counts.get(ngram, 0))
    stats[GUESS] = [max(0, len(hyp) - n + 1) for n in range(1, MAX_N + 1)]
    return stats


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> np.ndarray:
    """Per-study BLEU statistics, shape (n_studies, N_BLEU_STATS), int64 (see `study_bleu_statistics`)."""
    if len(hypotheses) != len(references):
        raise ScoringInputError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return np.array(
        [study_bleu_statistics(h, r) for h, r in zip(hypotheses, references)], dtype=np.int64
    ).reshape(len(hypotheses), N_BLEU_STATS)


class ReferenceNgrams:
    """The references' n-grams, counted once, for the corpus BLEU statistics of one hypothesis
    written for every study: totals(h) equals bleu_statistics([h] * len(references), references)
    summed over the studies (one reference a study), without counting the references again for
    each hypothesis. What the constant floor's choice needs: every distinct training report is
    tried against all val reports (IU-size: ~2,400 x 340 pairs, a minute and more recounted)."""

    def __init__(self, references: Sequence[str]):
        self.studies = len(references)
        self.reference_length = sum(len(text.split()) for text in references)
        self.counts: dict[tuple, list[int]] = {}   # n-gram -> its count in each reference that has it
        for text in references:
            for ngram, count in _ngram_counts(text.split(), MAX_N).items():
                self.counts.setdefault(ngram, []).append(count)
        self._clipped: dict[tuple, int] = {}

    def clipped(self, ngram: tuple, count: int) -> int:
        """Sum over the references of min(count, the n-gram's count in that reference)."""
        key = (ngram, count)
        if key not in self._clipped:
            self._clipped[key] = sum(min(count, other) for other in self.counts.get(ngram, ()))
        return self._clipped[key]

    def totals(self, hypothesis: str) -> np.ndarray:
        hyp = hypothesis.split()
        totals = np.zeros(N_BLEU_STATS, dtype=np.int64)
        totals[HYP_LEN] = len(hyp) * self.studies
        totals[REF_LEN] = self.reference_length      # one reference a study: its length
        for ngram, count in _ngram_counts(hyp, MAX_N).items():
            totals[CORRECT.start + len(ngram) - 1] += self.clipped(ngram, count)
        totals[GUESS] = [max(0, len(hyp) - n + 1) * self.studies for n in range(1, MAX_N + 1)]
        return totals


def bleu_from_totals(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 from summed statistics; `totals` has shape (..., N_BLEU_STATS).

    Returns (..., 4). The same arithmetic as pycocoevalcap's BleuScorer, operation for operation:
    BLEU-k = (prod_{j<=k} (matches_j + tiny) / (total_j + small)) ** (1/k), times the brevity
    penalty exp(1 - 1/ratio) when ratio = (hyp_len + tiny) / (ref_len + small) < 1.
    Vectorised: a (B, N_BLEU_STATS) matrix of bootstrap totals gives (B, 4) in one call.
    """
    totals = np.asarray(totals, dtype=np.float64)
    precisions = (totals[..., CORRECT] + BLEU_TINY) / (totals[..., GUESS] + BLEU_SMALL)
    orders = np.arange(1, MAX_N + 1, dtype=np.float64)
    bleu = np.cumprod(precisions, axis=-1) ** (1.0 / orders)
    ratio = (totals[..., HYP_LEN] + BLEU_TINY) / (totals[..., REF_LEN] + BLEU_SMALL)
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleu * penalty[..., None]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[float]:
    """Corpus BLEU-1..4 (pycocoevalcap's Bleu(4) score, exactly)."""
    return [float(v) for v in bleu_from_totals(bleu_statistics(hypotheses, references).sum(axis=0))]


# =========================================================================== METEOR

_PROTOCOL_BREAKER = re.compile(r"\|{3,}")


def meteor_safe(text: str) -> str:
    """Text the jar's line protocol cannot misread: no '|||' field separator, no line breaks.

    Runs of 3+ '|' become a space; all whitespace (newlines, carriage returns, tabs, Unicode line
    separators) collapses to single spaces. The jar is run with -norm (it tokenises and lower-cases
    itself), so for cleaned text the score is unchanged.
    """
    return " ".join(_PROTOCOL_BREAKER.sub(" ", text).split())


class MeteorScorer:
    """One METEOR 1.5 process (pycocoevalcap's `Meteor`: `java -jar -Xmx2G meteor-1.5.jar - - -stdio
    -l en -norm`), reusable for several systems, always closed.

    Use as a context manager (`with MeteorScorer() as meteor: ...`) or call `close()`. Starting
    the JVM and loading the paraphrase table takes ~15 s, which is why one process can serve
    several `text_metrics` calls. `score` returns (corpus score, per-study scores), or None with a
    warning (`warnings.warn` and a logged line saying why) when Java is missing, the jar fails, or
    it does not answer within `timeout_s`; after a failure the process is gone and every later call
    returns None too. `failure` holds the reason.

    Corpus METEOR is the jar's own aggregate over all segments' statistics (what the literature
    reports), not the mean of the per-study scores.
    """

    def __init__(self, timeout_s: float = METEOR_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.failure: str | None = None
        self._meteor = None
        java = shutil.which("java")
        if java is None:
            self._fail("`java` was not found on PATH (install a Java runtime, e.g. "
                       "default-jre-headless, for METEOR)")
            return
        try:
            from pycocoevalcap.meteor.meteor import Meteor
        except ImportError as exc:
            self._fail(f"pycocoevalcap is not importable ({exc})")
            return
        try:
            self._meteor = Meteor()
        except OSError as exc:
            self._fail(f"could not start {java} ({exc})")

    # -- lifecycle

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    @property
    def process(self):
        """The Java subprocess (None when it never started)."""
        return None if self._meteor is None else self._meteor.meteor_p

    def close(self) -> None:
        """Stop the Java process and reap it (idempotent)."""
        meteor, self._meteor = self._meteor, None
        if meteor is None:
            return
        process = meteor.meteor_p
        if meteor.lock.locked():  # a failed compute_score never releases it; Meteor.__del__ would hang
            meteor.lock.release()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if process.poll() is None:
            process.kill()
        process.wait()
        try:
            process.stderr.close()
        except OSError:
            pass

    def _fail(self, why: str) -> None:
        stderr = ""
        if self._meteor is not None:
            process = self._meteor.meteor_p
            if process.poll() is None:
                process.kill()
            process.wait()
            try:
                stderr = process.stderr.read().decode("utf-8", "replace").strip()
            except (OSError, ValueError):
                pass
            if stderr:
                why += f"; java said: {stderr[-500:]}"
        self.close()
        self.failure = why
        self._warn()

    def _warn(self) -> None:
        message = f"METEOR unavailable, reported as None (not 0): {self.failure}"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -- scoring

    def score(self, hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray] | None:
        """(corpus METEOR, per-study METEOR as float64 array), or None (see the class docstring)."""
        hypotheses, references = _check_texts(hypotheses, references)
        if self._meteor is None:
            if self.failure is None:
                self.failure = "the METEOR process was closed"
            self._warn()
            return None
        gts = {i: [meteor_safe(r)] for i, r in enumerate(references)}
        res = {i: [meteor_safe(h)] for i, h in enumerate(hypotheses)}
        result: dict = {}

        def work():
            try:
                result["value"] = self._meteor.compute_score(gts, res)
            except Exception as exc:  # noqa: BLE001 - reported below as the reason
                result["error"] = exc

        worker = threading.Thread(target=work, name="meteor", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._meteor.meteor_p.kill()  # unblocks the worker's readline
            worker.join(10)
            self._fail(f"the jar did not answer within {self.timeout_s:g} s")
            return None
        if "error" in result:
            exc = result["error"]
            self._fail(f"the jar failed ({type(exc).__name__}: {exc})")
            return None
        corpus, per_study = result["value"]
        per_study = np.asarray(per_study, dtype=np.float64)
        if len(per_study) != len(hypotheses) or not np.isfinite(corpus):
            self._fail(f"the jar answered {len(per_study)} scores for {len(hypotheses)} studies")
            return None
        return float(corpus), per_study


# =========================================================================== ROUGE-L and CIDEr-D


def rouge_l_per_study(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """pycocoevalcap's ROUGE-L per study (note: it splits on single spaces, so a double space,
    which R2Gen's cleaning can leave, makes an empty token that counts)."""
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    return np.array([rouge.calc_score([h], [r]) for h, r in zip(hypotheses, references)], dtype=np.float64)


def cider_per_study(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """pycocoevalcap's CIDEr-D per study; document frequencies from these studies' references."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [h] for i, h in enumerate(hypotheses)}
    _, scores = Cider().compute_score(gts, res)
    return np.asarray(scores, dtype=np.float64)


# =========================================================================== text metrics


@dataclass(frozen=True, eq=False)
class TextScores:
    """Text-overlap scores of one system on a list of studies, plus what the bootstrap needs.

    Flat metrics: bleu_1..bleu_4 (corpus), meteor (the jar's corpus score, or None), rouge_l (mean
    over studies), cider (CIDEr-D, mean over studies). `scores["bleu_4"]` works like a dict;
    `as_dict()` gives the seven metrics, JSON-ready.
    """

    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    meteor: float | None
    rouge_l: float
    cider: float
    n_studies: int
    bleu_stats: np.ndarray  # (n, N_BLEU_STATS) int64, see study_bleu_statistics
    meteor_per_study: np.ndarray | None  # (n,) jar segment scores, None with meteor
    rouge_l_per_study: np.ndarray  # (n,)
    cider_per_study: np.ndarray  # (n,), document frequencies from all n references
    references_sha256: str  # identifies the reference list, to pair two systems safely
    meteor_note: str | None = None  # why meteor is None

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in TEXT_METRICS}

    def __getitem__(self, name: str):
        if name not in TEXT_METRICS:
            raise KeyError(name)
        return getattr(self, name)


def text_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    meteor: bool | MeteorScorer = True,
) -> TextScores:
    """Score cleaned hypotheses against one cleaned reference per study.

    meteor: True starts (and closes) a METEOR process for this call; a `MeteorScorer` is used and
    left open (to score several systems with one JVM); False skips METEOR (None, no warning).
    Raises ScoringInputError for mismatched lengths, no studies, non-strings, empty references, or
    <start>/<end>/<pad> tokens.
    """
    hypotheses, references = _check_texts(hypotheses, references)
    stats = bleu_statistics(hypotheses, references)
    bleu = bleu_from_totals(stats.sum(axis=0))

    meteor_result, meteor_note = None, "not computed (meteor=False)"
    if meteor is True:
        with MeteorScorer() as scorer:
            meteor_result = scorer.score(hypotheses, references)
            meteor_note = scorer.failure
    elif isinstance(meteor, MeteorScorer):
        meteor_result = meteor.score(hypotheses, references)
        meteor_note = meteor.failure
    elif meteor is not False:
        raise TypeError(f"meteor must be True, False or a MeteorScorer, not {meteor!r}")

    rouge = rouge_l_per_study(hypotheses, references)
    cider = cider_per_study(hypotheses, references)
    return TextScores(
        bleu_1=float(bleu[0]),
        bleu_2=float(bleu[1]),
        bleu_3=float(bleu[2]),
        bleu_4=float(bleu[3]),
        meteor=None if meteor_result is None else meteor_result[0],
        rouge_l=float(rouge.mean()),
        cider=float(cider.mean()),
        n_studies=len(hypotheses),
        bleu_stats=stats,
        meteor_per_study=None if meteor_result is None else meteor_result[1],
        rouge_l_per_study=rouge,
        cider_per_study=cider,
        references_sha256=_fingerprint(references),
        meteor_note=None if meteor_result is not None else meteor_note,
    )


# =========================================================================== clinical metrics


def _positives(labels, n_observations: int, uncertain_as_positive: bool, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != n_observations:
        raise ScoringInputError(
            f"{what} labels have shape {labels.shape}, expected (n_studies, {n_observations})"
        )
    if labels.dtype == bool:  # already a positive matrix
        return labels
    labels = labels.astype(np.float64)
    known = labels[~np.isnan(labels)]
    if not np.isin(known, (1.0, 0.0, -1.0)).all():
        odd = sorted(set(np.unique(known)) - {1.0, 0.0, -1.0})[:5]
        raise ScoringInputError(f"{what} labels must be 1, 0, -1 or nan; found {odd}")
    return (labels == 1) | ((labels == -1) if uncertain_as_positive else False)


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _mean_defined(values: list[float | None]) -> tuple[float | None, int]:
    defined = [v for v in values if v is not None]
    return (sum(defined) / len(defined) if defined else None), len(defined)


def clinical_metrics(
    generated_labels,
    reference_labels,
    observations: Sequence[str],
    uncertain_as_positive: bool = False,
    normal: str | None = "No Finding",
) -> dict:
    """Clinical correctness: does the generated report state the reference's positive findings?

    generated_labels, reference_labels: (n_studies, n_observations) arrays in `observations` order
    (CheXpert's 14 from `cxrgen.data.labeler`), values 1 positive, 0 negative, -1 uncertain, nan not
    mentioned; a bool matrix is taken as already-decided positives.

    Positive: label 1; with uncertain_as_positive=True also -1 (the same rule for both sides).
    Default False: an uncertain mention ("may represent atelectasis") is not a positive finding,
    like a negative or no mention.

    Convention for undefined values: precision = tp/(tp+fp) is None when nothing was generated
    positive, recall = tp/(tp+fn) is None when the references have no positive, and
    F1 = 2tp/(2tp+fp+fn) is None only when neither side has a positive (it is 0, not None, when
    only one side has positives). None is never replaced by 0. Macro P/R/F1 average the
    observations where the value is defined, and `macro_*_n` says how many that was (out of
    `n_observations`); micro P/R/F1 use tp/fp/fn summed over all observations and studies.

    Abnormal findings: `abnormal_precision` / `abnormal_recall` / `abnormal_f1` are the micro
    values over every observation except `normal` ("No Finding", which most IU studies have: a
    report that never states anything abnormal scores well on it, so the 14-observation micro-F1
    cannot tell a template from a reader). `abnormal_macro_f1` averages F1 over the abnormal
    observations with reference support (`abnormal_macro_f1_n` of them). When `normal` is not
    among the observations, all of them count as abnormal.

    Returns a dict; everything is JSON-ready except "per_study" ({"tp", "fp", "fn"}: int64 arrays
    of shape (n_studies, n_observations), for the bootstrap). `json_ready` drops it.
    """
    observations = list(observations)
    gen = _positives(generated_labels, len(observations), uncertain_as_positive, "generated")
    ref = _positives(reference_labels, len(observations), uncertain_as_positive, "reference")
    if gen.shape[0] != ref.shape[0]:
        raise ScoringInputError(
            f"{gen.shape[0]} generated label rows but {ref.shape[0]} reference rows (one per study)"
        )
    if gen.shape[0] == 0:
        raise ScoringInputError("nothing to score: no studies")
    tp = (gen & ref).astype(np.int64)
    fp = (gen & ~ref).astype(np.int64)
    fn = (~gen & ref).astype(np.int64)

    per_observation = {}
    for j, name in enumerate(observations):
        t, f_p, f_n = int(tp[:, j].sum()), int(fp[:, j].sum()), int(fn[:, j].sum())
        per_observation[name] = {
            **_prf(t, f_p, f_n),
            "support": t + f_n,  # reference positives
            "generated": t + f_p,  # generated positives
            "tp": t,
            "fp": f_p,
            "fn": f_n,
        }
    micro = _prf(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    result = {
        "n_studies": int(gen.shape[0]),
        "n_observations": len(observations),
        "uncertain_as_positive": bool(uncertain_as_positive),
        "micro_precision": micro["precision"],
        "micro_recall": micro["recall"],
        "micro_f1": micro["f1"],
    }
    for key in ("precision", "recall", "f1"):
        value, count = _mean_defined([m[key] for m in per_observation.values()])
        result[f"macro_{key}"] = value
        result[f"macro_{key}_n"] = count
    abnormal = np.array([name != normal for name in observations])
    micro_abnormal = _prf(int(tp[:, abnormal].sum()), int(fp[:, abnormal].sum()), int(fn[:, abnormal].sum()))
    for key in ("precision", "recall", "f1"):
        result[f"abnormal_{key}"] = micro_abnormal[key]
    supported = [per_observation[name]["f1"] for name in observations
                 if name != normal and per_observation[name]["support"] > 0]
    result["abnormal_macro_f1"] = sum(supported) / len(supported) if supported else None
    result["abnormal_macro_f1_n"] = len(supported)
    result["abnormal_columns"] = [int(j) for j in np.flatnonzero(abnormal)]
    result["positives_generated"] = int(gen.sum())
    result["positives_reference"] = int(ref.sum())
    result["per_observation"] = per_observation
    result["per_study"] = {"tp": tp, "fp": fp, "fn": fn}
    return result


def json_ready(scores: TextScores | dict) -> dict:
    """The JSON-ready part of `text_metrics` or `clinical_metrics` output (no per-study arrays)."""
    if isinstance(scores, TextScores):
        return scores.as_dict()
    return {key: value for key, value in scores.items() if key not in ("per_study", "abnormal_columns")}


# =========================================================================== bootstrap

BOOTSTRAP_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "micro_f1",
                     "abnormal_f1")


def _micro_f1_from_totals(tp, fp, fn) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)


def _n_studies(text_scores: TextScores | None, clinical_scores: dict | None) -> int:
    sizes = set()
    if text_scores is not None:
        sizes.add(text_scores.n_studies)
    if clinical_scores is not None:
        sizes.add(int(clinical_scores["per_study"]["tp"].shape[0]))
    if not sizes:
        raise ScoringInputError("bootstrap needs text scores, clinical scores, or both")
    if len(sizes) > 1:
        raise ScoringInputError(f"text and clinical scores cover different numbers of studies: {sorted(sizes)}")
    return sizes.pop()


def _replicates(text_scores: TextScores | None, clinical_scores: dict | None, counts: np.ndarray) -> dict:
    """{metric: (point estimate or None, (B,) replicates or None)} for the resamples `counts`."""
    n = counts.shape[1]
    out: dict = {}
    if text_scores is not None:
        bleu_reps = bleu_from_totals(counts @ text_scores.bleu_stats)  # (B, 4), exact corpus BLEU
        for k in range(MAX_N):
            out[f"bleu_{k + 1}"] = (getattr(text_scores, f"bleu_{k + 1}"), bleu_reps[:, k])
        for name, per_study in (
            ("meteor", text_scores.meteor_per_study),
            ("rouge_l", text_scores.rouge_l_per_study),
            ("cider", text_scores.cider_per_study),
        ):
            estimate = getattr(text_scores, name)
            if per_study is None or estimate is None:
                out[name] = (None, None)
                continue
            replicates = counts @ per_study / n
            if name == "meteor":
                # The jar's corpus score aggregates statistics before scoring, so it is not the
                # mean of segment scores (shuffled IU findings: 0.163 vs 0.178). The spread of
                # that mean stands in for the corpus score's, centred on the corpus score.
                replicates = replicates + (estimate - per_study.mean())
            out[name] = (estimate, replicates)
    if clinical_scores is not None:
        per_study = clinical_scores["per_study"]
        totals = [counts @ per_study[key].sum(axis=1) for key in ("tp", "fp", "fn")]
        out["micro_f1"] = (clinical_scores["micro_f1"], _micro_f1_from_totals(*totals))
        if "abnormal_columns" in clinical_scores:
            columns = clinical_scores["abnormal_columns"]
            totals = [counts @ per_study[key][:, columns].sum(axis=1) for key in ("tp", "fp", "fn")]
            out["abnormal_f1"] = (clinical_scores["abnormal_f1"], _micro_f1_from_totals(*totals))
    return out


def bootstrap_replicates(
    text_scores: TextScores | None, clinical_scores: dict | None, counts: np.ndarray
) -> dict[str, np.ndarray | None]:
    """{metric: (B,) values on each resample} for a (B, n) `resample_counts` matrix (see
    `bootstrap` for what each metric's replicate is); None for a metric that is None."""
    return {name: reps for name, (_, reps) in _replicates(text_scores, clinical_scores, counts).items()}


def _interval(estimate, replicates, confidence: float) -> dict | None:
    if estimate is None or replicates is None:
        return None
    alpha = (1 - confidence) / 2
    defined = replicates[np.isfinite(replicates)]
    entry = {"estimate": float(estimate)}
    if defined.size == 0:
        entry.update(low=None, high=None)
    else:
        low, high = np.quantile(defined, [alpha, 1 - alpha])
        entry.update(low=float(low), high=float(high))
    if defined.size < replicates.size:
        entry["n_undefined"] = int(replicates.size - defined.size)
    return entry


def bootstrap(
    text_scores: TextScores | None,
    clinical_scores: dict | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals over test studies: {metric: {"estimate", "low", "high"}}.

    Each resample draws the test studies with replacement (`resample_counts`; same seed, same
    resamples, so intervals are reproducible and two systems on the same studies share them).
    Per resample:
    - bleu_1..bleu_4: the exact corpus BLEU (pycocoevalcap's formula) of the resample, from its
      summed per-study statistics: one (B, n) count matrix times the (n, 10) statistics;
    - rouge_l: mean of per-study ROUGE-L;
    - cider: mean of per-study CIDEr-D, with document frequencies fixed from the full test set
      (CIDEr is not recomputed on each resample: an approximation that ignores idf variability);
    - meteor: mean of per-study (segment) METEOR scores, shifted by (corpus score - mean segment
      score on all studies). An approximation: the jar's corpus score aggregates statistics before
      scoring, so it is not the mean of segment scores (shuffled IU findings: 0.163 vs 0.178), and
      without the shift the interval would miss the reported score; the shift assumes that gap is
      the same on every resample. None when METEOR is None;
    - micro_f1 (clinical, when given): 2tp / (2tp + fp + fn) from the resample's summed counts;
      resamples where it is undefined are left out and counted in "n_undefined"; abnormal_f1 the
      same over the abnormal observations only.
    "estimate" is the score on all studies (as reported); low/high are the (1-confidence)/2 and
    1-(1-confidence)/2 quantiles of the replicates. A metric whose score is None maps to None.
    """
    counts = resample_counts(_n_studies(text_scores, clinical_scores), n_resamples, seed)
    return {
        name: _interval(estimate, replicates, confidence)
        for name, (estimate, replicates) in _replicates(text_scores, clinical_scores, counts).items()
    }


def paired_difference(
    a_text: TextScores | None,
    b_text: TextScores | None,
    a_clinical: dict | None = None,
    b_clinical: dict | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired bootstrap of (system a - system b) on the same studies, e.g. model minus floor.

    Both systems are rescored on the *same* resamples (same draws as `bootstrap` with the same
    seed), and the interval is taken over the per-resample differences, so the variation common to
    both (which studies were drawn) cancels. Returns {metric: {"estimate": a - b on all studies,
    "low", "high", "a_better": low > 0, "b_better": high < 0}}; None for a metric missing on either
    side (e.g. METEOR without Java). Raises ScoringInputError when the two were not scored on the
    same references (text) or the same reference positives (clinical), in the same order.
    """
    if (a_text is None) != (b_text is None) or (a_clinical is None) != (b_clinical is None):
        raise ScoringInputError("paired_difference needs the same kinds of scores for both systems")
    if a_text is not None and a_text.references_sha256 != b_text.references_sha256:
        raise ScoringInputError("the two systems were not scored against the same references in the same order")
    if a_clinical is not None:
        a_ref = a_clinical["per_study"]["tp"] + a_clinical["per_study"]["fn"]
        b_ref = b_clinical["per_study"]["tp"] + b_clinical["per_study"]["fn"]
        if a_ref.shape != b_ref.shape or not np.array_equal(a_ref, b_ref):
            raise ScoringInputError("the two systems' clinical scores have different reference labels")
    n_a, n_b = _n_studies(a_text, a_clinical), _n_studies(b_text, b_clinical)
    if n_a != n_b:
        raise ScoringInputError(f"the systems cover {n_a} and {n_b} studies")
    counts = resample_counts(n_a, n_resamples, seed)
    reps_a = _replicates(a_text, a_clinical, counts)
    reps_b = _replicates(b_text, b_clinical, counts)
    out = {}
    for name, (estimate_a, replicates_a) in reps_a.items():
        estimate_b, replicates_b = reps_b[name]
        if estimate_a is None or estimate_b is None or replicates_a is None or replicates_b is None:
            out[name] = None
            continue
        entry = _interval(estimate_a - estimate_b, replicates_a - replicates_b, confidence)
        entry["a_better"] = entry["low"] is not None and entry["low"] > 0
        entry["b_better"] = entry["high"] is not None and entry["high"] < 0
        out[name] = entry
    return out
