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
    from retino.synth.checks import parse_frame

    frame = parse_frame(args.frame) if args.frame is not None else None
    counts = synthesize(args.out, args.train, args.test, args.size, args.seed, args.preview,
                        frame=frame, layout=args.layout)  # fmt: skip
    for split, grades in counts.items():
        print(f"{split}: {sum(grades)} images, grades 0-4: {grades}")
    print(f"wrote {args.out}" + (f" and {args.preview}" if args.preview else ""))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from retino.data.validation import DEFAULT_MAX_PIXELS, cpu_workers, validate

    limit = args.max_pixels or DEFAULT_MAX_PIXELS
    report = validate(args.dir, limit, decode=True, workers=cpu_workers(args.workers))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report.raise_if_invalid()
    print(report.summary())
    return 0


def _compare(args: argparse.Namespace) -> int:
    from retino.evaluation.compare import compare
    from retino.tracking.store import project_root

    result = compare(project_root(), args.out, args.experiment, args.runs, args.resamples)
    for note in result.notes:
        print(f"note: {note}")
    print("\n".join(result.lines))
    print(f"wrote {args.out}/results.md, results.csv, pairs.csv and figures (forest.png); "
          f"logged to MLflow: {result.logged}")  # fmt: skip
    return 0


def _ui(args: argparse.Namespace) -> int:
    from retino.tracking.server import serve

    return serve(args.port)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def _predict(args: argparse.Namespace) -> int:
    from retino.atomic import check_writable, write_atomic
    from retino.evaluation.predict import (
        expand_inputs,
        load_predictor,
        predict_images,
        write_prediction_cams,
    )

    paths = expand_inputs(args.images)
    # where the results go, checked before a single image is graded
    if args.out:
        check_writable(args.out)
    if args.cam:
        check_writable(args.cam, folder=True)
    predictor = load_predictor(args.model, args.device)
    table, failed = predict_images(predictor, paths, args.batch_size)
    for path, error in failed:
        print(f"warning: {path}: unreadable, skipped ({error})", file=sys.stderr)
    if table.empty:
        raise RetinoError(f"none of the {len(paths)} images could be read")
    if args.cam:
        table["cam"] = write_prediction_cams(predictor, table, args.cam, args.batch_size)
    if args.out:
        write_atomic(args.out, table.to_csv(index=False))
    else:
        table.to_csv(sys.stdout, index=False)
    referable = (table.referable == "yes").sum()
    print(f"graded {len(table)} images with {predictor.origin}: {referable} referable (grade >= 2)"
          + (f", {len(failed)} unreadable skipped" if failed else ""), file=sys.stderr)  # fmt: skip
    return 0


