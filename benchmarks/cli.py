"""`retino bench ...` / `python -m benchmarks ...`: runs from the source tree without MLflow or DVC
(`PYTHONPATH=. python -m benchmarks train ...` on a machine that has only torch)."""

import argparse
from pathlib import Path

from retino.errors import exit_on_error

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("validate", "prepare", "preprocess", "train", "evaluate", "compare")
FULL = {"sizes": (1000, 4000, 16000), "frames": 100, "runs": (1, 10, 50)}
QUICK = {"sizes": (250, 1000), "frames": 10, "runs": (1, 5)}


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retino bench",
        description="time retino's fast path against the lab report's loop, and how it scales",
    )
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = what.add_parser("input", help="loader throughput: decode, batch, flip, normalise")
    q.add_argument("--data", type=Path, required=True, help="dataset root in the lab layout")
    q.add_argument("--size", type=_positive, default=512, help="image side (default 512)")
    q.add_argument("--batch-size", type=_positive, default=16, help="default 16")
    q.add_argument("--batches", type=_positive, default=20, help="timed per path (default 20)")
    q = what.add_parser("preprocess", help="the preprocess stage: CPU processes vs nvJPEG")
    q.add_argument("--data", type=Path, required=True, help="dataset root (camera frames)")
    q.add_argument("--size", type=_positive, default=512, help="image side (default 512)")
    q.add_argument("--images", type=_positive, default=256, help="train images (default 256)")
    q = what.add_parser("train", help="train steps: loading, forward, backward, optimizer step")
    q.add_argument("--data", type=Path, required=True, help="dataset root in the lab layout")
    q.add_argument("--arch", required=True, help="resnet18, resnet34, resnet50 ...")
    q.add_argument("--size", type=_positive, required=True, help="image side in pixels")
    q.add_argument("--batch-size", type=_positive, default=32, help="default 32")
    q.add_argument("--batches", type=_positive, default=10, help="timed per path (default 10)")
    q.add_argument(
        "--compile",
        nargs="?",
        const="default",
        metavar="MODE",
        help="retino's model via torch.compile in MODE (default; reduce-overhead adds CUDA "
        "graphs; max-autotune, max-autotune-no-cudagraphs)",
    )
    q.add_argument(
        "--no-lab-report",
        dest="lab_report",
        action="store_false",
        help="leave out the lab report's loop (more batch sizes or modes in one session)",
    )
    q = what.add_parser(
        "intervals",
        help="the evaluate stage's bootstrap intervals against a loop over resamples",
    )
    q.add_argument(
        "--images",
        type=_positive,
        default=43_000,
        help="test images, two per patient (default 43000: EyePACS' Private split)",
    )
    q.add_argument("--resamples", type=_positive, default=1000, help="default 1000")
    q.add_argument("--loop", type=_positive, default=10,
                   help="resamples the plain loop is timed over (default 10)")  # fmt: skip
    q = what.add_parser(
        "scale",
        help="how every stage's time and memory grow with the data and the runs",
        description=f"Defaults: {_preset(FULL)} (8-12 minutes on 2 busy cores).",
    )
    q.add_argument(
        "--sizes",
        type=_positive,
        nargs="+",
        metavar="N",
        help=f"images per small dataset (default {' '.join(map(str, FULL['sizes']))})",
    )
    q.add_argument("--px", type=_positive, default=64, help="their side (default 64)")
    q.add_argument(
        "--frames",
        type=_count,
        metavar="N",
        help=f"camera-sized frames, 0 for none (default {FULL['frames']})",
    )
    q.add_argument("--frame", default="3888x2592", metavar="WxH", help="default 3888x2592")
    q.add_argument(
        "--runs",
        type=_positive,
        nargs="+",
        metavar="N",
        help=f"runs in the MLflow store (default {' '.join(map(str, FULL['runs']))})",
    )
    q.add_argument(
        "--train-px",
        type=_positive,
        default=32,
        help="image size of preprocess, train and evaluate (default 32)",
    )
    q.add_argument("--arch", default="resnet18", help="default resnet18")
    q.add_argument("--batch-size", type=_positive, default=64, help="default 64")
    q.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        metavar="STAGE",
        help=f"only these (and what they read from): {', '.join(STAGES)}",
    )
    q.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="rounds over the data stages, keeping each one's fastest: the least disturbed by "
        "other work on the machine (default 1)",
    )
    q.add_argument("--quick", action="store_true", help=f"other defaults: {_preset(QUICK)}")
    q = what.add_parser(
        "pipeline",
        help="a fresh project's whole `dvc exp run` against the lab report's loop",
        description="Generates a small lab-layout dataset, then times the lab report's loop and "
        "the whole `dvc exp run` of a fresh copy of the project on it, and where each stage's "
        "time goes (2-4 minutes per round on 2 CPU cores).",
    )
    q.add_argument("--train", type=_positive, default=600, help="train images (default 600)")
    q.add_argument("--test", type=_positive, default=200, help="test images (default 200)")
    q.add_argument(
        "--frame", default="1440x960", metavar="WxH",
        help="camera frames of this size (default 1440x960); --px replaces them",
    )  # fmt: skip
    q.add_argument("--px", type=_positive, help="square images of this side instead of frames")
    q.add_argument("--size", type=_positive, default=128, help="data.image_size (default 128)")
    q.add_argument("--epochs", type=_positive, default=5, help="train.epochs (default 5)")
    q.add_argument("--arch", default="resnet18", help="default resnet18")
    q.add_argument("--batch-size", type=_positive, default=32, help="default 32")
    q.add_argument("--seed", type=_count, default=1, help="of the generated data (default 1)")
    q.add_argument(
        "--source", type=Path, action="append", metavar="DIR",
        help="a project tree to copy (default: this checkout), e.g. `git archive main` unpacked; "
        "repeat it to time several in turn on the same data",
    )  # fmt: skip
    q.add_argument("--repeat", type=_positive, default=1, help="rounds, fastest kept (default 1)")
    q = what.add_parser(
        "serve",
        help="mlflow models serve under a bounded load, against retino predict",
        description="The logged model served on 127.0.0.1, camera-sized photographs POSTed "
        "concurrently; latency, images/s, errors and the server's memory, and retino predict "
        "on the same photographs in the same run.",
    )
    q.add_argument("--requests", type=_positive, default=200, help="timed requests (default 200)")
    q.add_argument("--per-request", type=_positive, default=1, metavar="N",
                   help="photographs in each request (default 1)")  # fmt: skip
    q.add_argument("--concurrency", type=_positive, default=8, help="at a time (default 8)")
    q.add_argument("--frame", default="3888x2592", metavar="WxH", help="default 3888x2592")
    q.add_argument("--distinct", type=_positive, default=50,
                   help="different photographs, sent in turn (default 50)")  # fmt: skip
    q.add_argument("--workers", type=_positive, default=2,
                   help="mlflow models serve --workers (default 2, the README's)")  # fmt: skip
    q.add_argument("--arch", default="resnet18", help="default resnet18")
    q.add_argument("--size", type=_positive, default=112,
                   help="the model's image size (default 112, the demo's)")  # fmt: skip
    q.add_argument("--rounds", type=_positive, default=2,
                   help="turns of retino predict and the load (default 2)")  # fmt: skip
    q.add_argument("--threads", type=_count, default=1,
                   help="the server's OMP_NUM_THREADS, torch's threads per request; 0: torch's "
                   "default (default 1)")  # fmt: skip
    q.add_argument("--near-limit", type=_count, default=2, metavar="N",
                   help="rounds of 4 requests just under the size limit (default 2)")  # fmt: skip
    return parser


