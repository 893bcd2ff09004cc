"""Which split (train / val / test) each report belongs to.

Splits are by report (study), never by image, so the views of one study never straddle splits; where
the data names each study's patient (MIMIC-CXR), by patient, so one patient's studies never straddle
splits either. Three ways: a seeded random split, the standard R2Gen split read from its
annotation.json, or the split a collection ships with (`official`: MIMIC-CXR's split table).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from cxrgen.errors import BadInput, CxrgenError

PARAMS_FILE = "params.yaml"
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
_EXAMPLES = 10  # how many example ids the info record lists


def _unique_sorted(report_ids: Iterable[str]) -> list[str]:
    ids = list(report_ids)
    duplicates = sorted(id_ for id_, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise CxrgenError(f"report ids must be unique; repeated: {duplicates[:_EXAMPLES]}")
    return sorted(ids)


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """The fractions as floats, or BadInput(params.yaml) saying what is wrong with them."""
    if not isinstance(fractions, Mapping) or set(fractions) != set(SPLITS):
        raise BadInput(
            PARAMS_FILE, f"split fractions must name exactly {list(SPLITS)}, got {fractions!r}"
        )
    values = {}
    for name in SPLITS:
        value = fractions[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInput(PARAMS_FILE, f"split fraction {name} must be a number, got {value!r}")
        if value < 0:
            raise BadInput(PARAMS_FILE, f"split fraction {name} must be >= 0, got {value!r}")
        values[name] = float(value)
    if not math.isclose(sum(values.values()), 1.0, abs_tol=1e-9):
        raise BadInput(
            PARAMS_FILE, f"split fractions must sum to 1, got {sum(values.values()):g} ({fractions!r})"
        )
    return values


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Exact counts summing to n: floors of n*fraction, the rest to the largest remainders
    (ties in the order train, val, test)."""
    shares = {name: n * fractions[name] for name in SPLITS}
    sizes = {name: math.floor(share) for name, share in shares.items()}
    by_remainder = sorted(SPLITS, key=lambda name: (-(shares[name] - sizes[name]), SPLITS.index(name)))
    for name in by_remainder[: n - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def _shuffle_key(seed: int, report_id: str) -> str:
    # A hash, not a random generator's stream: the order depends only on (seed, id), the same on
    # every platform and library version, and whatever order the ids came in.
    return hashlib.sha256(f"{seed}\0{report_id}".encode()).hexdigest()


def split_random(
    report_ids: Iterable[str], fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, str]:
    """A seeded random split by report: {report id: "train" | "val" | "test"}.

    The ids are shuffled by a hash of (seed, id) and cut into exact sizes (`split_sizes`), so the
    result does not depend on the input order. fractions default to DEFAULT_FRACTIONS.
    """
    fractions = validate_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadInput(PARAMS_FILE, f"split seed must be an integer, got {seed!r}")
    ids = _unique_sorted(report_ids)
    shuffled = sorted(ids, key=lambda id_: (_shuffle_key(seed, str(id_)), id_))
    sizes = split_sizes(len(ids), fractions)
    assignment, start = {}, 0
    for name in SPLITS:
        for id_ in shuffled[start : start + sizes[name]]:
            assignment[id_] = name
        start += sizes[name]
    return assignment


def r2gen_uid(annotation_id: str) -> str:
    """The report uid of an R2Gen id: "CXR3404_IM-1647" -> "CXR3404" (the part before '_')."""
    return annotation_id.split("_", 1)[0]


def read_r2gen_annotation(path: str | Path) -> dict[str, str]:
    """{report uid: split} from R2Gen's annotation.json; BadInput naming the file if malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(path, "R2Gen annotation file not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(path, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(name), list) for name in SPLITS):
        raise BadInput(path, f"expected an R2Gen annotation: an object with lists {list(SPLITS)}")
    uid_split: dict[str, str] = {}
    for name in SPLITS:
        for position, entry in enumerate(data[name]):
            entry_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(entry_id, str) or not r2gen_uid(entry_id):
                raise BadInput(path, f"entry {position} of '{name}' has no string 'id'")
            uid = r2gen_uid(entry_id)
            if uid_split.setdefault(uid, name) != name:
                raise BadInput(path, f"report {uid} is in both '{uid_split[uid]}' and '{name}'")
    return uid_split


def split_r2gen(
    report_ids: Iterable[str], annotation_path: str | Path
) -> tuple[dict[str, str | None], dict]:
    """The standard R2Gen split applied to our reports (ids are uIds such as "CXR3404").

    Returns ({report id: split, or None for a report the annotation does not list}, info) where
    info counts the reports per split, those not in the annotation, and the annotation's reports
    we do not have (with a few sorted examples of each), all JSON-able and deterministic.
    """
    ids = _unique_sorted(report_ids)
    uid_split = read_r2gen_annotation(annotation_path)
    assignment = {id_: uid_split.get(id_) for id_ in ids}
    not_in_annotation = [id_ for id_ in ids if assignment[id_] is None]
    have = set(ids)
    missing_reports = sorted(uid for uid in uid_split if uid not in have)
    counts = Counter(split for split in assignment.values() if split is not None)
    annotation_counts = Counter(uid_split.values())
    info = {
        "annotation_file": Path(annotation_path).name,
        "annotation_reports": {name: annotation_counts.get(name, 0) for name in SPLITS},
        "reports": {name: counts.get(name, 0) for name in SPLITS},
        "not_in_r2gen_split": len(not_in_annotation),
        "not_in_r2gen_split_examples": not_in_annotation[:_EXAMPLES],
        "annotation_ids_without_report": len(missing_reports),
        "annotation_ids_without_report_examples": missing_reports[:_EXAMPLES],
    }
    return assignment, info


def split_random_grouped(
    report_ids: Iterable[str], groups: Mapping[str, str], fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, str]:
    """A seeded random split by group (patient): every report of a group lands in the same split.

    Groups are shuffled by a hash of (seed, group) and taken in that order; a group goes to the split
    whose share of the reports (exact sizes as `split_sizes`) its middle report falls in, so the
    splits come as close to the fractions as whole groups allow. Independent of the input order.
    """
    fractions = validate_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadInput(PARAMS_FILE, f"split seed must be an integer, got {seed!r}")
    ids = _unique_sorted(report_ids)
    members: dict[str, list[str]] = {}
    for id_ in ids:   # a report without a patient id is its own group
        members.setdefault(str(groups.get(id_, f"\0{id_}")), []).append(id_)
    order = sorted(members, key=lambda group: (_shuffle_key(seed, group), group))
    sizes = split_sizes(len(ids), fractions)
    ends = [sum(sizes[name] for name in SPLITS[: i + 1]) for i in range(len(SPLITS))]
    assignment, taken = {}, 0
    for group in order:
        middle = taken + len(members[group]) / 2
        split = next((name for name, end in zip(SPLITS, ends) if middle < end), SPLITS[-1])
        for id_ in members[group]:
            assignment[id_] = split
        taken += len(members[group])
    return assignment


def split_official(
    report_ids: Iterable[str], official: Mapping[str, str | None], groups: Mapping[str, str], source: str | Path,
) -> tuple[dict[str, str | None], dict]:
    """The split the collection ships with ({report id: train | val | test, or None where it lists
    none}), checked: one patient (groups) in two splits is BadInput naming `source`, the split file.
    """
    ids = _unique_sorted(report_ids)
    assignment = {id_: official.get(id_) for id_ in ids}
    for id_, split in assignment.items():
        if split is not None and split not in SPLITS:
            raise BadInput(source, f"report {id_}: split {split!r} is not one of {list(SPLITS)}")
    seen: dict[str, tuple[str, str]] = {}
    for id_ in ids:
        split = assignment[id_]
        if split is None:
            continue
        group = str(groups.get(id_, id_))   # a report without a patient id is its own group
        first = seen.setdefault(group, (split, id_))
        if first[0] != split:
            raise BadInput(source, (
                f"patient {group} is in two splits: {first[1]} in '{first[0]}', {id_} in '{split}'; a patient's "
                "studies must all be in one split (train on one study, test on another of the same patient "
                "would overstate every score)"))
    not_listed = [id_ for id_ in ids if assignment[id_] is None]
    counts = Counter(split for split in assignment.values() if split is not None)
    info = {
        "split_file": Path(str(source)).name,
        "reports": {name: counts.get(name, 0) for name in SPLITS},
        "patients": patients_per_split(assignment, groups),
        "not_in_official_split": len(not_listed),
        "not_in_official_split_examples": not_listed[:_EXAMPLES],
    }
    return assignment, info


def patients_per_split(assignment: Mapping[str, str | None], groups: Mapping[str, str]) -> dict[str, int]:
    return {name: len({groups.get(id_, id_) for id_, split in assignment.items() if split == name})
            for name in SPLITS}
