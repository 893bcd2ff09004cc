"""Greedy and beam search: the batched search equals the plain per-study reference, finds the best
hypothesis when wide enough, keeps finished beams frozen, blocks n-grams, returns the attention."""

from __future__ import annotations

import itertools
import json
import os
import runpy
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from synthetic_captions import SIZES, make_studies, pooled  # noqa: E402

from cxrgen.data.text import tokenize  # noqa: E402
from cxrgen.data.vocab import END_ID, PAD_ID, START_ID, build_vocab  # noqa: E402
from cxrgen.errors import BadInput  # noqa: E402
from cxrgen.features.store import write_store  # noqa: E402
from cxrgen.modeling.decode import (  # noqa: E402
    DecodeSettings,
    beam_search,
    beam_search_reference,
    Candidates,
    choose_by_findings,
    consensus_scores,
    findings_agreement,
    ngram_overlap,
    overlap_matrix,
    greedy,
    length_factors,
    ngram_bans,
    ngram_bans_one,
)
from cxrgen.modeling.decode import sample as sample_reports  # noqa: E402
from cxrgen.modeling.models import MaskedTokenLoss, build_model, feature_key_for, save_model  # noqa: E402
from cxrgen.observations import OBSERVATIONS  # noqa: E402
from cxrgen.modeling.train import token_matrix  # noqa: E402

MAX_LEN = 16
REGION_HEAD = {"finding_weight": 1.0, "finding_head": "regions", "finding_hidden": 4, "finding_folds": 2}


@pytest.fixture(scope="module")
def data():
    spatial, texts = make_studies(72, np.random.default_rng(0))
    vocab = build_vocab([tokenize(text) for text in texts], min_count=1, max_len=MAX_LEN)
    return {"spatial": spatial, "pooled": pooled(spatial), "tokens": token_matrix(texts, vocab), "vocab": vocab}


@pytest.fixture(scope="module")
def trained(data):
    """A briefly trained tiny model of each kind, copied to float64.

    Trained, so that reports end at different lengths and beams differ (a random model repeats one
    token); float64, so that running one beam at a time or a whole batch at once cannot reorder two
    candidates: their scores differ by rounding (~1e-16) far less than any two real scores do.
    """
    models = {}
    for variant in ("baseline", "attention", "baseline_regions", "attention_regions"):
        name = variant.removesuffix("_regions")
        # _regions: with a cross-fitted region finding head (the defaults' head), its probabilities
        # read by the decoder beside the features.
        sizes = {**SIZES[name], **(REGION_HEAD if variant.endswith("_regions") else {})}
        keras.utils.set_random_seed(0)
        features = data[feature_key_for(name, sizes)]
        model = build_model(name, len(data["vocab"]), features.shape[1:], sizes)
        model.compile(optimizer=keras.optimizers.Adam(0.03), loss=MaskedTokenLoss())
        tokens = data["tokens"]
        with warnings.catch_warnings():   # the heads get no targets here: Keras warns they get no gradients
            warnings.filterwarnings("ignore", message="Gradients do not exist")
            model.fit({"features": features, "tokens": tokens[:, :-1]}, tokens[:, 1:], epochs=12, batch_size=16,
                      verbose=0)
        exact = build_model(name, len(data["vocab"]), features.shape[1:], sizes, dtype="float64")
        exact.set_weights([weight.astype(np.float64) for weight in model.get_weights()])
        models[variant] = (exact, features[:10].astype(np.float64))
    return models


SETTINGS = [
    DecodeSettings(beam_width=1, length_penalty=0.0, no_repeat_ngram=0, max_len=MAX_LEN),
    DecodeSettings(beam_width=2, length_penalty=0.0, no_repeat_ngram=0, max_len=MAX_LEN),
    DecodeSettings(beam_width=3, length_penalty=0.6, no_repeat_ngram=0, max_len=MAX_LEN),
    DecodeSettings(beam_width=3, length_penalty=0.0, no_repeat_ngram=2, max_len=MAX_LEN),
    DecodeSettings(beam_width=5, length_penalty=1.0, no_repeat_ngram=1, max_len=MAX_LEN),
    DecodeSettings(beam_width=4, length_penalty=2.0, no_repeat_ngram=3, max_len=9),
]


