"""evaluate: run the selected checkpoint once over the test split; log best/test_* (with their
95 % intervals) to the run."""

import argparse
import tempfile
from pathlib import Path

from retino.config import load_config
from retino.data.splits import read_split
from retino.errors import exit_on_error, exit_process
from retino.tracking.store import check_server, project_root

OUTPUTS = ("metrics.json", "predictions.csv", "confusion.json")


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("prepared"))
    parser.add_argument("--preprocessed", type=Path, default=Path("preprocessed"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("reports/eval"))
    args = parser.parse_args()
    cfg = load_config(args.params)
    check_server(project_root())
    # torch and mlflow take seconds to import: after the checks above
    from retino.atomic import write_atomic
    from retino.evaluation.bootstrap import resampled
    from retino.evaluation.evaluate import cached_test, evaluate_test
    from retino.evaluation.predict import load_predictor, write_gallery
    from retino.tracking.names import test_metrics
    from retino.tracking.runs import DATA_DVC, data_version, open_run, read_run_file

    run_id = read_run_file(args.models / "run.json")
    predictor = load_predictor(str(args.models / "best.pt"), cfg.train.device)
    cached = cached_test(predictor, args.prepared, args.preprocessed)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        metrics, table = evaluate_test(predictor, cached, staged, cfg.eval.bootstrap, cfg.seed)
        intervals = ""  # what the bootstrap resampled, for the run and the terminal
        if cfg.eval.bootstrap:
            what = resampled(metrics["bootstrap_unit"], metrics["bootstrap_units"])
            intervals = f"95 % bootstrap: {cfg.eval.bootstrap} resamples of {what}"
        with open_run(project_root(), run_id) as run:
            run.log_metrics(test_metrics(metrics))
            if intervals:
                run.set_tags({"test_intervals": intervals})
            run.log_dataset("test", read_split(args.prepared, "test"), data_version(DATA_DVC))
            for name in OUTPUTS:
                run.log_artifact(staged / name, "eval")
            # Grad-CAMs of the most confident right and wrong test image per grade (<= 10
            # images): files named after the photograph, and images keyed by grade and verdict,
            # which the chart view's image grid lines up across runs
            for path in write_gallery(predictor, table, cached.images, staged / "gallery"):
                run.log_artifact(path, "eval/gallery")
                grade, verdict = path.stem.split("_")[:2]  # grade2_wrong_<image>
                run.log_image(path, f"gradcam/{grade}_{verdict}")
        # Logged: only now replace the previous results, which DVC keeps (persist: true), so a
        # failed evaluation leaves them as they were.
        for name in OUTPUTS:
            write_atomic(args.out / name, (staged / name).read_bytes())
    print(f"test accuracy {metrics['accuracy']:.4f}{_bounds(metrics, 'accuracy')} (always "
          f"grade 0: {metrics['majority_accuracy']:.4f}), QWK {metrics['qwk']:.4f}"
          f"{_bounds(metrics, 'qwk')}")  # fmt: skip
    if intervals:
        print(f"[{intervals}]")


def _bounds(metrics: dict, key: str) -> str:
    """' [0.6912, 0.8410]', or nothing without intervals."""
    if f"{key}_lo" not in metrics:
        return ""
    return f" [{metrics[f'{key}_lo']:.4f}, {metrics[f'{key}_hi']:.4f}]"


if __name__ == "__main__":
    exit_process(main())
