"""`retino ui`: the MLflow UI on this project's store, on 127.0.0.1 only, until Ctrl-C; and
`mlflow models serve` of a logged model, for the tests and `retino bench serve`.

Each server runs as a child in a session of its own, so stopping its process group stops its
workers too, and the terminal's Ctrl-C reaches only us: we stop the server and wait for it. Lean
flags bring `mlflow server` up in ~10-15 s on 2 cores instead of ~30: one worker, no
job-execution processes.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from retino.errors import RetinoError
from retino.tracking.names import BEST_TEST_ACCURACY, BEST_TEST_QWK

HOST = "127.0.0.1"  # loopback only: the UI has no authentication
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
# The runs table that answers the lab's question: which variant, how good is best.pt on test,
# best first. The UI restores a view saved in the experiment tag `mlflow.sharedViewState.<key>`
# when its URL carries viewStateShareKey=<key> (what its "Share" button does).
VIEW_KEY = "retino"
# best.pt's test QWK beside its 95 % interval: how far apart two rows must be to differ
_COLUMNS = [
    "params.`arch`", "params.`pretrained`", f"metrics.`{BEST_TEST_QWK}`",
    f"metrics.`{BEST_TEST_QWK}_lo`", f"metrics.`{BEST_TEST_QWK}_hi`",
    f"metrics.`{BEST_TEST_ACCURACY}`", "metrics.`best/val_qwk`", "metrics.`best/epoch`",
]  # fmt: skip
_SECTION = "retino-compare"
VIEW = {
    "orderByKey": f"metrics.`{BEST_TEST_QWK}`",
    "orderByAsc": False,
    "selectedColumns": [*_COLUMNS, "attributes.`Dataset`", "attributes.`Models`"],
    # the answer first, the full run names readable
    "columnOrder": ["attributes.`Run Name`", *_COLUMNS],
    "columnWidths": {"attributes.`Run Name`": 300, f"metrics.`{BEST_TEST_QWK}_lo`": 120,
                     f"metrics.`{BEST_TEST_QWK}_hi`": 120},
    # the chart view: a first section with the comparison, then the UI's own section per
    # metric prefix (best/, train/, val/, ...), which it adds to these
    "isAccordionReordered": True,  # keep this section first
    "compareRunSections": [{"uuid": _SECTION, "name": "Compare runs", "display": True,
                            "isReordered": False, "deleted": False, "isGenerated": False}],
    "compareRunCharts": [
        {"uuid": "retino-test-qwk", "type": "BAR", "metricSectionId": _SECTION,
         "metricKey": BEST_TEST_QWK,
         "runsCountToCompare": 10, "deleted": False, "isGenerated": False},
        {"uuid": "retino-qwk-curves", "type": "LINE", "metricSectionId": _SECTION,
         "metricKey": "val/qwk", "selectedMetricKeys": ["train/qwk", "val/qwk"],
         "xAxisKey": "step",
         "scaleType": "linear", "xAxisScaleType": "linear", "lineSmoothness": 0,
         "useGlobalXaxisKey": False, "useGlobalLineSmoothing": True,
         "runsCountToCompare": 10, "deleted": False, "isGenerated": False},
        {"uuid": "retino-confusion", "type": "IMAGE", "metricSectionId": _SECTION,
         "imageKeys": ["confusion"], "step": 0, "showRunParams": False, "runsCountToCompare": 10,
         "deleted": False, "isGenerated": False},
    ],
}  # fmt: skip


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen


def check_port(port: int) -> None:
    with socket.socket() as sock:
        # as uvicorn binds: a port in TIME_WAIT after the last server counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise RetinoError(f"port {port} on {HOST} is in use (another MLflow UI?); "
                              f"pick another with --port {port + 1}") from None  # fmt: skip


def server_command(backend_uri: str, artifacts: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts: Path,
    port: int,
    log: IO[Any] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[Server]:
    """Run `mlflow server` for the duration of the block; yield it once its page answers 200.

    `log` receives the server's output (default: ours). Artifacts of new experiments go to
    `artifacts`; runs logged to a local store keep their own absolute artifact paths.
    """
    check_port(port)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = server_command(backend_uri, artifacts, port)
    with _running("mlflow server", command, env, port, "/", log, timeout) as server:
        yield server


@contextlib.contextmanager
def model_server(
    model_uri: str,
    port: int,
    workers: int = 1,
    log: IO[Any] | None = None,
    timeout: float = START_TIMEOUT_S,
    threads: int | None = 1,
) -> Iterator[Server]:
    """`mlflow models serve -m model_uri --env-manager local` on 127.0.0.1:`port`, in this
    environment, with `workers` processes, until the block ends; yielded once /ping answers.
    `threads`: OMP_NUM_THREADS, torch's threads per request (None: torch's default, a core
    each): requests are graded side by side, and the cores are theirs, not each one's."""
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "--host", HOST, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    # the command starts `uvicorn` by name: this environment's, also when it is not activated
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with _running("mlflow models serve", command, env, port, "/ping", log, timeout) as server:
        yield server


@contextlib.contextmanager
def _running(
    name: str, command: list[str], env: dict[str, str], port: int, probe: str,
    log: IO[Any] | None, timeout: float,
) -> Iterator[Server]:  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT if log else None, start_new_session=True,
    )  # fmt: skip
    try:
        server = Server(f"http://{HOST}:{port}", process)
        _wait_until_up(name, server, probe, timeout)
        yield server
    finally:
        stop(process)


def _wait_until_up(name: str, server: Server, probe: str, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RetinoError(f"{name} exited with status {server.process.returncode} "
                              "before answering; its output above says why")  # fmt: skip
        try:
            with opener.open(server.url + probe, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        time.sleep(0.25)
    raise RetinoError(f"{name} did not answer at {server.url} within {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after `timeout`."""
    group = process.pid  # a session leader's pid is its group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)  # stragglers: the leader's exit does not end them
    process.wait()


def serve(port: int) -> int:
    """`retino ui`: serve the project's store until Ctrl-C (or SIGTERM / SIGHUP)."""
    start = time.monotonic()
    check_port(port)  # before paying seconds for the mlflow import below
    from retino.tracking.store import is_server_uri, open_store, project_root, retry, tracking_uri

    root = project_root()
    uri = tracking_uri(root)
    if is_server_uri(uri):
        print(f"MLFLOW_TRACKING_URI is a tracking server; its UI is at {uri}")
        return 0
    # creates the schema and experiment under the store lock, so a training starting now
    # does not race the server's schema migration on a fresh store
    store, experiment_id = open_store(root)
    tag = f"mlflow.sharedViewState.{VIEW_KEY}"
    retry(lambda: store.client.set_experiment_tag(experiment_id, tag, json.dumps(VIEW)))
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must still work
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _interrupt) for sig in stops}
    try:
        with mlflow_server(uri, root / "mlruns", port) as server:
            print(f"MLflow UI: {runs_page(server.url, experiment_id)}\n  (store {uri}, up in "
                  f"{time.monotonic() - start:.0f} s; Ctrl-C stops it)", flush=True)  # fmt: skip
            status = server.process.wait()
            raise RetinoError(f"mlflow server stopped by itself with status {status}")
    except KeyboardInterrupt:
        print("MLflow UI stopped", file=sys.stderr)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def runs_page(url: str, experiment_id: str) -> str:
    """The experiment's runs (not the GenAI overview it opens on), as the table `VIEW`."""
    return (f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")  # fmt: skip


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
