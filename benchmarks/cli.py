"""`retino bench ...` / `python -m benchmarks ...`: runs from the source tree without MLflow or DVC
(`PYTHONPATH=. python -m benchmarks train ...` on a machine that has only torch)."""

import argparse
from pathlib import Path

from retino.errors import exit_on_error


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retino bench", description="time retino's fast path against the lab report's loop"
    )
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = what.add_parser("input", help="loader throughput: decode, batch, flip, normalise")
    q.add_argument("--data", type=Path, required=True, help="dataset root in the lab layout")
    q.add_argument("--size", type=_positive, default=512, help="image side (default 512)")
    q.add_argument("--batch-size", type=_positive, default=16, help="default 16")
    q.add_argument("--batches", type=_positive, default=20, help="timed per path (default 20)")
    q = what.add_parser("train", help="train steps: loading, forward, backward, optimizer step")
    q.add_argument("--data", type=Path, required=True, help="dataset root in the lab layout")
    q.add_argument("--arch", required=True, help="resnet18, resnet34, resnet50 ...")
    q.add_argument("--size", type=_positive, required=True, help="image side in pixels")
    q.add_argument("--batch-size", type=_positive, default=32, help="default 32")
    q.add_argument("--batches", type=_positive, default=10, help="timed per path (default 10)")
    q.add_argument("--compile", action="store_true", help="retino's model via torch.compile")
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmarks.bench import bench_input, bench_train  # torch: after the arguments parse

    if args.what == "input":
        bench_input(args.data, args.size, args.batch_size, args.batches)
    else:
        bench_train(args.data, args.arch, args.size, args.batch_size, args.batches, args.compile)
    return 0
