"""DVC stage `download`: the two IU X-ray archives into data/raw (see params.yaml `download`)."""

import argparse

from cxrgen.data.download import run_download
from cxrgen.params import load_params, section
from cxrgen.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/raw")
    args = parser.parse_args()
    run_download(section(load_params(args.params), "download", args.params), args.out)


if __name__ == "__main__":
    run_stage("download", main)
