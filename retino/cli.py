"""The `retino` console script.

Each sub-command imports what it needs inside its handler: `import torchvision` and
`import mlflow` cost seconds each, and `retino validate` should not pay for them.
"""

import argparse
import sys
from pathlib import Path

from retino.errors import RetinoError, exit_on_error


def _synth(args: argparse.Namespace) -> int:
    from retino.synth import synthesize

    try:
        counts = synthesize(args.out, args.train, args.test, args.size, args.seed, args.preview)
    except ValueError as err:
        raise RetinoError(str(err)) from None
    for split, grades in counts.items():
        print(f"{split}: {sum(grades)} images, grades 0-4: {grades}")
    print(f"wrote {args.out}" + (f" and {args.preview}" if args.preview else ""))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from retino.layout import validate

    report = validate(args.dir)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report.raise_if_invalid()
    print(report.summary())
    return 0


def _compare(args: argparse.Namespace) -> int:
    from retino.compare import compare
    from retino.tracking import project_root

    notes = compare(project_root(), args.out, args.experiment, args.runs)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out}/results.md, results.csv and figures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retino", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic fundus dataset in the lab layout")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--train", type=int, default=200, help="train images (default 200)")
    p.add_argument("--test", type=int, default=50, help="test images (default 50)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", type=Path, help="also write a PNG contact sheet, a row per grade")
    p.set_defaults(handler=_synth)

    p = sub.add_parser("validate", help="check a dataset in the lab layout and summarise it")
    p.add_argument("dir", type=Path, help="dataset root (holds train_img.csv ... and images/)")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("compare", help="the seed's results table and figures from MLflow runs")
    p.add_argument("--out", type=Path, required=True, help="folder for results.md/.csv and PNGs")
    p.add_argument("--experiment", default="retino", help="MLflow experiment (default retino)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="only these run ids or run names")
    p.set_defaults(handler=_compare)
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
