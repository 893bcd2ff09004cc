"""The `prepare` stage: extracted tables → what every model trains on.

For each report: the target text (params `text.target`), cleaned (`text.scheme`), a split
(`split.method`), two views (frontal first, see pairs.py) decoded to `image.size` squares. Outputs:
- studies.parquet: one row per kept study, in split then report-number order;
- images_<split>.npy: uint8 array (studies, 2, size, size), rows aligned with studies.parquet;
- vocab.json: built from the train split only;
- dropped.parquet: every input left out, named, with its reason (extract's rows, then prepare's).
Every input left out is counted with a named reason; too many bad inputs stop the stage.

MIMIC-CXR (layout "mimic"): the JPEGs are read where they are, under download.local.path (extract's
`member`), each checked against the size the download stage recorded (a file changed or gone since
is BadInput: run the download stage again), never through a link out of that folder. The split is
by patient (split.method random) or the collection's own (split.method official).
"""

from __future__ import annotations

import os
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrgen.data import mimic
from cxrgen.data.images import decode_jpeg, decode_png
from cxrgen.data.pairs import choose_views
from cxrgen.data.split import (
    SPLITS,
    patients_per_split,
    split_official,
    split_r2gen,
    split_random,
    split_random_grouped,
)
from cxrgen.data.text import clean, target_text, tokenize
from cxrgen.data.vocab import Vocab, build_vocab
from cxrgen.errors import BadInput, CxrgenError, Unusable
from cxrgen.files import atomic_path, read_json
from cxrgen.params import check_keys

# The settings prepare reads, by section; any other key there is a typo and an error.
SECTION_KEYS = {
    "text": ("target", "scheme"),
    "split": ("method", "annotation", "fractions", "seed"),
    "image": ("size",),
    "vocab": ("min_count", "max_len"),
    "prepare": ("max_bad_fraction",),
}
NAMED_IN_WARNINGS = 5  # reports left out for a reason that is common (no findings text): named in the manifest

STUDY_COLUMNS = [
    "report_id", "split", "text", "n_tokens", "first_image", "second_image", "single_view",
    "n_images", "mesh_major",
]


@dataclass
class Counts:
    """Counts at every step and every input left out, by reason (goes to metrics/data.json)."""

    steps: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    rows: list[dict] = field(default_factory=list)  # the manifest: one row per input left out

    def drop(self, reason: str, where: str, warn: bool = True, *, kind: str, id: str | None = None,
             file: str | None = None, detail: str | None = None) -> None:
        self.dropped[reason] += 1
        self.rows.append({"stage": "prepare", "kind": kind, "id": id, "file": file, "reason": reason,
                          "detail": detail})
        if warn:
            shown = f" ({detail})" if detail else ""
            print(f"prepare: warning: left out {where}: {reason}{shown}", file=sys.stderr)

    def summarise(self, reason: str) -> None:
        """One warning line for a reason whose inputs were not warned about one by one."""
        ids = [row["id"] for row in self.rows if row["reason"] == reason]
        if ids:
            more = f", ... ({len(ids) - NAMED_IN_WARNINGS} more)" if len(ids) > NAMED_IN_WARNINGS else ""
            print(f"prepare: warning: left out {len(ids)} reports: {reason}: "
                  f"{', '.join(ids[:NAMED_IN_WARNINGS])}{more}; all are named in dropped.parquet", file=sys.stderr)


@dataclass
class Prepared:
    studies: pd.DataFrame
    arrays: dict[str, np.ndarray]
    vocab: Vocab
    counts: Counts
    split_info: dict
    dropped: list[dict] = field(default_factory=list)  # extract's manifest rows, then prepare's


def _report_key(report_id: str) -> tuple[int, str]:
    digits = report_id.removeprefix("CXR")
    return (int(digits), report_id) if digits.isdigit() else (sys.maxsize, report_id)


