"""The systems scored on the test split, named once: the floors a model must beat, the label oracle
beside them, how a model's decoding is described, and the one-line summary the stages print."""

from __future__ import annotations

FLOORS = ("constant", "retrieval")          # what a model must beat
ORACLE = "label_oracle"                     # a ceiling beside them (see floors.py)
FLOOR_STAGE_SYSTEMS = (*FLOORS, ORACLE)     # what the floors stage scores
# A model's decodings (the last is the one the headline reports): greedy, beam search, and the
# report chosen by the findings among the beam's and sampled ones with the head read at 0.5, at its
# calibrated thresholds taking the first of equals, and at them with the consensus among equals.
RERANK_AT_HALF = "rerank_at_half"
RERANK_FIRST = "rerank_first"
DECODINGS = ("greedy", "beam", RERANK_AT_HALF, RERANK_FIRST, "rerank")


def decoding_label(decode: dict, decoding: str) -> str:
    """"greedy", "beam 3", or "beam 3 + 50 samples, chosen by the findings [read at 0.5]" (`decode`: the details' record)."""
    if decoding == "greedy":
        return "greedy"
    label = f"beam {decode['beam_width']}"
    if decoding == "rerank":
        label += f" + {decode.get('rerank_samples', 0)} samples, chosen by the findings"
    elif decoding == RERANK_AT_HALF:
        label += f" + {decode.get('rerank_samples', 0)} samples, chosen by the findings read at 0.5"
    elif decoding == RERANK_FIRST:
        label += f" + {decode.get('rerank_samples', 0)} samples, chosen by the findings, first of equals"
    return label


def _rounded(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def score_line(row: dict) -> str:
    """BLEU-4, both clinical F1s and distinct reports of one system's summary, for a stage's output."""
    return (f"BLEU-4 {row['bleu_4']:.3f}, abnormal-finding F1 {_rounded(row['abnormal_f1'])}, "
            f"14-observation micro-F1 {_rounded(row['micro_f1'])}, {row['distinct_reports']} distinct reports")
