"""train: fit the configured ResNet on the preprocessed splits, select on validation, log to
MLflow."""

import argparse
import os
import sys
from pathlib import Path

from retino.config import load_config
from retino.errors import exit_on_error, exit_process
from retino.tracking.store import check_server, project_root


@exit_on_error
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("prepared"))
    parser.add_argument("--preprocessed", type=Path, default=Path("preprocessed"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--reports", type=Path, default=Path("reports/train"))
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    args = parser.parse_args()
    cfg = load_config(args.params)
    if os.environ.get("RANK", "0") == "0":  # the process that logs (or launches the one that will)
        check_server(project_root())
    # torch, torchvision and mlflow take seconds to import: after the checks above
    from retino.training.distributed import launch, needs_launch
    from retino.training.train import train

    if needs_launch(cfg.train):  # train.nproc / train.nnodes > 1: become a torchrun job
        return launch(cfg.train, [__file__, *sys.argv[1:]])
    train(cfg, args.prepared, args.preprocessed, args.models, args.reports, args.checkpoints)


if __name__ == "__main__":
    exit_process(main())
