"""Writing a run: one MLflow run per pipeline execution, reopened by the later stages.

`open_run` starts (or reopens) the run and ends it FINISHED, FAILED on an error, KILLED on
Ctrl-C / SIGTERM; `Run` logs to it with retries, never interrupted half-way (see `_Deferred`).
"""

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from retino.errors import RetinoError
from retino.tracking.store import DEFAULT_EXPERIMENT, Store, git, open_store, retry
from retino.yamlfile import load_yaml

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
MODEL_NAME = "model"  # the logged model's name in the run


class _Deferred:
    """Ctrl-C / SIGTERM as KeyboardInterrupt, but never inside an MLflow call.

    An interrupt in the middle of a SQLite transaction leaves it open and the store locked, so
    the run could not even be marked KILLED. A signal during a call is held until it returns.
    """

    def __init__(self) -> None:
        self.depth = 0  # MLflow calls in progress
        self.pending: int | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = signum
        else:
            raise KeyboardInterrupt(f"signal {signum}")

    def call(self, fn: Callable[[], Any]) -> Any:
        self.depth += 1
        try:
            return retry(fn)
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise KeyboardInterrupt(f"signal {signum}")


class Run:
    """One MLflow run, logged to with retries. `open_run` makes one."""

    def __init__(self, store: Store, run_id: str, guard: _Deferred) -> None:
        self.store, self.run_id, self._guard = store, run_id, guard

    def log_params(self, params: dict[str, Any]) -> None:
        self._guard.call(lambda: mlflow.log_params({k: str(v) for k, v in params.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._guard.call(lambda: mlflow.log_metrics(metrics, step=step))

    def log_history(self, rows: list[dict[str, float]]) -> None:
        """Per-epoch rows (with an `epoch` key) as metrics at step=epoch, skipping logged epochs."""
        client = self.store.client
        logged = self._guard.call(lambda: client.get_metric_history(self.run_id, "val_loss"))
        steps = {m.step for m in logged}
        for row in rows:
            if row["epoch"] not in steps:
                metrics = {k: v for k, v in row.items() if k != "epoch"}
                self.log_metrics(metrics, step=int(row["epoch"]))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._guard.call(lambda: mlflow.log_artifact(str(path), artifact_path))

    def log_model(self, model: Any, input_example: Any) -> None:
        import mlflow.pytorch  # 10 s import: only the train stage pays for it
        import torch
        import torchvision

        requirements = [f"torch=={torch.__version__.split('+')[0]}",
                        f"torchvision=={torchvision.__version__.split('+')[0]}"]  # fmt: skip
        self._guard.call(
            lambda: mlflow.pytorch.log_model(
                model, name=MODEL_NAME, input_example=input_example, pip_requirements=requirements
            )
        )


@contextlib.contextmanager
def open_run(
    root: Path,
    run_id: str | None = None,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> Iterator[Run]:
    """Start a run (or reopen `run_id`) and end it FINISHED, FAILED on error, KILLED on interrupt.

    SIGTERM is turned into KeyboardInterrupt for the duration, so `kill` (and `dvc queue kill`)
    marks the run KILLED instead of leaving it RUNNING forever.
    """
    store, experiment_id = open_store(root, experiment)
    mlflow.set_tracking_uri(store.uri)  # the fluent API below logs to the active run
    guard = _Deferred()
    previous = {sig: signal.signal(sig, guard.handler) for sig in INTERRUPTS}
    try:
        try:
            active = guard.call(
                lambda: mlflow.start_run(
                    run_id=run_id, experiment_id=None if run_id else experiment_id,
                    run_name=name, tags=tags,
                )
            )  # fmt: skip
        except MlflowException as err:
            raise RetinoError(f"MLflow run {run_id}: {err.message.splitlines()[0]}") from None
        status = "FINISHED"
        try:
            yield Run(store, active.info.run_id, guard)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            guard.call(lambda: mlflow.end_run(status=status))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_tags(cfg_flat: dict[str, Any]) -> dict[str, str]:
    """Provenance: code version, DVC experiment, data version, model."""
    tags = {
        "git_commit": git(Path.cwd(), "rev-parse", "HEAD") or "unknown",
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "data_md5": data_version(Path.cwd() / "data.dvc"),
        "arch": str(cfg_flat["arch"]),
        "pretrained": str(cfg_flat["pretrained"]),
    }
    return {k: v for k, v in tags.items() if v}


def run_name(cfg_flat: dict[str, Any]) -> str:
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    kind = "scratch" if cfg_flat["pretrained"] is False else "pretrained"
    sha = (git(Path.cwd(), "rev-parse", "--short", "HEAD") or "nogit")[:7]
    return f"{cfg_flat['arch']}-{kind}-{sha}"


def data_version(dvc_file: Path) -> str:
    try:
        outs = load_yaml(dvc_file)["outs"]  # a duplicate key is an error, as in params.yaml
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError):
        return ""


def write_run_file(path: Path, run_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id}) + "\n")


def read_run_file(path: Path) -> str:
    try:
        return json.loads(Path(path).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        raise RetinoError(f"{path}: no MLflow run id; run the train stage first") from None