@pytest.mark.parametrize("name", ["baseline", "attention", "baseline_regions", "attention_regions"])
@pytest.mark.parametrize("settings", SETTINGS,
                         ids=lambda s: f"w{s.beam_width}-a{s.length_penalty}-n{s.no_repeat_ngram}")
def test_batched_search_equals_the_per_study_reference(trained, name, settings):
    model, features = trained[name]
    batched = beam_search(model, features, settings, batch_size=4)  # several batches, one uneven
    reference = beam_search_reference(model, features, settings)
    np.testing.assert_array_equal(batched.tokens, reference.tokens)
    np.testing.assert_array_equal(batched.lengths, reference.lengths)
    np.testing.assert_array_equal(batched.finished, reference.finished)
    np.testing.assert_allclose(batched.scores, reference.scores, rtol=1e-9)
    np.testing.assert_allclose(batched.log_probs, reference.log_probs, rtol=1e-9)
    if name.startswith("attention"):
        np.testing.assert_allclose(batched.attention, reference.attention, atol=1e-6)
    else:
        assert batched.attention is None and reference.attention is None


@pytest.mark.parametrize("name", ["attention", "attention_regions", "baseline_regions"])
def test_the_comparison_covers_finished_and_unfinished_beams_and_different_lengths(trained, name):
    """Guards the test above against a degenerate model (every report the same, or none ending)."""
    model, features = trained[name]
    plain = beam_search(model, features, SETTINGS[2])
    assert plain.finished.all() and len(set(plain.lengths.tolist())) > 1
    assert len({tuple(row) for row in plain.tokens}) > 2
    cut = beam_search(model, features, DecodeSettings(beam_width=3, max_len=6))
    assert not cut.finished.any() and (cut.lengths == 5).all()


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_the_model_learned_to_read_the_views(trained, data, name):
    model, features = trained[name]
    texts = beam_search(model, features, SETTINGS[2]).texts(data["vocab"])
    wanted = [text.removesuffix(" no effusion .") for text in make_studies(72, np.random.default_rng(0))[1][:10]]
    assert sum(text.startswith(target) for text, target in zip(texts, wanted)) >= 8


def test_greedy_is_the_argmax_at_every_step(trained):
    model, features = trained["attention"]
    result = greedy(model, features, max_len=MAX_LEN)
    context = model.encode(features)
    states = model.initial_state(context)
    last = np.full(len(features), START_ID, dtype=np.int32)
    expected, done = [], np.zeros(len(features), dtype=bool)
    for _ in range(MAX_LEN - 1):
        logits, states, _ = model.step(last, states, context)
        logits = logits.numpy()
        logits[:, [PAD_ID, START_ID]] = -np.inf
        last = np.where(done, PAD_ID, logits.argmax(-1)).astype(np.int32)
        expected.append(last)
        done |= last == END_ID
    np.testing.assert_array_equal(result.tokens, np.stack(expected, 1))


def all_hypotheses(vocab_size: int, steps: int, n: int):
    """Every token sequence the search may produce: ended by <end>, or cut at `steps` tokens."""
    words = [token for token in range(vocab_size) if token not in (PAD_ID, START_ID, END_ID)]
    for length in range(1, steps + 1):
        for body in itertools.product(words, repeat=length - 1):
            for last in (END_ID, *(words if length == steps else ())):
                sequence = [*body, last]
                if not any(sequence[i] in ngram_bans_one(sequence[:i], n) for i in range(len(sequence))):
                    yield sequence


