"""`retino bench serve`: the logged model behind `mlflow models serve`, under a bounded load, and
`retino predict` on the same photographs and cores, in one run.

- the model: the committed params' network (`--arch`, `--size`; untrained weights, which cost
  the same to run) saved as best.pt and logged as the train step logs it (`Run.log_model`) into
  a store in a temporary folder, registered, and served as models:/retino-bench@serve with
  `OMP_NUM_THREADS=<--threads> mlflow models serve --env-manager local --workers N` on
  127.0.0.1, as the README serves it;
- the load: `--requests` POSTs, `--concurrency` at a time, each of `--per-request` camera-sized
  photographs (`retino synth --frame`; `--distinct` different ones, sent in turn) as base64 in
  a `dataframe_split` request, after a warm-up round of `--concurrency` requests. Each answer is
  checked: HTTP 200 and every row graded, with an empty `error`. Per request: the latency, and
  the CPU time of the server's whole process tree. Its resident memory is read when it is up,
  after the warm-up and after each round;
- the reference: `predict_images`, what `retino predict` runs, on the same photographs (the same
  list of files) in this process, with the loader workers retino predict picks, while the
  server idles; its CPU time includes the workers'.
The machine may be shared: `--rounds` alternate the two, and the images/s ratio compares the
fastest round of each, the least disturbed; CPU time per image, which other jobs disturb less,
compares the medians. Every round is in the table, with the load it met. Last, `--near-limit`
rounds of 4 requests at once, each just under the request limit (63 MB of base64 that is no
image): the server's memory after each, which must level off.

stdout: the table, then one JSON line (always the last). Progress goes to stderr.
"""

import base64
import contextlib
import gc
import json
import os
import resource
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import psutil

from benchmarks.machine import cpu_description
from benchmarks.stages import config
from retino.errors import RetinoError
from retino.synth import synthesize
from retino.synth.checks import parse_frame

NAME, ALIAS = "retino-bench", "serve"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # any mean/std costs the same
NEAR_LIMIT_MB = 63  # base64 that decodes, to no image: read whole, answered with an error


def bench_serve(
    requests: int, per_request: int, concurrency: int, frame: str, distinct: int, workers: int,
    arch: str, size: int, rounds: int, near_limit: int, threads: int | None,
) -> dict:  # fmt: skip
    from retino.tracking.server import model_server

    with tempfile.TemporaryDirectory(prefix="retino-bench-serve-") as tmp:
        root = Path(tmp)
        width, height = parse_frame(frame)
        print(f"writing {distinct} frames of {width}x{height}", file=sys.stderr)
        synthesize(root / "data", n_train=distinct, n_test=1, size=None, seed=0,
                   frame=(width, height))  # fmt: skip
        photos = sorted((root / "data" / "images").iterdir())[:distinct]
        paths = [photos[i % distinct] for i in range(requests * per_request)]
        bodies = [_body(paths[i : i + per_request]) for i in range(0, len(paths), per_request)]
        best = _checkpoint(root, arch, size)
        # the store of this benchmark, for us and the server: never the project's or a team's
        store = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
        with mock.patch.dict(os.environ, store):
            uri = _log_and_register(root, best)
        log = root / "server.log"
        print(f"serving {uri}, {workers} worker(s)", file=sys.stderr)
        start = time.perf_counter()
        served, predicted, rss, big_rss, load = [], [], [], [], []
        try:
            with (
                mock.patch.dict(os.environ, store),
                open(log, "w") as out,
                model_server(uri, _free_port(), workers, out, threads=threads) as server,
            ):
                up_s = time.perf_counter() - start
                rss.append(_tree_mb(server.process.pid))
                _load(server.url, bodies[:concurrency], concurrency, per_request)  # warm-up
                rss.append(_tree_mb(server.process.pid))
                # the machine may be shared: the two paths take turns, each round
                for r in range(rounds):
                    print(f"round {r + 1} of {rounds}", file=sys.stderr)
                    load.append(os.getloadavg()[0])
                    predicted.append(_predict(best, paths))  # the server idles meanwhile
                    print(f"  {requests} requests, {concurrency} at a time", file=sys.stderr)
                    served.append(_load(server.url, bodies, concurrency, per_request,
                                        server=server.process.pid))  # fmt: skip
                    rss.append(_tree_mb(server.process.pid))
                load.append(os.getloadavg()[0])
                big = _near_limit() if near_limit else b""
                for _ in range(near_limit):
                    print("  4 requests just under the limit", file=sys.stderr)
                    _load(server.url, [big] * 4, 4, 1, check=False)
                    big_rss.append(_tree_mb(server.process.pid))
        except RetinoError:
            print(log.read_text()[-3000:], file=sys.stderr)
            raise
    return _report(requests, per_request, concurrency, (width, height), distinct, workers,
                   threads, arch, size, up_s, served, predicted, rss, big_rss, load)  # fmt: skip


