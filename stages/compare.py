"""DVC stage `compare`: metrics/details/<model>.json + metrics/details/floors.json → metrics/comparison.md."""

import argparse
from pathlib import Path

from cxrgen.evaluation.compare import comparison_markdown
from cxrgen.files import atomic_path, read_json
from cxrgen.stage import run_stage


def _read(path: Path) -> dict:
    return read_json(path, "not found (run the evaluate and floors stages)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["baseline", "attention"])
    parser.add_argument("--floors", default="metrics/details/floors.json")
    parser.add_argument("--details", default="metrics/details", help="folder of the models' detailed metrics")
    parser.add_argument("--out", default="metrics/comparison.md")
    args = parser.parse_args()
    models = {name: _read(Path(args.details) / f"{name}.json") for name in args.models}
    text = comparison_markdown(models, _read(Path(args.floors)))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(text.split("## In short", 1)[1].split("\n", 1)[1].strip(), flush=True)


if __name__ == "__main__":
    run_stage("compare", main)