@pytest.mark.parametrize("alpha,n", [(0.0, 0), (1.0, 0), (0.6, 1), (0.0, 2)])
def test_a_wide_enough_beam_finds_the_best_scoring_hypothesis(alpha, n):
    """Against brute force: score every possible report of a 3-word vocabulary up to 3 tokens."""
    keras.utils.set_random_seed(5)
    model = build_model("baseline", 7, (2, 4), {"embedding_dim": 4, "units": 6, "dropout": 0.0}, dtype="float64")
    features = np.random.default_rng(1).normal(size=(3, 2, 4))
    settings = DecodeSettings(beam_width=60, length_penalty=alpha, no_repeat_ngram=n, max_len=4)
    result = beam_search(model, features, settings)
    factors = length_factors(settings.steps, alpha)
    hypotheses = list(all_hypotheses(7, settings.steps, n))
    # Every hypothesis at once: padded to the same length (later positions cannot change earlier
    # logits), fed after <start> with teacher forcing.
    inputs = np.full((len(hypotheses), settings.steps), PAD_ID, dtype=np.int32)
    for row, sequence in enumerate(hypotheses):
        inputs[row, : len(sequence)] = [START_ID, *sequence[:-1]]
    for study in range(len(features)):
        repeated = np.repeat(features[study:study + 1], len(hypotheses), axis=0)
        logits = model({"features": repeated, "tokens": inputs}).numpy()
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        scores = [log_probs[row, np.arange(len(sequence)), sequence].sum() / factors[len(sequence)]
                  for row, sequence in enumerate(hypotheses)]
        best = hypotheses[int(np.argmax(scores))]
        assert result.tokens[study, : len(best)].tolist() == best
        assert result.tokens[study, len(best):].tolist() == [PAD_ID] * (settings.steps - len(best))
        assert result.scores[study] == pytest.approx(max(scores), rel=1e-9)


def test_scores_lengths_and_padding_describe_the_returned_tokens(trained):
    model, features = trained["baseline"]
    settings = DecodeSettings(beam_width=3, length_penalty=0.8, max_len=MAX_LEN)
    result = beam_search(model, features, settings)
    factors = length_factors(settings.steps, settings.length_penalty)
    for row in range(len(features)):
        length = result.lengths[row]
        tokens = result.tokens[row]
        assert (tokens[length:] == PAD_ID).all() and (tokens[:length] != PAD_ID).all()
        assert result.finished[row] == (tokens[length - 1] == END_ID)
        assert END_ID not in tokens[: length - 1]
        inputs = {"features": features[row:row + 1], "tokens": np.array([[START_ID, *tokens[: length - 1]]])}
        logits = model(inputs).numpy()[0]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        expected = log_probs[np.arange(length), tokens[:length]].sum()
        assert result.log_probs[row] == pytest.approx(expected, rel=1e-9)
        assert result.scores[row] == pytest.approx(expected / factors[length], rel=1e-12)


def test_attention_of_the_chosen_sequence_is_returned_per_generated_word(trained):
    model, features = trained["attention"]
    result = beam_search(model, features, DecodeSettings(beam_width=3, max_len=MAX_LEN))
    assert result.attention.shape == (len(features), MAX_LEN - 1, 98)
    for row in range(len(features)):
        length = result.lengths[row]
        tokens = np.array([[START_ID, *result.tokens[row, : length - 1]]])
        forced = model.teacher_forced_attention({"features": features[row:row + 1], "tokens": tokens}).numpy()[0]
        # float32 on the way out: the app shows them, it needs no more.
        np.testing.assert_allclose(result.attention[row, :length], forced, atol=1e-6)
        np.testing.assert_allclose(result.attention[row, :length].sum(-1), 1.0, atol=1e-6)
        assert (result.attention[row, length:] == 0).all()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_returned_report_repeats_an_ngram_when_blocking(trained, n):
    model, features = trained["baseline"]
    for width in (1, 3):
        result = beam_search(model, features, DecodeSettings(beam_width=width, no_repeat_ngram=n, max_len=MAX_LEN))
        for row, length in zip(result.tokens, result.lengths):
            grams = [tuple(row[i:i + n]) for i in range(length - n + 1)]
            assert len(grams) == len(set(grams))
    # Without blocking this model does repeat bigrams (". lungs", "is"...), so blocking is tested.
    free = beam_search(model, features, DecodeSettings(beam_width=3, max_len=MAX_LEN))
    assert any(len(set(row[:length])) < length for row, length in zip(free.tokens, free.lengths))


