"""Where the MLflow store is, and talking to it safely.

Store rule: MLFLOW_TRACKING_URI when set (a tracking server); otherwise `sqlite:///<root>/mlflow.db`
with artifacts in `<root>/mlruns`, where root is the main workspace: DVC_ROOT (DVC sets it, also
for queued runs executing in .dvc/tmp/exps/tmpXXXX), else the git top level. Never a relative
path: a queued run's working copy is deleted afterwards.

`check_server` turns a tracking server that does not answer into one line, before a stage works.

Reads go through `Store.client`, an MlflowClient bound to the store's URI. Only `runs.open_run`
points MLflow's global ("fluent") state at the store, because `mlflow.pytorch.log_model` and
system metrics exist only for an active run.
"""

import contextlib
import fcntl
import functools
import http.client
import logging
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retino.errors import RetinoError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "retino"
# check_server: 3 tries of at most 4 s, 1 s apart, so a dead server is an error within ~15 s
PROBE_TRIES = 3
PROBE_TIMEOUT_S = 4.0


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
    def client(self) -> "MlflowClient":
        from mlflow.tracking import MlflowClient  # seconds to import: check_server goes first

        return MlflowClient(self.uri)

    def experiment_id(self, name: str) -> str | None:
        found = retry(lambda: self.client.get_experiment_by_name(name))
        return found.experiment_id if found else None


def check_server(
    root: Path, tries: int = PROBE_TRIES, timeout: float = PROBE_TIMEOUT_S, uri: str | None = None
) -> None:
    """A tracking server that does not answer is a one-line error, before a stage does any work.

    MLflow's client retries a dead server for about four minutes and then prints a traceback.
    This asks `<uri>/health` instead: any HTTP answer below 500 will do (a proxy may want a login,
    which MLflow's own calls then report); a refused connection, a timeout, a port that does not
    speak HTTP or a 5xx answer is tried again, `tries` times in all. A local store needs no check.
    `uri`: another store than the project's (a sweep's, as recorded).
    """
    uri = uri or tracking_uri(root)
    if not is_server_uri(uri):
        return
    problem = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)
        try:
            with urllib.request.urlopen(
                uri.rstrip("/") + "/health", timeout=timeout, context=_tls_context()
            ):
                return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return
            problem = f"answers HTTP {err.code}"
        except (OSError, http.client.HTTPException) as err:
            problem = _why(err, timeout)
    raise RetinoError(
        f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI): {problem}, {tries} tries; "
        "start the server, correct the variable, or unset it to log to the local store"
    )


def _why(err: BaseException, timeout: float) -> str:
    """What a failed request says about the server, in a few words."""
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        err = err.reason  # connecting failed: the socket's own error
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, socket.gaierror):
        return "host name not found"
    if isinstance(err, http.client.HTTPException | ConnectionResetError):
        return "the port does not speak HTTP"
    if isinstance(err, ssl.SSLError):
        return f"TLS failed ({err.reason or err})"
    return str(getattr(err, "reason", None) or err)


def _tls_context() -> ssl.SSLContext:
    """TLS as MLflow's client does it, from the same variables."""
    context = ssl.create_default_context(
        cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
    )
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


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
    from mlflow.exceptions import MlflowException

    store = Store(Path(root).resolve(), tracking_uri(root))
    _quiet()
    with _creation_lock(store):  # a new SQLite file is migrated on first use: inside the lock
        experiment_id = store.experiment_id(experiment)
        if experiment_id is None:
            # A server stores artifacts itself (--serve-artifacts); a local store in <root>/mlruns,
            # fixed here: an experiment first created from a temp copy would freeze its path there
            location = None if is_server_uri(store.uri) else (store.root / "mlruns").as_uri()
            try:
                experiment_id = retry(
                    lambda: store.client.create_experiment(experiment, artifact_location=location)
                )
            except MlflowException as err:
                # on a server, tasks starting together (a sweep) race to create it: one wins
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = store.experiment_id(experiment)
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
