"""evaluate: run the selected checkpoint once over the test split; log best/test_* to the run."""

import argparse
import sys
import tempfile
from pathlib import Path

from retino.config import load_config
from retino.data.splits import read_split
from retino.errors import exit_on_error
from retino.evaluation.evaluate import cached_test, evaluate_test
from retino.evaluation.predict import load_predictor, write_gallery
from retino.tracking.names import test_metrics
from retino.tracking.runs import DATA_DVC, data_version, open_run, read_run_file
from retino.tracking.store import project_root


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
    run_id = read_run_file(args.models / "run.json")
    predictor = load_predictor(str(args.models / "best.pt"), cfg.train.device)
    cached = cached_test(predictor, args.prepared, args.preprocessed)
    metrics, table = evaluate_test(predictor, cached, args.out)
    with open_run(project_root(), run_id) as run, tempfile.TemporaryDirectory() as tmp:
        run.log_metrics(test_metrics(metrics))
        run.log_dataset("test", read_split(args.prepared, "test"), data_version(DATA_DVC))
        for name in ("metrics.json", "predictions.csv", "confusion.json"):
            run.log_artifact(args.out / name, "eval")
        # Grad-CAMs of the most confident right and wrong test image per grade (<= 10 images):
        # files named after the photograph, and images keyed by grade and verdict, which the
        # chart view's image grid lines up across runs
        for path in write_gallery(predictor, table, cached.images, Path(tmp)):
            run.log_artifact(path, "eval/gallery")
            grade, verdict = path.stem.split("_")[:2]  # grade2_wrong_<image>
            run.log_image(path, f"gradcam/{grade}_{verdict}")
    print(f"test accuracy {metrics['accuracy']:.4f} (always grade 0: "
          f"{metrics['majority_accuracy']:.4f}), QWK {metrics['qwk']:.4f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