def test_vectorised_ngram_bans_equal_the_plain_rule():
    rng = np.random.default_rng(0)
    for n in range(0, 5):
        for t in range(0, 9):
            history = rng.integers(4, 8, (30, t)).astype(np.int32)  # a small vocabulary: many repeats
            banned = ngram_bans(history, n, 8)
            for row in range(30):
                assert set(np.flatnonzero(banned[row]).tolist()) == ngram_bans_one(history[row].tolist(), n)
    assert ngram_bans_one([5, 6, 5], 2) == {6}
    assert ngram_bans_one([5, 6, 7], 1) == {5, 6, 7}


def test_batching_does_not_change_the_result(trained):
    model, features = trained["attention"]
    settings = DecodeSettings(beam_width=3, length_penalty=0.6, no_repeat_ngram=2, max_len=MAX_LEN)
    whole = beam_search(model, features, settings, batch_size=100)
    one_by_one = beam_search(model, features, settings, batch_size=1)
    np.testing.assert_array_equal(whole.tokens, one_by_one.tokens)
    np.testing.assert_allclose(whole.attention, one_by_one.attention, atol=1e-12)
    empty = beam_search(model, features[:0], settings)
    assert empty.tokens.shape == (0, MAX_LEN - 1) and empty.attention.shape == (0, MAX_LEN - 1, 98)


def test_settings_are_checked():
    assert DecodeSettings.from_params({"decode": {"beam_width": 5}}).beam_width == 5
    assert DecodeSettings.from_params({}).max_len == 60
    with pytest.raises(BadInput, match="unknown keys"):
        DecodeSettings.from_params({"decode": {"beam": 3}})
    for bad in ({"beam_width": 0}, {"max_len": 1}, {"no_repeat_ngram": -1}, {"length_penalty": -0.5}):
        with pytest.raises(BadInput):
            DecodeSettings(**bad)


def test_features_of_the_wrong_shape_are_refused(trained):
    model, features = trained["attention"]
    with pytest.raises(BadInput, match="spatial"):
        greedy(model, features[:, :, 0])


def test_speed_benchmark_writes_its_key_and_keeps_the_others(trained, tmp_path, project_root, monkeypatch):
    model, features = trained["baseline"]
    save_model(model, tmp_path / "baseline.keras")
    rows = features[:6].astype(np.float16)
    write_store(tmp_path, {"test": {"pooled": rows}}, {"pooled": np.zeros_like(rows[:1])}, shard_studies=4)
    out = tmp_path / "speed.json"
    out.write_text(json.dumps({"features": {"images_per_s": 1.0}}))
    monkeypatch.setattr(sys, "argv", [
        "speed_decode.py", "--features", str(tmp_path), "--model", str(tmp_path / "baseline.keras"),
        "--max-len", "8", "--batch-size", "4", "--reference-studies", "2", "--out", str(out)])
    runpy.run_path(str(project_root / "benchmarks/speed_decode.py"), run_name="__main__")
    speed = json.loads(out.read_text())
    assert speed["features"] == {"images_per_s": 1.0}
    decode = speed["decode"]
    assert decode["machine"]["cpu_count"] == os.cpu_count() and "tensorflow" in decode["machine"]
    result = decode["models"]["baseline"]
    assert result["studies"] == 6 and result["reference_studies_timed"] == 2 and "extrapolated" in result["note"]
    assert set(result["results"]) == {"greedy", "beam3", "beam5"}
    for timing in result["results"].values():
        assert timing["batched_studies_per_s"] > 0 and timing["same_reports_as_reference"] == "2/2"


# ---------------------------------------------------------------------------------------------
# Choosing among the beam's and sampled reports by the findings


def test_findings_agreement_by_hand():
    p = np.full(len(OBSERVATIONS), 0.1)
    p[OBSERVATIONS.index("Cardiomegaly")] = 0.9
    texts = ["the heart is enlarged .", "the heart is normal in size . the lungs are clear ."]
    got = findings_agreement(texts, p)
    # the first states Cardiomegaly only; the second states No Finding only (the labeler's reading):
    # each scores the logit of what it states
    assert got[0] == pytest.approx(np.log(9.0))
    assert got[1] == pytest.approx(-np.log(9.0))
    # the same order as the log-likelihood of the labels (they differ by a constant per study)
    stated = np.zeros((2, len(OBSERVATIONS)), bool)
    stated[0, OBSERVATIONS.index("Cardiomegaly")] = stated[1, OBSERVATIONS.index("No Finding")] = True
    likelihood = (stated * np.log(p) + ~stated * np.log1p(-p)).sum(axis=1)
    assert got[0] - got[1] == pytest.approx(likelihood[0] - likelihood[1])


