"""Writing reports from image features: greedy and beam search, batched, and a per-study reference.

Scoring. A hypothesis h is the list of tokens generated after <start> (<end> included once emitted):
    log_prob(h) = sum over its tokens of log p(token | the tokens before it, the images)
    score(h)    = log_prob(h) / ((5 + |h|) / 6) ** alpha        (GNMT length penalty, Wu et al. 2016)
alpha is `length_penalty`: 0 ranks by log_prob alone (which favours short reports, since every
word costs probability); larger values favour longer ones. At each step the width x vocabulary
candidates (every beam extended by every token) are ranked by score and the best `width` kept;
equal scores are ordered by (beam position, token id), lowest first, in both implementations.
Greedy search is beam search of width 1.

Finished beams. A beam that emitted <end> stays finished: at every later step its only continuation
is <pad> with log-probability 0 and its length does not grow, so log_prob, length and score are
frozen. It keeps its slot as long as fewer than `width` candidates score higher; decoding of a
batch stops when every beam is finished, or after max_len - 1 generated tokens (max_len counts
<start> and <end>, as the vocabulary's max_len does), when running beams end unfinished.

Never generated: <pad> and <start>. N-gram blocking (`no_repeat_ngram` = n > 0): a token that would
complete an n-gram already present among the hypothesis's generated tokens is forbidden.

`beam_search` decodes a batch of studies at once: the recurrent state has one row per (study, beam)
and the only Python loop is over time steps. `beam_search_reference` is the plain version (Python
loops over studies and beams, the model run on one beam at a time) kept to check the batched one.

Choosing by the findings (`rerank_samples` = N > 0; clinically consistent selection). Beam search
maximises the language model's probability, and a decoder trained on mostly normal reports then
writes the normal template whatever the finding head reads. `choose_by_findings` takes, for each
study, the beam's report and N reports sampled from the decoder (temperature `rerank_temperature`,
seeded by `rerank_seed` and the study's position), reads each with the labeler, and keeps the one whose 14 labels the finding
head finds most likely: sum over observations of log p if the report states it, else log (1 - p).
Training calibrates, per finding, the probability at which the head's reading counts as present
(val studies, abnormal-finding F1); the choice weighs each stated finding by how far the head's
probability lies above or below that threshold (`findings_agreement`). Among candidates that agree
equally, the one closest in wording to all the study's candidates is kept (`consensus_scores`).
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import tensorflow as tf

from cxrgen.data import labeler
from cxrgen.data.vocab import END_ID, PAD_ID, START_ID, Vocab
from cxrgen.errors import BadInput
from cxrgen.modeling.models import ReportGenerator
from cxrgen.params import with_defaults

NEVER_GENERATED = (PAD_ID, START_ID)
DECODE_DEFAULTS = {"beam_width": 3, "length_penalty": 0.0, "no_repeat_ngram": 0, "max_len": 60,
                   "rerank_samples": 0, "rerank_temperature": 1.0, "rerank_seed": 0}
AGREEMENT_EPS = 1e-4   # keeps log p finite for a head that is certain
AGREEMENT_TIE = 1e-9   # agreements this close are equal (the same labels, summed in another order)


@dataclass(frozen=True)
class DecodeSettings:
    beam_width: int = 3
    length_penalty: float = 0.0   # alpha of the GNMT length penalty
    no_repeat_ngram: int = 0      # 0: off
    max_len: int = 60             # counts <start> and <end>: at most max_len - 1 generated tokens
    rerank_samples: int = 0       # reports sampled per study beside the beam's, chosen by the findings; 0: off
    rerank_temperature: float = 1.0
    rerank_seed: int = 0

    def __post_init__(self):
        if not isinstance(self.rerank_temperature, (int, float)) or self.rerank_temperature <= 0:
            raise BadInput("params.yaml",
                           f"decode.rerank_temperature must be a number > 0, not {self.rerank_temperature!r}")
        for key, least in (("beam_width", 1), ("max_len", 2), ("no_repeat_ngram", 0), ("rerank_samples", 0),
                           ("rerank_seed", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise BadInput("params.yaml", f"decode.{key} must be an integer >= {least}, not {value!r}")
        if not isinstance(self.length_penalty, (int, float)) or self.length_penalty < 0:
            raise BadInput("params.yaml",
                           f"decode.length_penalty must be a number >= 0, not {self.length_penalty!r}")

    @property
    def steps(self) -> int:
        return self.max_len - 1

    @classmethod
    def from_params(cls, params: dict) -> DecodeSettings:
        return cls(**with_defaults(params, "decode", DECODE_DEFAULTS))


@dataclass
class Decoded:
    """The best hypothesis per study.

    tokens: (N, max_len - 1) int32, the generated ids (<end> included when emitted), <pad> after.
    log_probs, scores: (N,) float64 (see the module's scoring). lengths: (N,) generated tokens.
    finished: (N,) whether <end> was emitted.
    attention: (N, max_len - 1, regions) float32, the weights that produced each token (zero after
    the last one), or None for a model without attention. Regions: 49 frontal then 49 lateral.
    """

    tokens: np.ndarray
    log_probs: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray
    attention: np.ndarray | None

    def texts(self, vocab: Vocab) -> list[str]:
        return [vocab.decode(row) for row in self.tokens]

    @staticmethod
    def concatenate(parts: list[Decoded]) -> Decoded:
        """The studies of `parts` (decoded chunk by chunk), one after the other."""
        attention = None if parts[0].attention is None else np.concatenate([p.attention for p in parts])
        return Decoded(*(np.concatenate([getattr(p, key) for p in parts])
                         for key in ("tokens", "log_probs", "scores", "lengths", "finished")), attention)


def length_factors(steps: int, alpha: float) -> np.ndarray:
    """((5 + L) / 6) ** alpha for L = 0..steps: one table so every score divides by the same bits."""
    return ((5.0 + np.arange(steps + 1, dtype=np.float64)) / 6.0) ** float(alpha)


def ngram_bans(history: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """(rows, vocab) bool: tokens that would repeat an n-gram of each row of `history` (rows, t)."""
    rows, t = history.shape
    banned = np.zeros((rows, vocab_size), dtype=bool)
    if n <= 0 or t < n:
        return banned
    windows = np.lib.stride_tricks.sliding_window_view(history, n, axis=1)  # (rows, t - n + 1, n)
    suffix = history[:, t - n + 1:]  # the last n - 1 tokens (none when n == 1)
    match = np.all(windows[:, :, : n - 1] == suffix[:, None, :], axis=2)
    row, window = np.nonzero(match)
    banned[row, windows[row, window, n - 1]] = True
    return banned


def ngram_bans_one(tokens: list[int], n: int) -> set[int]:
    """The same rule for one hypothesis, written plainly (the reference uses it)."""
    if n <= 0 or len(tokens) < n:
        return set()
    suffix = tokens[len(tokens) - n + 1:]
    return {tokens[j + n - 1] for j in range(len(tokens) - n + 1) if tokens[j:j + n - 1] == suffix}


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model: ReportGenerator):
    """(encode, step) as tf.functions; step returns float64 log-probabilities."""
    if model not in _COMPILED:
        owner = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(reduce_retracing=True)
        def encode(features):
            context = owner().encode(features)
            return context, owner().initial_state(context)

        @tf.function(reduce_retracing=True)
        def step(tokens, states, context):
            logits, states, attention = owner().step(tokens, states, context)
            return tf.nn.log_softmax(tf.cast(logits, tf.float64)), states, attention

        _COMPILED[model] = (encode, step)
    return _COMPILED[model]


def _encode_copies(model: ReportGenerator, features, copies: int) -> tuple[tuple, list]:
    """(context, initial states) with `copies` consecutive rows per study: the rows of study b are
    b * copies ... b * copies + copies - 1 (a beam's or a sample's)."""
    encode, _ = _compiled(model)
    context, states = encode(tf.convert_to_tensor(features))
    return (tuple(tf.repeat(part, copies, axis=0) for part in context),
            [tf.repeat(part, copies, axis=0) for part in states])


def _check_features(model: ReportGenerator, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features)
    if features.shape[1:] != tuple(model.feature_shape()):
        raise BadInput("features", f"this {model.name} model reads '{model.feature_key}' features shaped "
                                   f"{tuple(model.feature_shape())} per study, got {features.shape[1:]}")
    return features


def greedy(model: ReportGenerator, features, max_len: int = 60, no_repeat_ngram: int = 0,
           batch_size: int = 64) -> Decoded:
    return beam_search(model, features, DecodeSettings(1, 0.0, no_repeat_ngram, max_len), batch_size)


def beam_search(model: ReportGenerator, features, settings: DecodeSettings, batch_size: int = 64) -> Decoded:
    """Decode every study of `features` (N, *model.feature_shape()), `batch_size` studies at a time."""
    features = _check_features(model, features)
    parts = [_beam_search_batch(model, features[start:start + batch_size], settings)
             for start in range(0, len(features), batch_size)]
    return Decoded.concatenate(parts or [_empty(model, settings)])


def _empty(model: ReportGenerator, settings: DecodeSettings) -> Decoded:
    regions = model.attended_regions
    attention = None if regions is None else np.zeros((0, settings.steps, regions), np.float32)
    return Decoded(np.zeros((0, settings.steps), np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.int64),
                   np.zeros(0, bool), attention)


def _beam_search_batch(model: ReportGenerator, features: np.ndarray, s: DecodeSettings) -> Decoded:
    _, step = _compiled(model)
    studies, width, vocab, steps = len(features), s.beam_width, model.vocab_size, s.steps
    factors = length_factors(steps, s.length_penalty)
    context, states = _encode_copies(model, features, width)   # one row per (study, beam)
    study = np.arange(studies)[:, None]
    log_prob = np.zeros((studies, width))
    log_prob[:, 1:] = -np.inf  # at the start only beam 0 exists; the others would be copies of it
    lengths = np.zeros((studies, width), dtype=np.int64)
    finished = np.zeros((studies, width), dtype=bool)
    history = np.full((studies, width, steps), PAD_ID, dtype=np.int32)
    parents, step_attention = [], []  # per step, to trace the attention of the final beams back
    last = np.full(studies * width, START_ID, dtype=np.int32)
    for t in range(steps):
        token_log_probs, states, attention = step(tf.constant(last), states, context)
        token_log_probs = token_log_probs.numpy().reshape(studies, width, vocab)
        token_log_probs[:, :, NEVER_GENERATED] = -np.inf
        if s.no_repeat_ngram:
            banned = ngram_bans(history[:, :, :t].reshape(studies * width, t), s.no_repeat_ngram, vocab)
            token_log_probs[banned.reshape(studies, width, vocab)] = -np.inf
        token_log_probs[finished] = -np.inf  # a finished beam only continues with <pad>, for free
        token_log_probs[finished, PAD_ID] = 0.0
        candidate_lengths = lengths + ~finished
        candidate_log_probs = log_prob[:, :, None] + token_log_probs
        candidate_scores = candidate_log_probs / factors[candidate_lengths][:, :, None]
        # top_k ranks equal values by lower index first: (beam position, token id) as documented.
        _, best = tf.math.top_k(candidate_scores.reshape(studies, width * vocab), k=width)
        best = best.numpy()
        parent, token = np.divmod(best, vocab)
        log_prob = candidate_log_probs.reshape(studies, width * vocab)[study, best]
        lengths = candidate_lengths[study, parent]
        finished = finished[study, parent] | (token == END_ID)
        history = history[study, parent]
        history[:, :, t] = token
        flat_parent = tf.constant((study * width + parent).reshape(-1))
        states = [tf.gather(part, flat_parent) for part in states]
        parents.append(parent)
        if attention is not None:
            step_attention.append(attention.numpy().reshape(studies, width, -1).astype(np.float32))
        last = token.reshape(-1).astype(np.int32)
        if finished.all():
            break
    scores = log_prob / factors[lengths]
    chosen = np.argmax(scores, axis=1)  # the beams are ranked, so this is beam 0 but for exact ties
    rows = np.arange(studies)
    return Decoded(
        tokens=history[rows, chosen],
        log_probs=log_prob[rows, chosen],
        scores=scores[rows, chosen],
        lengths=lengths[rows, chosen],
        finished=finished[rows, chosen],
        attention=_trace_attention(parents, step_attention, chosen, lengths[rows, chosen], steps)
        if step_attention else None,
    )


def _trace_attention(parents: list, step_attention: list, chosen: np.ndarray, lengths: np.ndarray,
                     steps: int) -> np.ndarray:
    """The attention weights that produced each token of the chosen beams, by following parents back."""
    studies, regions = len(chosen), step_attention[0].shape[-1]
    rows = np.arange(studies)
    traced = np.zeros((studies, steps, regions), dtype=np.float32)
    position = chosen
    for t in range(len(parents) - 1, -1, -1):
        position = parents[t][rows, position]  # the beam (before step t's selection) that was extended
        traced[:, t] = step_attention[t][rows, position]
    traced[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0  # steps after <end>: no token made
    return traced


# ---------------------------------------------------------------------------------------------
# The reference: one study and one beam at a time, the same scoring, nothing vectorised across them.


@dataclass
class _Hypothesis:
    tokens: list
    log_prob: float
    finished: bool
    states: list
    attention: list


def beam_search_reference(model: ReportGenerator, features, settings: DecodeSettings) -> Decoded:
    features = _check_features(model, features)
    encode, step = _compiled(model)
    width, steps = settings.beam_width, settings.steps
    factors = length_factors(steps, settings.length_penalty)
    results = []
    for index in range(len(features)):
        context, states = encode(tf.convert_to_tensor(features[index:index + 1]))
        beams = [_Hypothesis([], 0.0, False, list(states), [])]
        for _ in range(steps):
            candidates = []  # (score, beam position, token, log_prob, parent, states, attention)
            for position, hypothesis in enumerate(beams):
                if hypothesis.finished:
                    score = hypothesis.log_prob / factors[len(hypothesis.tokens)]
                    candidates.append((score, position, PAD_ID, hypothesis.log_prob, hypothesis, None, None))
                    continue
                last = hypothesis.tokens[-1] if hypothesis.tokens else START_ID
                token_log_probs, new_states, attention = step(
                    tf.constant([last], dtype=tf.int32), hypothesis.states, context)
                token_log_probs = token_log_probs.numpy()[0]
                for token in (*NEVER_GENERATED, *ngram_bans_one(hypothesis.tokens, settings.no_repeat_ngram)):
                    token_log_probs[token] = -np.inf
                log_probs = hypothesis.log_prob + token_log_probs
                scores = log_probs / factors[len(hypothesis.tokens) + 1]
                # Only this beam's best `width` tokens can be among the best `width` overall.
                for token in np.argsort(-scores, kind="stable")[:width]:
                    candidates.append((scores[token], position, int(token), log_probs[token], hypothesis,
                                       new_states, None if attention is None else attention.numpy()[0]))
            candidates.sort(key=lambda candidate: (-candidate[0], candidate[1], candidate[2]))
            beams = []
            for _, _, token, log_prob, parent, new_states, attention in candidates[:width]:
                if parent.finished:
                    beams.append(parent)
                else:
                    beams.append(_Hypothesis(parent.tokens + [token], float(log_prob), token == END_ID,
                                             new_states,
                                             parent.attention + ([attention] if attention is not None else [])))
            if all(hypothesis.finished for hypothesis in beams):
                break
        scores = [hypothesis.log_prob / factors[len(hypothesis.tokens)] for hypothesis in beams]
        results.append((beams[int(np.argmax(scores))], float(np.max(scores))))
    return _collect(model, results, steps)


def _collect(model: ReportGenerator, results: list, steps: int) -> Decoded:
    regions = model.attended_regions
    tokens = np.full((len(results), steps), PAD_ID, dtype=np.int32)
    attention = None if regions is None else np.zeros((len(results), steps, regions), dtype=np.float32)
    for row, (hypothesis, _) in enumerate(results):
        tokens[row, : len(hypothesis.tokens)] = hypothesis.tokens
        if attention is not None and hypothesis.attention:
            attention[row, : len(hypothesis.attention)] = np.stack(hypothesis.attention)
    return Decoded(
        tokens=tokens,
        log_probs=np.array([h.log_prob for h, _ in results], dtype=np.float64),
        scores=np.array([score for _, score in results], dtype=np.float64),
        lengths=np.array([len(h.tokens) for h, _ in results], dtype=np.int64),
        finished=np.array([h.finished for h, _ in results], dtype=bool),
        attention=attention,
    )


# ---------------------------------------------------------------------------------------------
# Choosing among candidates by the findings


def sample(model: ReportGenerator, features, n: int, temperature: float, max_len: int, seed: int,
           batch_size: int = 32, first_study: int = 0) -> np.ndarray:
    """(N, n, max_len - 1) token ids: n reports per study drawn from the decoder (Gumbel-max at
    `temperature`; <pad> after <end>). Study i draws from its own generator, seeded by (seed, i), so
    its samples do not depend on the batch size or on the other studies. `first_study`: the number
    of the first of `features` when a split is sampled chunk by chunk (study i of the chunk is
    study first_study + i of the split)."""
    features = _check_features(model, features)
    _, step = _compiled(model)
    steps = max_len - 1
    out = np.full((len(features), n, steps), PAD_ID, np.int32)
    for start in range(0, len(features), batch_size):
        batch = features[start:start + batch_size]
        context, states = _encode_copies(model, batch, n)
        rows = len(batch) * n
        generators = [np.random.default_rng((seed, first_study + start + i)) for i in range(len(batch))]
        # live: the rows the decoder still runs, in order; a finished row (its <end> written) is
        # dropped from the tensors once a quarter of them are finished, so the long tail of a few
        # long samples does not run every row to max_len. Every study draws its noise for all of
        # its rows at every step, as before, so the draws do not depend on which rows still run.
        live = np.arange(rows)
        last, done = np.full(rows, START_ID, np.int32), np.zeros(rows, bool)
        tokens = np.full((rows, steps), PAD_ID, np.int32)
        for t in range(steps):
            log_probs, states, _ = step(tf.constant(last[live]), states, context)
            log_probs = log_probs.numpy()
            log_probs[:, list(NEVER_GENERATED)] = -np.inf
            noise = np.concatenate([g.gumbel(size=(n, log_probs.shape[1])) for g in generators])
            token = np.full(rows, PAD_ID, np.int32)
            token[live] = np.argmax(log_probs / temperature + noise[live], axis=1)
            token[done] = PAD_ID
            tokens[:, t] = token
            done |= token == END_ID
            last = token
            if done.all():
                break
            if np.count_nonzero(done[live]) * 4 >= len(live):
                keep = np.flatnonzero(~done[live])
                live = live[keep]
                keep = tf.constant(keep)
                states = [tf.gather(part, keep) for part in states]
                context = tuple(tf.gather(part, keep) for part in context)
        out[start:start + len(batch)] = tokens.reshape(len(batch), n, steps)
    return out


def findings_agreement(texts: list[str], probabilities: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """(len(texts),) how well each report's labels agree with one study's head `probabilities` (14,).

    Sum over the observations the report states of logit(p) - logit(threshold). With every threshold
    at 0.5 this is the log-likelihood of the report's labels under the head, up to a constant that
    is the same for every report of the study; with calibrated thresholds (the model's
    `decision_thresholds`) a finding counts for a report once the head's probability passes the
    threshold the val studies set for it, not 0.5.
    """
    return _agreement(labeler.positive_matrix(labeler.label_matrix(texts)), probabilities, thresholds)


def _agreement(stated: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """findings_agreement for reports already read by the labeler (`stated`: (reports, 14) bool)."""
    p = np.clip(np.asarray(probabilities, np.float64), AGREEMENT_EPS, 1 - AGREEMENT_EPS)
    t = np.full(p.shape, 0.5) if thresholds is None else np.clip(np.asarray(thresholds, np.float64),
                                                                 AGREEMENT_EPS, 1 - AGREEMENT_EPS)
    evidence = (np.log(p) - np.log1p(-p)) - (np.log(t) - np.log1p(-t))
    return stated.astype(np.float64) @ evidence


@dataclass(frozen=True)
class Candidates:
    """Per study, the reports to choose among (the beam's first) and the head's probabilities (N, 14)."""
    texts: list[list[str]]
    probabilities: np.ndarray

    @staticmethod
    def concatenate(parts: list[Candidates]) -> Candidates:
        """The studies of `parts` (chunks of a split), one after the other."""
        return Candidates([texts for part in parts for texts in part.texts],
                          np.concatenate([part.probabilities for part in parts]))

    @cached_property
    def stated(self) -> list[np.ndarray]:
        """Per study, (candidates, 14) what the labeler reads in each candidate: read once, however
        many times `choose` is asked (the evaluation chooses three ways from the same candidates)."""
        return [labeler.positive_matrix(labeler.label_matrix(texts)) for texts in self.texts]

    def choose(self, thresholds: np.ndarray | None = None, consensus: bool = True) -> list[str]:
        """Per study, a candidate with the highest findings_agreement. Among equals (many sampled
        reports state the same findings in other words), the consensus one: the highest mean n-gram
        overlap with all the study's candidates (minimum Bayes risk over the decoder's own samples;
        it picks the wording the decoder keeps coming back to). consensus=False, or a tie there: the
        beam's, then the first sampled."""
        chosen = []
        for study, texts in enumerate(self.texts):
            agreement = _agreement(self.stated[study], self.probabilities[study], thresholds)
            best = [i for i in range(len(texts)) if agreement[i] >= agreement.max() - AGREEMENT_TIE]
            equals = list(dict.fromkeys(texts[i] for i in best))   # distinct wordings, first seen first
            if consensus and len(equals) > 1:
                overlap = consensus_scores(equals, texts)
                chosen.append(equals[int(np.argmax(overlap))])
            else:
                chosen.append(equals[0])
        return chosen


def _ngram_counts(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def ngram_overlap(a: str, b: str, max_n: int = 4) -> float:
    """Mean over n = 1..max_n of the n-gram overlap F-measure of two texts (1 = same words, in order)."""
    words_a, words_b = a.split(), b.split()
    total = 0.0
    for n in range(1, max_n + 1):
        counts_a, counts_b = _ngram_counts(words_a, n), _ngram_counts(words_b, n)
        size = sum(counts_a.values()) + sum(counts_b.values())
        total += 2 * sum((counts_a & counts_b).values()) / size if size else 0.0
    return total / max_n


def overlap_matrix(texts: list[str], others: list[str], max_n: int = 4) -> np.ndarray:
    """(len(texts), len(others)) ngram_overlap of every pair, the n-grams of each text counted once:
    the same numbers as ngram_overlap pair by pair (same operations, same order), without counting
    each text's n-grams again for every pair (the evaluation compares 51 x 51 candidates per study)."""
    distinct = list(dict.fromkeys([*texts, *others]))
    row = {text: i for i, text in enumerate(distinct)}
    words = [text.split() for text in distinct]
    left, right = [row[t] for t in texts], [row[t] for t in others]
    total = np.zeros((len(texts), len(others)))
    for n in range(1, max_n + 1):
        counts = [_ngram_counts(w, n) for w in words]
        ids: dict[tuple, int] = {}
        for c in counts:
            for gram in c:
                ids.setdefault(gram, len(ids))
        matrix = np.zeros((len(distinct), max(len(ids), 1)), np.int64)
        for i, c in enumerate(counts):
            for gram, count in c.items():
                matrix[i, ids[gram]] = count
        sizes = matrix.sum(axis=1)
        common = np.minimum(matrix[left][:, None, :], matrix[right][None, :, :]).sum(axis=2)
        size = sizes[left][:, None] + sizes[right][None, :]
        total += np.where(size > 0, 2 * common / np.maximum(size, 1), 0.0)
    return total / max_n


def consensus_scores(texts: list[str], population: list[str]) -> np.ndarray:
    """(len(texts),) each text's mean ngram_overlap with every text of `population` (duplicates count)."""
    weights = Counter(population)
    overlap = overlap_matrix(texts, list(weights))
    return np.array([sum(count * overlap[i, j] for j, count in enumerate(weights.values())) / len(population)
                     for i in range(len(texts))])


def rerank_candidates(model: ReportGenerator, features, beam_texts: list[str], vocab: Vocab,
                      settings: DecodeSettings, batch_size: int = 32, first_study: int = 0) -> Candidates:
    """Each study's beam report and `settings.rerank_samples` sampled ones, with the head's
    probabilities. `first_study`: see `sample` (a split reranked chunk by chunk)."""
    features = _check_features(model, features)
    if getattr(model, "finding_classifier", None) is None:
        raise BadInput("params.yaml", f"decode.rerank_samples needs a finding head, and this {model.name} model "
                                      "has none (model.<name>.finding_weight is 0)")
    if len(beam_texts) != len(features):
        raise BadInput("features", f"{len(features)} studies but {len(beam_texts)} beam reports")
    probabilities = np.asarray(model.finding_probabilities(tf.convert_to_tensor(features)))
    sampled = sample(model, features, settings.rerank_samples, settings.rerank_temperature, settings.max_len,
                     settings.rerank_seed, batch_size, first_study)
    return Candidates([[beam_texts[study]] + [vocab.decode(row) for row in rows] for study, rows in enumerate(sampled)],
                      probabilities)


def choose_by_findings(model: ReportGenerator, features, beam_texts: list[str], vocab: Vocab,
                       settings: DecodeSettings, batch_size: int = 32) -> list[str]:
    """Per study, of its beam report and `settings.rerank_samples` sampled ones, the report that
    agrees best with the finding head read at the model's calibrated thresholds."""
    candidates = rerank_candidates(model, features, beam_texts, vocab, settings, batch_size)
    return candidates.choose(model.decision_thresholds())