def _checkpoint(root: Path, arch: str, size: int) -> Path:
    """best.pt of the committed params' network at `size` px, untrained."""
    from retino.training import checkpoint
    from retino.training.models import build_model

    cfg = config({"arch": arch, "size": size})
    state = checkpoint.Checkpoint(
        model=build_model(cfg.arch, outputs=5).state_dict(), config=cfg.to_dict(),
        normalisation={"mean": MEAN, "std": STD}, epoch=1, best_epoch=1, history=[], tag="bench",
        thresholds=None, eye_weight=None,
    )  # fmt: skip
    path = root / "best.pt"
    checkpoint.save(state, path)
    return path


def _log_and_register(root: Path, best: Path) -> str:
    """Log best.pt as the train step does, into a store in `root`; register it. Its URI."""
    from retino.tracking.registry import register_model
    from retino.tracking.runs import open_run
    from retino.tracking.store import open_store

    with open_run(root, name="bench-serve") as run:
        run.log_model(best, "resnet-bench", [f"p{g}" for g in range(5)], False, {})
    store, _ = open_store(root)
    register_model(store, run.run_id, NAME, ALIAS)
    return f"models:/{NAME}@{ALIAS}"


def _predict(best: Path, paths: list[Path]) -> dict:
    """`retino predict`'s grading of `paths`: images/s, and how many were not graded."""
    from retino.evaluation.predict import load_predictor, predict_images

    pred = load_predictor(str(best))  # the device retino predict picks, as the server does
    print(f"  retino predict: {len(paths)} images", file=sys.stderr)
    cpu = _own_cpu()
    start = time.perf_counter()
    _, failed = predict_images(pred, paths)
    seconds = time.perf_counter() - start
    gc.collect()  # the loader's workers end with it: their CPU time is then ours
    cpu = _own_cpu() - cpu
    return {"seconds": seconds, "rate": len(paths) / seconds, "failed": len(failed),
            "cpu_ms": cpu / len(paths) * 1000}  # fmt: skip


def _own_cpu() -> float:
    """CPU seconds of this process and its ended children (retino predict's loader workers)."""
    me, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _body(paths: list[Path]) -> bytes:
    rows = [[p.stem, base64.b64encode(p.read_bytes()).decode()] for p in paths]
    return json.dumps({"dataframe_split": {"columns": ["id", "image"], "data": rows}}).encode()


def _near_limit() -> bytes:
    image = "A" * (NEAR_LIMIT_MB * 1_000_000)
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]]}}).encode()


def _load(
    url: str, bodies: list[bytes], concurrency: int, per_request: int, check: bool = True,
    server: int = 0,
) -> dict:  # fmt: skip
    """POST every body (of `per_request` photographs), `concurrency` at a time: latencies,
    images/s, failed requests (with `check`, a request fails unless all its rows were graded),
    and the CPU time per photograph of the process tree of `server` (a PID) and of this
    process, the client, which shares the machine's cores with the server."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(body: bytes) -> tuple[float, str]:
        request = urllib.request.Request(url + "/invocations", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        start = time.perf_counter()
        try:
            with opener.open(request, timeout=120) as response:
                rows = json.loads(response.read())["predictions"]
        except (urllib.error.URLError, OSError, ValueError) as err:
            return time.perf_counter() - start, str(err)
        graded = len(rows) == per_request and all(r["grade"] is not None for r in rows)
        problem = "" if graded or not check else str(rows)[:200]
        return time.perf_counter() - start, problem

    cpu, client = (_tree_cpu(server) if server else 0.0), _own_cpu()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(post, bodies))
    wall = time.perf_counter() - start
    cpu, client = (_tree_cpu(server) - cpu if server else 0.0), _own_cpu() - client
    latency = np.array([a[0] for a in answers])
    errors = [a[1] for a in answers if a[1]]
    for error in errors[:3]:
        print(f"  failed: {error}", file=sys.stderr)
    p50, p95 = np.percentile(latency, [50, 95]).tolist()
    images = len(bodies) * per_request
    return {"seconds": wall, "rate": images / wall, "errors": len(errors), "p50": p50,
            "p95": p95, "cpu_ms": cpu / images * 1000,
            "client_cpu_ms": client / images * 1000}  # fmt: skip


def _tree_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB."""
    return _tree_sum(pid, lambda p: p.memory_info().rss) / 1e6