def test_a_calibrated_threshold_decides_what_counts_as_seen():
    # The head gives cardiomegaly .3 and "no finding" .6: read at 0.5 the normal report agrees
    # better; with cardiomegaly's threshold calibrated to .2 the enlarged heart is what it saw.
    p = np.full(len(OBSERVATIONS), 0.1)
    p[OBSERVATIONS.index("Cardiomegaly")], p[OBSERVATIONS.index("No Finding")] = 0.3, 0.6
    texts = ["the heart is enlarged .", "the heart is normal in size . the lungs are clear ."]
    assert np.argmax(findings_agreement(texts, p)) == 1
    thresholds = np.full(len(OBSERVATIONS), 0.5)
    thresholds[OBSERVATIONS.index("Cardiomegaly")] = 0.2
    got = findings_agreement(texts, p, thresholds)
    assert np.argmax(got) == 0
    assert got[0] == pytest.approx(np.log(0.3 / 0.7) - np.log(0.2 / 0.8))


def test_ngram_overlap_by_hand():
    assert ngram_overlap("the lungs are clear", "the lungs are clear") == 1.0
    assert ngram_overlap("the lungs are clear", "no effusion") == 0.0
    # unigrams 2*2/(3+3), bigrams 2*1/(2+2), no trigram in common (2*0/(1+1)), no 4-grams at all (0)
    assert ngram_overlap("heart is normal", "heart is enlarged") == pytest.approx((2 / 3 + 1 / 2) / 4)


def test_among_equal_findings_the_consensus_wording_is_chosen():
    p = np.full(len(OBSERVATIONS), 0.1)
    p[OBSERVATIONS.index("Cardiomegaly")] = 0.9
    texts = ["cardiomegaly is seen .",                       # the beam's: states the finding, odd wording
             "the heart is enlarged . the lungs are clear .",
             "the lungs are clear .",                         # leaves the finding out
             "the heart is enlarged . the lungs are clear .",
             "the heart is enlarged . lungs are clear ."]
    candidates = Candidates([texts], p[None])
    assert candidates.choose() == ["the heart is enlarged . the lungs are clear ."]
    assert candidates.choose(consensus=False) == ["cardiomegaly is seen ."]   # first of equals: the beam's
    scores = consensus_scores(["cardiomegaly is seen .", "the heart is enlarged . the lungs are clear ."], texts)
    assert scores[1] > scores[0]


@pytest.mark.parametrize("name", ["baseline", "attention"])
def test_sampling_is_seeded_and_near_zero_temperature_is_greedy(trained, name):
    model, features = trained[name]
    first = sample_reports(model, features, 4, 1.0, MAX_LEN, seed=3, batch_size=4)
    assert first.shape == (len(features), 4, MAX_LEN - 1)
    np.testing.assert_array_equal(first, sample_reports(model, features, 4, 1.0, MAX_LEN, seed=3, batch_size=7))
    # A split sampled chunk by chunk (the evaluation reads the test split so): study i of a chunk
    # starting at `first_study` draws as study first_study + i of the whole split.
    chunked = [sample_reports(model, features[start:start + 3], 4, 1.0, MAX_LEN, seed=3, batch_size=2,
                              first_study=start) for start in range(0, len(features), 3)]
    np.testing.assert_array_equal(first, np.concatenate(chunked))
    assert not np.array_equal(first, sample_reports(model, features, 4, 1.0, MAX_LEN, seed=4, batch_size=4))
    for row in first.reshape(-1, MAX_LEN - 1):   # <pad> only after <end>, and never <start>
        ended = np.flatnonzero(row == END_ID)
        if ended.size:
            assert (row[ended[0] + 1:] == PAD_ID).all()
        assert START_ID not in row and PAD_ID not in row[: ended[0] if ended.size else None]
    cold = sample_reports(model, features, 2, 1e-6, MAX_LEN, seed=0)
    plain = greedy(model, features, MAX_LEN).tokens
    for k in range(2):
        np.testing.assert_array_equal(cold[:, k], plain)


