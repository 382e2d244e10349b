"""Where the MLflow store is, and talking to it safely.

Store rule: MLFLOW_TRACKING_URI when set (a tracking server); otherwise `sqlite:///<root>/mlflow.db`
with artifacts in `<root>/mlruns`, where root is the main workspace: DVC_ROOT (DVC sets it, also
for queued runs executing in .dvc/tmp/exps/tmpXXXX), else the git top level. Never a relative
path: a queued run's working copy is deleted afterwards.

Reads go through `Store.client`, an MlflowClient bound to the store's URI. Only `runs.open_run`
points MLflow's global ("fluent") state at the store, because `mlflow.pytorch.log_model` and
system metrics exist only for an active run.
"""

import contextlib
import fcntl
import functools
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from retino.errors import RetinoError

DEFAULT_EXPERIMENT = "retino"


def project_root(start: Path | None = None) -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    start = Path(start or Path.cwd())
    top = git(start, "rev-parse", "--show-toplevel")
    return Path(top).resolve() if top else start.resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str

    @functools.cached_property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def experiment_id(self, name: str) -> str | None:
        found = retry(lambda: self.client.get_experiment_by_name(name))
        return found.experiment_id if found else None


@contextlib.contextmanager
def _creation_lock(store: Store) -> Iterator[None]:
    """Serialise store creation between processes on this machine: two fresh processes migrating
    one SQLite file at once fail. A server does its own locking."""
    if is_server_uri(store.uri):
        yield
        return
    lock_dir = store.root / "mlruns"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_store(root: Path, experiment: str = DEFAULT_EXPERIMENT) -> tuple[Store, str]:
    """The project's store and the experiment's id, both created if needed (for writing)."""
    store = Store(Path(root).resolve(), tracking_uri(root))
    _quiet()
    with _creation_lock(store):  # a new SQLite file is migrated on first use: inside the lock
        experiment_id = store.experiment_id(experiment)
        if experiment_id is None:
            # A server stores artifacts itself (--serve-artifacts); a local store in <root>/mlruns,
            # fixed here: an experiment first created from a temp copy would freeze its path there
            location = None if is_server_uri(store.uri) else (store.root / "mlruns").as_uri()
            experiment_id = retry(
                lambda: store.client.create_experiment(experiment, artifact_location=location)
            )
    return store, experiment_id


def existing_store(root: Path) -> Store:
    """The project's store for reading; a missing SQLite file is an error, not a new empty store."""
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RetinoError(f"no MLflow store at {uri}; run `dvc repro` first")
    _quiet()
    return Store(Path(root).resolve(), uri)


def retry(call: Callable[[], Any], attempts: int = 8) -> Any:
    """One MLflow call; SQLite under parallel runs can raise "database is locked": back off and
    try again."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:  # MLflow wraps SQLAlchemy's OperationalError in several types
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _quiet() -> None:
    # artifact downloads draw a tqdm bar per file, a new store logs its schema set-up, and the
    # system metrics monitor its start and stop: noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(logging.WARNING)


def git(cwd: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
