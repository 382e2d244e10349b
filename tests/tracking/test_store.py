"""check_server: a tracking server that does not answer is one line within seconds, before any
work, instead of MLflow's four minutes of retries and a long traceback. open_store: the
experiment, whoever creates it first."""

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from retino.errors import RetinoError
from retino.tracking.store import Store, check_server, open_store
from tests.conftest import ROOT, tiny_config


def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def tcp_server(reply: bytes | None) -> Iterator[str]:
    """A loopback TCP server that is no HTTP server: it sends `reply` and hangs up, or (None)
    accepts and never says a word. Stopped on exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: stop
                return
            accepted.append(conn)
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        listener.close()
        thread.join(timeout=10)
        assert not thread.is_alive()
        for conn in accepted:
            conn.close()


@contextmanager
def http_server(status: int) -> Iterator[str]:
    """A loopback HTTP server answering every GET with `status`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def probe_error(monkeypatch, uri: str, **kwargs) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(RetinoError) as err:
        check_server(Path.cwd(), **kwargs)
    message = str(err.value)
    assert message.startswith(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI): ")
    assert "\n" not in message and "unset it to log to the local store" in message
    return message


def test_closed_port(monkeypatch):
    uri = f"http://127.0.0.1:{closed_port()}"
    assert "connection refused, 3 tries" in probe_error(monkeypatch, uri)


@pytest.mark.parametrize(
    ("reply", "cause"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "the port does not speak HTTP"),  # answers, but not HTTP
        (None, "no answer within 0.5 s"),  # accepts and stays silent
    ],
)
def test_a_port_that_is_no_http_server(monkeypatch, reply, cause):
    with tcp_server(reply) as uri:
        assert f"{cause}, 2 tries" in probe_error(monkeypatch, uri, tries=2, timeout=0.5)


def test_a_server_error_answer(monkeypatch):
    with http_server(503) as uri:
        assert "answers HTTP 503, 3 tries" in probe_error(monkeypatch, uri)


@pytest.mark.parametrize("status", [200, 401])  # a login-protected server is still reachable
def test_a_server_that_answers_passes(monkeypatch, status):
    with http_server(status) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        check_server(Path.cwd())


def test_a_local_store_needs_no_server(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check_server(tmp_path)


def test_the_train_stage_fails_before_training(tmp_path):
    """The new user's `MLFLOW_TRACKING_URI=http://127.0.0.1:9 dvc repro`, on the train stage."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_config().to_dict()))
    uri = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    env.pop("DVC_ROOT", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: MLflow tracking server {uri} ")
    assert proc.stderr.count("\n") == 1 and "connection refused" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing started


def test_an_experiment_created_meanwhile_by_another_process(monkeypatch, tmp_path):
    """Tasks of a sweep start together on a fresh tracking server: each finds no experiment,
    one creates it, and the others must use it rather than fail."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, created = open_store(tmp_path)  # the other process, first
    looked = []
    real = Store.experiment_id

    def too_early(self, name):  # our first look came before it was created
        looked.append(name)
        return None if len(looked) == 1 else real(self, name)

    monkeypatch.setattr(Store, "experiment_id", too_early)
    assert open_store(tmp_path)[1] == created and len(looked) == 2