def _with_head(trained, name):
    """The trained tiny model's decoder with a finding head whose weights say something per study."""
    model, features = trained[name]
    sizes = {**SIZES[name], "finding_weight": 1.0}
    headed = build_model(name, model.vocab_size, features.shape[1:], sizes, dtype="float64")
    by_name = {w.path: w for w in model.weights}
    for weight in headed.weights:   # the decoder's weights where they fit, so it writes words
        if weight.path in by_name and tuple(by_name[weight.path].shape) == tuple(weight.shape):
            weight.assign(by_name[weight.path])
        elif "finding_classifier" in weight.path:   # a head sure of cardiomegaly and of nothing else
            if "bias" in weight.path:
                wanted = np.arange(weight.shape[0]) % len(OBSERVATIONS) == OBSERVATIONS.index("Cardiomegaly")
                weight.assign(np.where(wanted, 8.0, -8.0))
            else:
                weight.assign(np.zeros(weight.shape))
    return headed, features


def test_choose_by_findings_keeps_the_candidate_the_head_finds_most_likely(trained, data):
    # The attention model: its trained decoder's weights all fit the headed one, so it writes words the
    # labeler reads (choose_by_findings itself does not depend on the kind of model).
    model, features = _with_head(trained, "attention")
    settings = DecodeSettings(beam_width=3, max_len=MAX_LEN, rerank_samples=6, rerank_seed=2)
    beam = beam_search(model, features, settings).texts(data["vocab"])
    chosen = choose_by_findings(model, features, beam, data["vocab"], settings, batch_size=4)
    sampled = sample_reports(model, features, 6, 1.0, MAX_LEN, seed=2, batch_size=4)
    probabilities = np.asarray(model.finding_probabilities(features))
    assert (probabilities[:, OBSERVATIONS.index("Cardiomegaly")] > 0.99).all()
    picked_a_sample = 0
    for study, text in enumerate(chosen):
        candidates = [beam[study]] + [data["vocab"].decode(row) for row in sampled[study]]
        agreement = findings_agreement(candidates, probabilities[study])
        equals = list(dict.fromkeys(c for c, a in zip(candidates, agreement) if a >= agreement.max() - 1e-9))
        assert text in equals   # of those that agree best, the consensus wording
        assert text == equals[int(np.argmax(consensus_scores(equals, candidates)))]
        picked_a_sample += int(np.argmax(agreement)) > 0 and text != beam[study]
    assert picked_a_sample > 0, "the head never preferred a sampled report: the check would pass vacuously"
    assert sum("enlarged" in text for text in chosen) > sum("enlarged" in text for text in beam)


def test_choose_by_findings_needs_a_finding_head_and_sane_settings(trained, data):
    model, features = trained["baseline"]          # trained without a head
    settings = DecodeSettings(beam_width=2, max_len=MAX_LEN, rerank_samples=2)
    with pytest.raises(BadInput, match="finding head"):
        choose_by_findings(model, features, ["x"] * len(features), data["vocab"], settings)
    for bad in ({"rerank_samples": -1}, {"rerank_temperature": 0}, {"rerank_seed": 1.5}):
        with pytest.raises(BadInput, match="decode.rerank"):
            DecodeSettings(**bad)


def test_the_overlap_matrix_is_ngram_overlap_pair_by_pair():
    rng = np.random.default_rng(0)
    vocabulary = "the lungs are clear heart is normal enlarged no effusion . size".split()
    texts = [" ".join(rng.choice(vocabulary, rng.integers(0, 12))) for _ in range(20)] + ["", "the", "the the the"]
    matrix = overlap_matrix(texts[:7], texts)
    for i, a in enumerate(texts[:7]):
        for j, b in enumerate(texts):
            assert matrix[i, j] == ngram_overlap(a, b)         # the very same number, not just close
