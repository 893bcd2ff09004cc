"""Probe for issue #11 (not a pipeline stage): does choosing each study's report among sampled
candidates by its agreement with the finding head make the models state what they see?

For every test study: the beam report plus N reports sampled from the decoder (temperature T,
Gumbel-max, seeded), each read by the labeler; the chosen one maximises the finding head's
log-likelihood of the report's 14 positive/not-positive labels (clinically consistent selection).
Scored by the evaluation's own code against the project's floors, with paired bootstrap intervals.

    .venv/bin/python benchmarks/probe_head_rerank.py --project PROJECT --model attention --samples 50

PROJECT is a project where `dvc repro` (or the demo) has run. Prints one line per system.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cxrgen.quiet import import_tensorflow

tf = import_tensorflow()

from cxrgen.data import labeler  # noqa: E402
from cxrgen.data.vocab import END_ID, PAD_ID, START_ID, Vocab  # noqa: E402
from cxrgen.evaluation import evaluate  # noqa: E402
from cxrgen.modeling.decode import (  # noqa: E402
    NEVER_GENERATED,
    DecodeSettings,
    _compiled,
    beam_search,
)
from cxrgen.modeling.models import load_model  # noqa: E402
from cxrgen.modeling.train import load_features  # noqa: E402
from cxrgen.tables import read_parquet  # noqa: E402

EPS = 1e-4


def sample(model, features, n: int, temperature: float, rng, steps: int = 60) -> np.ndarray:
    """(studies, n, steps) token ids sampled from the decoder."""
    encode, step = _compiled(model)
    context, states = encode(tf.convert_to_tensor(features))
    context = tuple(tf.repeat(part, n, axis=0) for part in context)
    states = [tf.repeat(part, n, axis=0) for part in states]
    rows = len(features) * n
    last, done = np.full(rows, START_ID, np.int32), np.zeros(rows, bool)
    out = np.full((rows, steps), PAD_ID, np.int32)
    for t in range(steps):
        log_probs, states, _ = step(tf.constant(last), states, context)
        log_probs = log_probs.numpy()
        log_probs[:, list(NEVER_GENERATED)] = -np.inf
        token = np.argmax(log_probs / temperature + rng.gumbel(size=log_probs.shape), axis=1).astype(np.int32)
        token[done] = PAD_ID
        out[:, t] = token
        done |= token == END_ID
        last = token
        if done.all():
            break
    return out.reshape(len(features), n, steps)


def head_agreement(texts: list[str], probabilities: np.ndarray) -> np.ndarray:
    positive = labeler.positive_matrix(labeler.label_matrix(texts))
    return (positive * np.log(probabilities + EPS) + ~positive * np.log(1 - probabilities + EPS)).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=".")
    parser.add_argument("--model", default="attention")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    project = Path(args.project)
    model = load_model(project / "models" / f"{args.model}.keras")
    vocab = Vocab.load(project / "data" / "prepared" / "vocab.json")
    features = load_features(project / "data" / "features" / "features_test.npz", model.feature_key)
    floors = read_parquet(project / "data" / "predictions" / "floors.parquet")
    references = floors["reference"].tolist()
    if len(references) != len(features):
        sys.exit("the project's floors and features disagree on the test split: run dvc repro first")
    probabilities = np.asarray(model.finding_probabilities(tf.convert_to_tensor(features)))
    beam = beam_search(model, features, DecodeSettings(3, 0.0, 0, 60)).texts(vocab)
    rng = np.random.default_rng(args.seed)
    chosen = []
    for start in range(0, len(features), 32):
        sampled = sample(model, features[start:start + 32], args.samples, args.temperature, rng)
        for offset, rows in enumerate(sampled):
            candidates = [beam[start + offset]] + [vocab.decode(row) for row in rows]
            chosen.append(candidates[int(np.argmax(head_agreement(candidates, probabilities[start + offset])))])
    settings = {**evaluate.EVALUATE_DEFAULTS, "n_resamples": 300}
    reference_labels = labeler.label_matrix(references)
    systems = {name: evaluate.score_system(texts, references, reference_labels, settings, meteor=False)
               for name, texts in (("constant", floors["constant"].tolist()),
                                   ("retrieval", floors["retrieval"].tolist()),
                                   ("label_oracle", floors["label_oracle"].tolist()),
                                   ("beam 3", beam), (f"head-chosen of beam + {args.samples}", chosen))}
    print(f"{args.model} model, {len(references)} test studies, {args.samples} samples at T={args.temperature}, "
          f"seed {args.seed}")
    for name, scored in systems.items():
        row = evaluate.summary(scored, settings)
        line = (f"{name:28s} abnormal F1 {row['abnormal_f1'] or 0:.3f} [{row.get('abnormal_f1_low') or 0:.3f}, "
                f"{row.get('abnormal_f1_high') or 0:.3f}]  14-obs F1 {row['micro_f1']:.3f}  BLEU-4 {row['bleu_4']:.3f}"
                f"  distinct {row['distinct_reports']}/{len(references)}  tokens {row['mean_tokens']:.1f}")
        if name.startswith("head-chosen"):
            for floor in ("constant", "retrieval"):
                d = evaluate.versus(scored, systems[floor], settings)
                line += (f"\n{'':28s} vs {floor}: abnormal F1 {d['abnormal_f1']['difference']:+.3f} "
                         f"[{d['abnormal_f1']['low']:+.3f}, {d['abnormal_f1']['high']:+.3f}], BLEU-4 "
                         f"{d['bleu_4']['difference']:+.3f} [{d['bleu_4']['low']:+.3f}, {d['bleu_4']['high']:+.3f}]")
        print(line)


if __name__ == "__main__":
    main()
