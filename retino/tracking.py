"""Everything MLflow: where the store is, which run we log to, and how runs end.

The only module that imports mlflow. Store rule: MLFLOW_TRACKING_URI when set (a tracking server);
otherwise `sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlruns`, where root is the main
workspace: DVC_ROOT (DVC sets it, also for queued runs executing in .dvc/tmp/exps/tmpXXXX), else the
git top level. Never a relative path: a queued run's working copy is deleted afterwards.
"""

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from retino.errors import RetinoError

DEFAULT_EXPERIMENT = "retino"
# artifact downloads draw a tqdm bar per file, and a new store logs its schema set-up: noise
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def project_root(start: Path | None = None) -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    start = Path(start or Path.cwd())
    top = _git(start, "rev-parse", "--show-toplevel")
    return Path(top).resolve() if top else start.resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


class _Interrupts:
    """Ctrl-C / SIGTERM as KeyboardInterrupt, but never inside an MLflow call.

    An interrupt in the middle of a SQLite transaction leaves it open and the store locked, so
    the run could not even be marked KILLED. A signal during a call is held until it returns.
    """

    depth = 0  # MLflow calls in progress
    pending: int | None = None

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.depth:
            cls.pending = signum
        else:
            raise KeyboardInterrupt(f"signal {signum}")

    @classmethod
    @contextlib.contextmanager
    def deferred(cls) -> Iterator[None]:
        cls.depth += 1
        try:
            yield
        finally:
            cls.depth -= 1
            if not cls.depth and cls.pending is not None:
                signum, cls.pending = cls.pending, None
                raise KeyboardInterrupt(f"signal {signum}")


def _retry(call: Callable[[], Any], attempts: int = 8) -> Any:
    """One MLflow call, uninterrupted; SQLite under parallel runs can raise "database is
    locked": back off and try again."""
    with _Interrupts.deferred():
        for attempt in range(attempts):
            try:
                return call()
            except Exception as err:  # MLflow wraps SQLAlchemy's OperationalError in several types
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise
                time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def init_store(root: Path, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store and return the experiment id, creating both if needed.

    Creation happens under a file lock: two fresh processes migrating one SQLite file at once
    fail, and an experiment first created from a temp copy would freeze its artifact path there.
    """
    root = Path(root).resolve()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with _store_lock(root, uri):
        client = MlflowClient(uri)
        found = _retry(lambda: client.get_experiment_by_name(experiment))
        if found is not None:
            return found.experiment_id
        # A server stores artifacts itself (--serve-artifacts); a local store under <root>/mlruns.
        location = None if is_server_uri(uri) else (root / "mlruns").as_uri()
        return _retry(lambda: client.create_experiment(experiment, artifact_location=location))


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _store_lock(root: Path, uri: str) -> Iterator[None]:
    """Serialise store creation between processes on this machine; a server does its own."""
    if is_server_uri(uri):
        yield
        return
    lock_dir = root / "mlruns"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_tags(root: Path, cfg_flat: dict[str, Any]) -> dict[str, str]:
    """Provenance: code version, DVC experiment, data version, model."""
    tags = {
        "git_commit": _git(Path.cwd(), "rev-parse", "HEAD") or "unknown",
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
    sha = (_git(Path.cwd(), "rev-parse", "--short", "HEAD") or "nogit")[:7]
    return f"{cfg_flat['arch']}-{kind}-{sha}"


def data_version(dvc_file: Path) -> str:
    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return ""


class Run:
    """One MLflow run, logged to with retries. Use `start_run` / `resume_run` to get one."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        _retry(lambda: mlflow.log_params({k: str(v) for k, v in params.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        _retry(lambda: mlflow.log_metrics(metrics, step=step))

    def log_history(self, rows: list[dict[str, float]]) -> None:
        """Per-epoch rows (with an `epoch` key) as metrics at step=epoch, skipping logged epochs."""
        client = MlflowClient()
        logged = {
            m.step for m in _retry(lambda: client.get_metric_history(self.run_id, "val_loss"))
        }
        for row in rows:
            if row["epoch"] not in logged:
                metrics = {k: v for k, v in row.items() if k != "epoch"}
                self.log_metrics(metrics, step=int(row["epoch"]))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: mlflow.log_artifact(str(path), artifact_path))

    def log_model(self, model: Any, input_example: Any) -> None:
        import mlflow.pytorch  # 10 s import: only the train stage pays for it
        import torch
        import torchvision

        requirements = [f"torch=={torch.__version__.split('+')[0]}",
                        f"torchvision=={torchvision.__version__.split('+')[0]}"]  # fmt: skip
        _retry(
            lambda: mlflow.pytorch.log_model(
                model, name="model", input_example=input_example, pip_requirements=requirements
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
    experiment_id = init_store(root, experiment)
    previous = {sig: signal.signal(sig, _Interrupts.handler) for sig in INTERRUPTS}
    try:
        try:
            active = _retry(
                lambda: mlflow.start_run(
                    run_id=run_id, experiment_id=None if run_id else experiment_id,
                    run_name=name, tags=tags,
                )
            )  # fmt: skip
        except MlflowException as err:
            raise RetinoError(f"MLflow run {run_id}: {err.message.splitlines()[0]}") from None
        status = "FINISHED"
        try:
            yield Run(active.info.run_id)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            _retry(lambda: mlflow.end_run(status=status))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_run_file(path: Path, run_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id}) + "\n")


