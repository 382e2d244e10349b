"""prepare: validate the dataset in data/, then write the train/val/test tables and stats."""

import argparse
import sys
from pathlib import Path

from retino.config import load_config
from retino.data.prepare import prepare
from retino.errors import exit_on_error, exit_process


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("prepared"))
    args = parser.parse_args()
    report = prepare(args.data, args.out, load_config(args.params))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())


if __name__ == "__main__":
    exit_process(main())