def _tree_cpu(pid: int) -> float:
    """CPU seconds a process and all its descendants have used."""
    return _tree_sum(pid, lambda p: sum(p.cpu_times()[:2]))


def _tree_sum(pid: int, measure: Callable[[psutil.Process], float]) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that ended in between
            total += measure(proc)
    return total


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _report(requests, per_request, concurrency, frame, distinct, workers, threads, arch, size,
            up_s, served, predicted, rss, big_rss, load) -> dict:  # fmt: skip
    fast_served = max(served, key=lambda r: r["rate"])
    fast_predict = max(predicted, key=lambda r: r["rate"])
    ratio = fast_served["rate"] / fast_predict["rate"]
    cpu_served = float(np.median([r["cpu_ms"] for r in served]))
    cpu_predict = float(np.median([r["cpu_ms"] for r in predicted]))
    cpu_client = float(np.median([r["client_cpu_ms"] for r in served]))
    lines = [
        f"retino bench serve: {requests} requests of {per_request} {frame[0]}x{frame[1]} "
        f"photograph(s) ({distinct} different), {concurrency} at a time; {arch} at {size} px; "
        f"{cpu_description()}",
        f"OMP_NUM_THREADS={threads or '(unset)'} mlflow models serve --workers {workers}: "
        f"up in {up_s:.1f} s",
        "",
        f"{'round':<7}{'path':<16}{'images/s':>9}{'CPU ms/img':>11}{'p50 s':>7}{'p95 s':>7}"
        f"{'errors':>7}{'load':>6}{'client CPU':>11}",
    ]
    for r, (pred, serve) in enumerate(zip(predicted, served, strict=True)):
        lines.append(f"{r + 1:<7}{'retino predict':<16}{pred['rate']:>9.1f}{pred['cpu_ms']:>11.1f}"
                     f"{'':>14}{pred['failed']:>7}{load[r]:>6.2f}")  # fmt: skip
        lines.append(f"{r + 1:<7}{'served':<16}{serve['rate']:>9.1f}{serve['cpu_ms']:>11.1f}"
                     f"{serve['p50']:>7.3f}{serve['p95']:>7.3f}{serve['errors']:>7}{'':>6}"
                     f"{serve['client_cpu_ms']:>11.1f}")  # fmt: skip
    rounds = ", ".join(f"{v:.0f}" for v in rss[2:])
    lines += [
        "",
        f"served / retino predict, fastest rounds: {ratio:.2f} in images/s; "
        f"{cpu_predict / cpu_served:.2f} in CPU time per image (medians); the client, on the "
        f"same cores, {cpu_client:.1f} ms of CPU per image",
        f"server RSS (process tree), MB: {rss[0]:.0f} up, {rss[1]:.0f} after the warm-up, "
        f"after each round {rounds}"
        + "".join(f", after 4 x {NEAR_LIMIT_MB} MB {v:.0f}" for v in big_rss),
        f"load average (1 min) at the end: {load[-1]:.2f}",
    ]
    print("\n".join(lines))
    result = {
        "requests": requests, "per_request": per_request, "concurrency": concurrency,
        "workers": workers, "threads": threads,
        "served_images_per_s": round(fast_served["rate"], 2),
        "predict_images_per_s": round(fast_predict["rate"], 2), "ratio": round(ratio, 3),
        "served_cpu_ms": round(cpu_served, 1), "predict_cpu_ms": round(cpu_predict, 1),
        "cpu_ratio": round(cpu_predict / cpu_served, 3), "client_cpu_ms": round(cpu_client, 1),
        "p50_s": round(fast_served["p50"], 4), "p95_s": round(fast_served["p95"], 4),
        "errors": sum(r["errors"] for r in served), "rss_mb": [round(v, 1) for v in rss],
        "near_limit_rss_mb": [round(v, 1) for v in big_rss],
        "up_s": round(up_s, 1), "load": [round(v, 2) for v in load],
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result