def read_run_file(path: Path) -> str:
    try:
        return json.loads(Path(path).read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        raise RetinoError(f"{path}: no MLflow run id; run the train stage first") from None


def _git(cwd: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@dataclass(frozen=True)
class RunRecord:
    """What reports need of a logged run, without MLflow types."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]


def list_runs(
    root: Path, experiment: str = DEFAULT_EXPERIMENT, run_ids: list[str] | None = None
) -> list[RunRecord]:
    """Runs of `experiment` (or just `run_ids`, given as ids or run names), oldest first."""
    client, uri = _store_client(root)
    found = _retry(lambda: client.get_experiment_by_name(experiment))
    if found is None:
        raise RetinoError(f"no MLflow experiment {experiment!r} in {uri}; run `dvc repro` first")
    runs = _retry(lambda: client.search_runs([found.experiment_id], order_by=["start_time ASC"]))
    records = [
        RunRecord(r.info.run_id, r.info.run_name, r.info.status, r.data.params, r.data.metrics)
        for r in runs
    ]
    if run_ids:
        wanted = set(run_ids)
        records = [r for r in records if r.run_id in wanted or r.name in wanted]
        missing = wanted - {r.run_id for r in records} - {r.name for r in records}
        if missing:
            raise RetinoError(f"run {sorted(missing)[0]!r} not found in experiment {experiment!r}")
    return records


def metric_history(root: Path, run_id: str, key: str) -> dict[int, float]:
    """step -> value of a per-epoch metric (the last value logged at each step)."""
    client = MlflowClient(tracking_uri(root))
    return {m.step: m.value for m in _retry(lambda: client.get_metric_history(run_id, key))}


def read_artifact(root: Path, run_id: str, path: str) -> str | None:
    """Text of a run's artifact, or None when the run has no such artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return download_artifact(root, run_id, path, Path(tmp)).read_text()
        except RetinoError:
            return None


# --- model sources and the registry (retino predict / register) ---


def _store_client(root: Path) -> tuple[MlflowClient, str]:
    """A client on the project's store, refusing to create an empty SQLite file on a typo."""
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RetinoError(f"no MLflow store at {uri}; run `dvc repro` first")
    mlflow.set_tracking_uri(uri)  # mlflow.register_model and downloads use the global URI
    return MlflowClient(uri), uri


def resolve_run(root: Path, source: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The run id behind `runs:/<id>/model`, `models:/<name>/<version>`, `models:/<name>@<alias>`
    or a run name / DVC experiment name (the latest finished run carrying it)."""
    client, uri = _store_client(root)
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/")[0]
        try:
            return _retry(lambda: client.get_run(run_id)).info.run_id
        except MlflowException:
            raise RetinoError(f"{source}: no run {run_id!r} in {uri}") from None
    if source.startswith("models:/"):
        version = _model_version(client, source)
        if not version.run_id:
            raise RetinoError(f"{source}: not registered from a run; use `retino register`")
        return version.run_id
    found = _retry(lambda: client.get_experiment_by_name(experiment))
    runs = []
    if found is not None and "'" not in source:  # a quote cannot be in a name we logged
        for key in ("attributes.run_name", "tags.dvc_exp_name"):
            runs += _retry(
                lambda key=key: client.search_runs(
                    [found.experiment_id], f"{key} = '{source}' AND attributes.status = 'FINISHED'"
                )
            )
    if not runs:
        raise RetinoError(
            f"{source}: no checkpoint file, MLflow URI or finished run / DVC experiment of that "
            f"name in {uri}; give models/best.pt, runs:/<id>/model or models:/<name>@<alias>"
        )
    return max(runs, key=lambda r: r.info.start_time).info.run_id


def _model_version(client: MlflowClient, uri: str) -> Any:
    name, alias = uri.removeprefix("models:/").partition("@")[::2]
    try:
        if alias:
            return _retry(lambda: client.get_model_version_by_alias(name, alias))
        name, _, version = name.rpartition("/")
        if name and version.isdigit():
            return _retry(lambda: client.get_model_version(name, version))
    except MlflowException as err:
        raise RetinoError(f"{uri}: {err.message.splitlines()[0]}") from None
    raise RetinoError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")


def download_artifact(root: Path, run_id: str, path: str, dst: Path) -> Path:
    """A run's artifact `path`, copied under `dst`."""
    _, uri = _store_client(root)
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri
        )
    except (MlflowException, OSError):
        raise RetinoError(f"MLflow run {run_id}: no artifact {path}; was it trained?") from None
    return Path(local)


def register_model(root: Path, run_id: str, name: str, alias: str | None = None) -> str:
    """Register the model `Run.log_model` logged in `run_id` as a new version of `name`; point
    `alias` at it. Returns the version."""
    client, uri = _store_client(root)
    try:
        run = _retry(lambda: client.get_run(run_id))
    except MlflowException:
        raise RetinoError(f"MLflow run {run_id!r} not found in {uri}") from None
    logged = _retry(
        lambda: client.search_logged_models(
            [run.info.experiment_id], f"source_run_id = '{run_id}' AND name = 'model'"
        )
    )
    if not logged:
        raise RetinoError(f"MLflow run {run_id}: no logged model; only a finished train has one")
    try:
        # models:/<model id> is what runs:/<id>/model resolves to in MLflow 3, minus a warning
        version = _retry(lambda: mlflow.register_model(f"models:/{logged[0].model_id}", name))
        if alias:
            _retry(lambda: client.set_registered_model_alias(name, alias, version.version))
    except MlflowException as err:
        raise RetinoError(f"registering {name!r}: {err.message.splitlines()[0]}") from None
    return str(version.version)