def _preset(preset: dict) -> str:
    sizes, runs = (" ".join(map(str, preset[k])) for k in ("sizes", "runs"))
    return f"sizes {sizes}, {preset['frames']} frames, runs {runs}"


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.what == "scale":
        from benchmarks.scale import bench_scale  # neither torch nor mlflow: its children do

        preset = QUICK if args.quick else FULL
        bench_scale(
            list(args.sizes or preset["sizes"]), args.px,
            preset["frames"] if args.frames is None else args.frames, args.frame,
            list(args.runs or preset["runs"]), args.train_px, args.arch, args.batch_size,
            args.stages, args.repeat,
        )  # fmt: skip
        return 0
    if args.what == "pipeline":
        from benchmarks.pipeline import bench_pipeline  # no torch: its children import it
        from retino.synth.checks import parse_frame

        frame = None if args.px else parse_frame(args.frame)
        bench_pipeline(
            args.train, args.test, frame, args.px, args.size, args.epochs, args.arch,
            args.batch_size, args.seed, [p.resolve() for p in args.source or [ROOT]], args.repeat,
        )  # fmt: skip
        return 0
    if args.what == "intervals":
        from benchmarks.intervals import bench_intervals  # no torch

        bench_intervals(args.images, args.resamples, args.loop)
        return 0
    if args.what == "serve":
        from benchmarks.serve import bench_serve

        bench_serve(args.requests, args.per_request, args.concurrency, args.frame, args.distinct,
                    args.workers, args.arch, args.size, args.rounds, args.near_limit,
                    args.threads or None)  # fmt: skip
        return 0
    from benchmarks.bench import bench_input, bench_preprocess, bench_train  # torch: after

    if args.what == "input":
        bench_input(args.data, args.size, args.batch_size, args.batches)
    elif args.what == "preprocess":
        bench_preprocess(args.data, args.size, args.images)
    else:
        bench_train(args.data, args.arch, args.size, args.batch_size, args.batches, args.compile,
                    args.lab_report)  # fmt: skip
    return 0
