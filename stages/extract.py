"""DVC stage `extract`: data/raw → data/interim/{reports,images,dropped}.parquet + metrics/extract.json."""

import argparse
from pathlib import Path

from cxrgen.data.extract import extract, extract_settings, projection_accuracy, projection_truth
from cxrgen.files import write_json_atomic
from cxrgen.params import load_params
from cxrgen.stage import run_stage
from cxrgen.tables import write_dropped, write_parquet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/interim")
    parser.add_argument("--metrics", default="metrics/extract.json")
    args = parser.parse_args()
    settings = extract_settings(load_params(args.params), args.params)

    reports, images, skipped, record = extract(args.raw, settings)
    truth, truth_name = projection_truth(Path(args.raw), record, images, settings["projections_reference"])
    out = Path(args.out)
    write_parquet(reports, out / "reports.parquet")
    write_parquet(images, out / "images.parquet")
    write_dropped(skipped.items, out / "dropped.parquet")
    write_json_atomic(args.metrics, {
        "data_source": record.get("source"),
        "layout": record.get("layout"),
        "reports": len(reports),
        "images": len(images),
        "skipped": skipped.counts(),
        "projection_rule": ("metadata ViewPosition (PA/AP frontal, LATERAL/LL lateral, others not used)"
                            if record.get("layout") == "mimic" else
                            "order (first image of a study frontal, the others lateral)"),
        "projection_truth": truth_name,
        "projection_rule_accuracy": projection_accuracy(images, truth),
    })


if __name__ == "__main__":
    run_stage("extract", main)
