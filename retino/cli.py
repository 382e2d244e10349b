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
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