def _explain(args: argparse.Namespace) -> int:
    from retino.evaluation.evaluate import explain

    files = explain(
        args.model, args.prepared, args.preprocessed, args.out, args.per_grade, args.device
    )
    print(f"wrote {len(files)} Grad-CAM images of test photographs to {args.out}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from retino.tracking.registry import register_model
    from retino.tracking.store import existing_store, project_root

    version = register_model(existing_store(project_root()), args.run, args.name, args.alias)
    alias = f", alias models:/{args.name}@{args.alias}" if args.alias else ""
    print(f"registered models:/{args.name}/{version}{alias}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from retino.sweep import sweep
    from retino.tracking.store import project_root

    if args.status:
        record, rows = sweep.status(project_root(), args.status)
        print(f"job {args.status}: {len(rows)} cells of commit {record['commit'][:12]}, "
              f"runs at {record['tracking_uri']}")  # fmt: skip
        table = [("cell", "slurm", "mlflow", "run", "pushed")] + [
            (r.cell, r.slurm, r.mlflow, r.run_id, "yes" if r.pushed else "no") for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            print("  ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[4]]))
        return 0
    plan = sweep.plan(project_root(), args.params, args.gpus_per_job, args.partition,
                      args.cpus_per_job, args.time, args.git_remote, args.workdir)  # fmt: skip
    repo, skipped = plan.repo, len(plan.cells) - len(plan.todo)
    where = repo.short + (f" ({repo.branch})" if repo.branch else "")
    summary = (f"sweep of {len(plan.cells)} cells at {where}: {len(plan.todo)} to run"
               + (f", {skipped} already pushed to {repo.git_url}" if skipped else ""))  # fmt: skip
    if args.dry_run:
        print(plan.script, end="")
        print(f"{summary}; --dry-run: nothing submitted", file=sys.stderr)
        return 0
    print(summary)
    if not plan.todo:
        print("nothing to submit")
        return 0
    job = sweep.submit(plan)
    print(f"submitted job {job} (script: {plan.sweep_dir}/job-{job}.sbatch)\n"
          f"follow it: retino sweep --status {job}   (or squeue -j {job})\n"
          f"logs:      {plan.sweep_dir}/slurm-{job}_<index>.out\n"
          f"runs:      {plan.tracking_uri}")  # fmt: skip
    return 0


def _bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.cli import main as bench
    except ImportError:
        raise RetinoError(
            "retino bench needs the benchmarks/ folder of a source checkout"
        ) from None
    return bench(args.argv)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retino", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic fundus dataset (lab, Kaggle or APTOS)")
    p.add_argument("out", type=Path, help="output folder, new or empty")
    p.add_argument("--train", type=int, default=200, help="train images (default 200)")
    p.add_argument("--test", type=int, default=50, help="test images (default 50)")
    p.add_argument(
        "--size",
        type=int,
        metavar="PX",
        help="image side, 32-4096 (default 256); with --frame, the side of the square render "
        "that is scaled into the frame (default: the frame height, at most 1024)",
    )
    p.add_argument(
        "--frame",
        metavar="WxH",
        help="camera-sized photographs, e.g. 3888x2592: a retina disc about as tall as the "
        "frame, off-centre on a black frame of sensor noise",
    )
    p.add_argument(
        "--layout",
        default="lab",
        metavar="{lab,kaggle,aptos}",
        help="lab (default): train_img.csv ... and images/; kaggle: trainLabels.csv, "
        "testLabels.csv, train/ and test/; aptos: train.csv and train_images/*.png",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preview",
        type=Path,
        help="also write a PNG contact sheet, a row per grade (tiles of --size px, at most 256 "
        "with --frame)",
    )
    p.set_defaults(handler=_synth)

    p = sub.add_parser("validate", help="check a dataset (lab, Kaggle or APTOS layout)")
    p.add_argument("dir", type=Path, help="dataset root")
    p.add_argument("--max-pixels", type=_positive,
                   help="refuse larger images (default 36000000)")  # fmt: skip
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (-1: one per core)")
    p.set_defaults(handler=_validate)

    p = sub.add_parser(
        "compare",
        help="which variant wins, and how sure: the lab report's table "
        "with 95 %% intervals, paired comparisons and figures, from MLflow",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for results.md/.csv and PNGs")
    p.add_argument("--experiment", default="retino", help="MLflow experiment (default retino)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="only these run ids or run names")
    p.add_argument(
        "--resamples",
        type=_positive,
        default=1000,
        help="bootstrap resamples of the test patients (default 1000)",
    )
    p.set_defaults(handler=_compare)

    p = sub.add_parser("ui", help="the MLflow UI on this project's runs, on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=_port, default=5000, help="default 5000")
    p.set_defaults(handler=_ui)

    model_help = "models/best.pt, runs:/<id>/model, models:/<name>@<alias> or a DVC experiment"
    p = sub.add_parser("predict", help="grade fundus photographs with a trained model")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR",
                   help="image files, or folders of .jpeg/.jpg/.png")  # fmt: skip
    p.add_argument("--model", required=True, metavar="SRC", help=model_help)
    p.add_argument("--out", type=Path, help="predictions CSV (default: standard output)")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write a Grad-CAM PNG per image")
    p.add_argument("--batch-size", type=_positive, help="default: the model's eval.batch_size")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("explain", help="Grad-CAMs of right and wrong test predictions per grade")
    p.add_argument("--model", default="models/best.pt", metavar="SRC", help=model_help)
    p.add_argument("--prepared", type=Path, default=Path("prepared"), help="default prepared")
    p.add_argument("--preprocessed", type=Path, default=Path("preprocessed"),
                   help="the preprocessed images (default preprocessed)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--per-grade", type=_positive, default=1,
                   help="images per grade and verdict (default 1)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.set_defaults(handler=_explain)

    p = sub.add_parser("register", help="register a run's model in the MLflow model registry")
    p.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run id (models/run.json)")
    p.add_argument("--name", required=True, help="registered model name, e.g. retino-dr")
    p.add_argument("--alias", help="point this alias (e.g. champion) at the new version")
    p.set_defaults(handler=_register)

    p = sub.add_parser("sweep", help="a grid of experiments as one Slurm job array; its status")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--slurm",
        action="store_true",
        help="submit the grid: an array task per cell, each in a copy of the current commit, "
        "pushing its experiment; needs MLFLOW_TRACKING_URI",
    )
    mode.add_argument("--status", metavar="JOB", help="cell, Slurm state and MLflow run of a sweep")
    p.add_argument("-S", "--set-param", dest="params", action="append", default=[],
                   metavar="KEY=V1,V2", help="as `dvc exp run --queue -S`: a comma list per key; "
                   "the grid is every combination")  # fmt: skip
    p.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    p.add_argument("--gpus-per-job", type=_count, metavar="N",
                   help="GPUs per cell (default: train.nproc's when > 1, else none)")  # fmt: skip
    p.add_argument("--cpus-per-job", type=_positive, metavar="N", help="CPU cores per cell")
    p.add_argument("--time", metavar="LIMIT", help="time limit per cell, e.g. 02:00:00")
    p.add_argument("--git-remote", default="origin",
                   help="where the experiments are pushed (default origin)")  # fmt: skip
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="the cells' copies and logs, on a filesystem the nodes share "
                   "(default .dvc/tmp/sweeps)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit nothing")
    p.set_defaults(handler=_sweep)

    # the benchmark lives outside the library (benchmarks/): its arguments are its own
    p = sub.add_parser("bench", add_help=False, help="time retino against the lab report's loop")
    p.add_argument(
        "argv", nargs=argparse.REMAINDER, help="input|train|intervals|scale ... (bench --help)"
    )
    p.set_defaults(handler=_bench)
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
