"""DVC stage `prepare`: data/interim → data/prepared (studies, image arrays, vocabulary, the manifest of
inputs left out) + metrics/data.json."""

import argparse
import json
from pathlib import Path

from cxrgen.data.prepare import length_histogram, length_stats, prepare, save_arrays
from cxrgen.files import write_json_atomic
from cxrgen.params import load_params
from cxrgen.stage import run_stage
from cxrgen.errors import BadInput
from cxrgen.tables import read_parquet, write_dropped, write_parquet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--interim", default="data/interim")
    parser.add_argument("--extract-metrics", default="metrics/extract.json")
    parser.add_argument("--out", default="data/prepared")
    parser.add_argument("--metrics", default="metrics/data.json")
    parser.add_argument("--plot", default="metrics/report_length.json")
    args = parser.parse_args()
    params = load_params(args.params)
    interim, out = Path(args.interim), Path(args.out)
    extract_metrics = json.loads(Path(args.extract_metrics).read_text())

    if not (interim / "dropped.parquet").is_file():
        raise BadInput(interim / "dropped.parquet", "missing: run the extract stage again")
    extract_dropped = read_parquet(interim / "dropped.parquet").to_dict("records")
    result = prepare(read_parquet(interim / "reports.parquet"), read_parquet(interim / "images.parquet"),
                     args.raw, params, extract_metrics["skipped"], extract_dropped)
    write_parquet(result.studies, out / "studies.parquet")
    write_dropped(result.dropped, out / "dropped.parquet")
    save_arrays(result.arrays, out)
    result.vocab.save(out / "vocab.json")
    write_json_atomic(args.metrics, {
        "data_source": extract_metrics["data_source"],
        "layout": extract_metrics["layout"],
        "target": params["text"]["target"],
        "cleaning": params["text"]["scheme"],
        "split": result.split_info,
        "image_size": params["image"]["size"],
        "counts": result.counts.steps,
        "dropped": dict(sorted(result.counts.dropped.items())),
        "report_length_tokens": length_stats(result.studies),
        "vocabulary_size": len(result.vocab),
        "vocabulary_rare_words": result.vocab.rare_words,
    })
    write_json_atomic(args.plot, {"report_length": length_histogram(result.studies)})


if __name__ == "__main__":
    run_stage("prepare", main)
