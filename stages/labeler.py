"""DVC stage `labeler`: the CheXpert-style labeler checked against IU MeSH → metrics/labeler.json.

Two checks: the collection the pipeline extracted (data/interim/reports.parquet; MeSH is empty for
the R2Gen layout, so every report is then "excluded"), and the 63 real reports of the shared
sample (params `labeler.sample_dir`), which stay the same whatever the data source.
"""

import argparse
import json
from pathlib import Path

from cxrgen.data.labeler import LABELER_VERSION, agreement_with_mesh
from cxrgen.errors import BadInput
from cxrgen.files import write_json_atomic
from cxrgen.params import check_keys, load_params
from cxrgen.stage import run_stage
from cxrgen.tables import read_parquet

DEFAULT_SAMPLE_DIR = "../shared/iu_xray_sample"
TEXT_COLUMNS = ("findings", "impression")


def _agreement(reports) -> dict:
    result = agreement_with_mesh(reports, TEXT_COLUMNS)
    lenient = agreement_with_mesh(reports, TEXT_COLUMNS, uncertain_as_positive=True)
    result["with_uncertain_as_positive"] = {k: lenient[k] for k in ("micro", "macro", "micro_findings")}
    return result


def _sample_reports(sample_dir: Path):
    import pandas as pd

    from cxrgen.data.extract import REPORT_COLUMNS, parse_report_xml

    rows = []
    for path in sorted((sample_dir / "ecgen-radiology").glob("*.xml")):
        try:
            rows.append(parse_report_xml(path.read_bytes(), path.name))
        except ValueError as exc:
            raise BadInput(path, str(exc)) from None
    if not rows:
        raise BadInput(sample_dir, "no ecgen-radiology/*.xml reports in the sample folder")
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", default="data/interim/reports.parquet")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--extract-metrics", default="metrics/extract.json")
    parser.add_argument("--out", default="metrics/labeler.json")
    args = parser.parse_args()
    params = check_keys(load_params(args.params).get("labeler"), ("sample_dir",), "labeler", args.params)

    reports_path = Path(args.reports)
    if not reports_path.is_file():
        raise BadInput(reports_path, "missing: run the extract stage first")
    data_source = None
    extract_metrics = Path(args.extract_metrics)
    if extract_metrics.is_file():
        try:
            data_source = json.loads(extract_metrics.read_text()).get("data_source")
        except ValueError as exc:
            raise BadInput(extract_metrics, f"not valid JSON ({exc})") from None

    out = {"labeler": LABELER_VERSION,
           "collection": {"data_source": data_source, **_agreement(read_parquet(reports_path))}}
    sample_dir = Path(params.get("sample_dir") or DEFAULT_SAMPLE_DIR)
    if (sample_dir / "ecgen-radiology").is_dir():
        out["shared_sample"] = {"path": str(sample_dir), **_agreement(_sample_reports(sample_dir))}
    else:
        out["shared_sample"] = None
        out["shared_sample_missing"] = f"{sample_dir}: no ecgen-radiology folder (the real sample is not here)"
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    run_stage("labeler", main)