def _read_in_place(root: Path, member: str, expected: int) -> bytes:
    """An image file under the user's folder, as the download stage found it; BadInput otherwise."""
    path = root / member
    real = path.resolve()
    if not real.is_relative_to(root):
        raise BadInput(path, f"is a link to {real}, outside the folder {root} (download.local.path): links out "
                             "of the folder are not followed")
    try:
        f = os.fdopen(os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")
    except FileNotFoundError:
        raise BadInput(path, "is gone since the download stage listed it: run `dvc repro --force download` "
                             "to list the folder again, then `dvc repro`") from None
    except OSError as exc:
        raise BadInput(path, f"cannot be read ({exc.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != expected:
            raise BadInput(path, f"is {size:,} bytes, but the download stage found {expected:,}: the folder changed "
                                 "since; run `dvc repro --force download` to list it again, then `dvc repro`")
        return f.read()


def _decode_in_place(root: Path, images: pd.DataFrame, size: int, counts: Counts) -> dict[str, np.ndarray]:
    """Decode images that stay in the user's folder (MIMIC-CXR's JPEGs), in path order."""
    decoded: dict[str, np.ndarray] = {}
    rows = sorted(zip(images["member"], images["image_id"], images["size"]))
    for member, image_id, expected in tqdm(rows, desc="decoding images in place", unit=" img", file=sys.stderr,
                                           mininterval=2):
        try:
            decoded[image_id] = decode_jpeg(_read_in_place(root, member, int(expected)), size)
        except Unusable as exc:
            counts.drop(f"image: {exc.reason}", member, kind="image", id=image_id, file=member, detail=exc.detail)
    return decoded


def _decode_images(raw_dir: Path, images: pd.DataFrame, size: int, counts: Counts,
                   local_path=None) -> dict[str, np.ndarray]:
    """Decode the listed images, one sequential pass per archive (a .tgz has no random access); those
    with no archive are read in place under download.local.path."""
    decoded: dict[str, np.ndarray] = {}
    in_place = images[images["archive"].isna()]
    if not in_place.empty:
        decoded.update(_decode_in_place(mimic.images_root(local_path), in_place, size, counts))
    for archive, group in images[images["archive"].notna()].groupby("archive", sort=True):
        by_member = dict(zip(group["member"], group["image_id"]))
        bar = tqdm(total=len(by_member), desc=f"decoding {archive}", unit=" img", file=sys.stderr,
                   mininterval=2)
        with tarfile.open(raw_dir / archive, "r:*") as tar:
            for member in tar:
                image_id = by_member.get(member.name)
                if image_id is None or not member.isfile():
                    continue
                try:
                    decoded[image_id] = decode_png(tar.extractfile(member).read(), size)
                except Unusable as exc:
                    counts.drop(f"image: {exc.reason}", f"{archive}:{member.name}", kind="image", id=image_id,
                                file=f"{archive}:{member.name}", detail=exc.detail)
                bar.update()
        bar.close()
    return decoded


def assign_splits(report_ids: list[str], split_params: dict, counts: Counts, groups: dict | None = None,
                  official: dict | None = None, official_source: str | None = None) -> tuple[dict, dict]:
    """groups: {report id: patient id} where the data names patients (the random split then keeps each
    patient's studies together); official: {report id: split or None} where the collection ships its
    split, read from `official_source` (named in errors)."""
    method = split_params.get("method", "random")
    if method == "random":
        fractions, seed = split_params.get("fractions"), split_params.get("seed", 0)
        if groups:
            assignment = split_random_grouped(report_ids, groups, fractions, seed)
            return assignment, {"method": "random", "seed": seed, "fractions": fractions, "by": "patient",
                                "patients": patients_per_split(assignment, groups)}
        assignment = split_random(report_ids, fractions, seed)
        return assignment, {"method": "random", "seed": seed, "fractions": fractions}
    if method == "official":
        if official is None:
            raise BadInput("params.yaml", "split.method official needs a collection that ships its own split "
                                          "(MIMIC-CXR's split table); this data has none: use random or r2gen")
        assignment, info = split_official(report_ids, official, groups or {}, official_source or "the split table")
        for report_id, split in assignment.items():
            if split is None:
                counts.drop("not in the official split", report_id, warn=False, kind="report", id=report_id)
        counts.summarise("not in the official split")
        return assignment, {"method": "official", **info}
    if method == "r2gen":
        annotation = split_params.get("annotation")
        if not annotation:
            raise BadInput("params.yaml", "split.method r2gen needs split.annotation (path to annotation.json)")
        assignment, info = split_r2gen(report_ids, annotation)
        for report_id, split in assignment.items():
            if split is None:
                counts.drop("not in the R2Gen split", report_id, warn=False, kind="report", id=report_id)
        counts.summarise("not in the R2Gen split")
        return assignment, {"method": "r2gen", **info}
    raise BadInput("params.yaml", f"split.method must be random, r2gen or official, not {method!r}")


def _split_file(raw_dir: Path, local_path) -> str:
    """The user's split table, as errors name it (download.local.path / the file source.json records)."""
    record = read_json(raw_dir / "source.json", "missing: run the download stage first")
    name = (record.get("from") or {}).get("split") or mimic.SPLIT_TABLE
    return str(Path(str(local_path)) / name) if local_path else name


def _split_problem(problem: str) -> tuple[str, str | None]:
    """extract's "reason (detail)" → (reason, detail)."""
    reason, _, detail = problem.partition(" (")
    return reason, detail[:-1] if detail.endswith(")") else (detail or None)


def prepare(reports: pd.DataFrame, images: pd.DataFrame, raw_dir: str | Path, params: dict,
            extract_skipped: dict[str, int] | None = None, extract_dropped: list[dict] | None = None) -> Prepared:
    """extract_skipped: extract's counts by reason; extract_dropped: its manifest rows (carried into ours)."""
    raw_dir = Path(raw_dir)
    for name, known in SECTION_KEYS.items():
        check_keys(params.get(name), known, name)
    text_p, split_p, image_p, vocab_p = (params[k] for k in ("text", "split", "image", "vocab"))
    counts = Counts()
    for reason, n in (extract_skipped or {}).items():
        counts.dropped[reason] += n
    counts.steps["reports"] = len(reports)
    counts.steps["images_listed"] = len(images)

    texts = {}
    for row in reports.itertuples(index=False):
        raw = target_text(row.findings, row.impression, text_p["target"])
        cleaned = clean(raw, text_p["scheme"]) if raw is not None else ""
        if not tokenize(cleaned) or set(tokenize(cleaned)) <= {"."}:
            counts.drop(f"no {text_p['target']} text", row.report_id, warn=False, kind="report",
                        id=row.report_id, file=row.source_file)
            continue
        texts[row.report_id] = cleaned
    counts.summarise(f"no {text_p['target']} text")
    counts.steps["reports_with_target_text"] = len(texts)

    usable = images[images["report_id"].isin(texts)]
    for row in usable[usable["problem"].notna()].itertuples(index=False):
        reason, detail = _split_problem(row.problem)
        where = f"{row.archive}:{row.member}" if isinstance(row.archive, str) else row.member
        counts.drop(f"image: {reason}", where, kind="image", id=row.image_id, file=where, detail=detail)
    usable = usable[usable["problem"].isna()]
    local_path = ((params.get("download") or {}).get("local") or {}).get("path")
    decoded = _decode_images(raw_dir, usable, int(image_p["size"]), counts, local_path)
    counts.steps["images_decoded"] = len(decoded)

    mesh = dict(zip(reports["report_id"], reports["mesh_major"]))
    listed_counts = images.groupby("report_id").size().to_dict()  # image files found per report
    pairs = {}
    # One pass over the images (a mask per report is quadratic: minutes at the full collection's size).
    available = usable[usable["image_id"].isin(decoded)]
    views_by_report = {report_id: list(zip(group["position"], group["image_id"], group["projection"]))
                       for report_id, group in available.groupby("report_id", sort=False)}
    for report_id in sorted(texts, key=_report_key):
        pair = choose_views(views_by_report.get(report_id, []))
        if pair is None:
            listed = listed_counts.get(report_id, 0)
            counts.drop("no usable image", report_id, warn=False, kind="report", id=report_id,
                        detail=f"{listed} image file(s) found, none usable" if listed else "no image file found")
            continue
        pairs[report_id] = pair
    counts.summarise("no usable image")
    counts.steps["studies_with_two_views"] = sum(not p.single_view for p in pairs.values())
    counts.steps["studies_single_view_used_twice"] = sum(p.single_view for p in pairs.values())
    counts.steps["studies_with_more_than_two_images"] = sum(p.n_usable > 2 for p in pairs.values())

    groups = official = official_source = None
    if "subject_id" in reports.columns:
        groups = {r: str(s) for r, s in zip(reports["report_id"], reports["subject_id"]) if isinstance(s, str)}
    if "official_split" in reports.columns:
        official = {r: (s if isinstance(s, str) else None)
                    for r, s in zip(reports["report_id"], reports["official_split"])}
        official_source = _split_file(raw_dir, local_path)
    assignment, split_info = assign_splits(sorted(pairs, key=_report_key), split_p, counts, groups, official,
                                           official_source)
    rows = []
    for report_id, pair in pairs.items():
        split = assignment.get(report_id)
        if split is None:
            continue
        rows.append({
            "report_id": report_id, "split": split, "text": texts[report_id],
            "n_tokens": len(tokenize(texts[report_id])), "first_image": pair.first,
            "second_image": pair.second, "single_view": pair.single_view, "n_images": pair.n_usable,
            "mesh_major": [str(term) for term in mesh.get(report_id, [])],
        })
    studies = pd.DataFrame(rows, columns=STUDY_COLUMNS)
    studies["split_order"] = studies["split"].map(SPLITS.index)
    studies["report_order"] = studies["report_id"].map(_report_key)
    studies = studies.sort_values(["split_order", "report_order"]).drop(
        columns=["split_order", "report_order"]).reset_index(drop=True)
    for split in SPLITS:
        counts.steps[f"studies_{split}"] = int((studies["split"] == split).sum())

    bad = sum(counts.dropped[r] for r in counts.dropped if r.startswith(("image:", "report:")))
    # Inputs = every report file and every image a report lists, including those extract left out.
    inputs = len(reports) + len(images) + sum((extract_skipped or {}).values())
    max_bad = float(params.get("prepare", {}).get("max_bad_fraction", 0.05))
    if inputs and bad / inputs > max_bad:
        summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.dropped.items()))
        raise CxrgenError(
            f"{bad} of {inputs} inputs are bad ({bad / inputs:.1%} > prepare.max_bad_fraction "
            f"{max_bad:.0%}): {summary}")
    if (studies["split"] == "train").sum() == 0:
        raise CxrgenError("no training study left after preparation; see the counts above")

    arrays = {}
    for split in SPLITS:
        part = studies[studies["split"] == split]
        size = int(image_p["size"])
        array = np.zeros((len(part), 2, size, size), dtype=np.uint8)
        for i, row in enumerate(part.itertuples(index=False)):
            array[i, 0], array[i, 1] = decoded[row.first_image], decoded[row.second_image]
        arrays[split] = array

    train_tokens = [tokenize(t) for t in studies.loc[studies["split"] == "train", "text"]]
    vocab = build_vocab(train_tokens, int(vocab_p["min_count"]), int(vocab_p["max_len"]))
    return Prepared(studies, arrays, vocab, counts, split_info, list(extract_dropped or []) + counts.rows)


def save_arrays(arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    for split, array in arrays.items():
        with atomic_path(out_dir / f"images_{split}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)


def length_stats(studies: pd.DataFrame) -> dict:
    lengths = studies["n_tokens"].to_numpy()
    if lengths.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(lengths, q)), 2) for q in (5, 25, 50, 75, 95, 99)} | {
        "max": int(lengths.max()), "mean": round(float(lengths.mean()), 2)}


def length_histogram(studies: pd.DataFrame, bin_width: int = 5) -> list[dict]:
    """Studies per report length bin and split, for a DVC bar plot."""
    rows = []
    if studies.empty:
        return rows
    top = int(studies["n_tokens"].max()) // bin_width + 1
    for split in SPLITS:
        lengths = studies.loc[studies["split"] == split, "n_tokens"]
        hist = np.bincount(lengths // bin_width, minlength=top)
        rows += [{"split": split, "tokens": f"{b * bin_width:03d}-{b * bin_width + bin_width - 1:03d}",
                  "studies": int(n)} for b, n in enumerate(hist)]
    return rows
