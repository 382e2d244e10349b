"""Where a pipeline stage's wall time goes: loaded by every Python process of `retino bench
pipeline`'s `dvc exp run` (this folder is on its PYTHONPATH), active only in the stage processes
DVC starts (DVC_STAGE set) and only with RETINO_BENCH_PROBE naming a folder.

The stage's main thread is split into exclusive phases: each call of a function named in PHASES
counts under its phase, minus the phases called inside it; every import statement (outermost
only) counts as imports, wherever it runs; the rest is `other`. Functions are wrapped as their
module finishes loading, before any other module can bind their name. At exit the process writes
`<stage>-<pid>.json` into the probe folder: its start (from /proc, so the interpreter's own
start-up counts), its exit, the phases and the costliest imports. Outside the library on purpose:
timing hooks are the benchmark's business, not the pipeline's.
"""

import os

if os.environ.get("DVC_STAGE") and os.environ.get("RETINO_BENCH_PROBE"):
    import atexit
    import builtins
    import functools
    import importlib.abc
    import json
    import sys
    import threading
    import time
    from pathlib import Path

    LOGGING = ("log_params", "log_metrics", "log_epochs", "log_artifact", "log_image",
               "log_dataset")  # fmt: skip
    # module -> {function or Class.method: phase}
    PHASES = {
        "retino.data.prepare": {"prepare": "work"},
        "retino.data.preprocess": {"preprocess": "work"},
        "retino.tracking.store": {"open_store": "MLflow store", "existing_store": "MLflow store"},
        "mlflow.tracking.fluent": {"start_run": "MLflow run start", "end_run": "MLflow run end"},
        "retino.tracking.runs": {
            **{f"Run.{m}": "MLflow logging" for m in LOGGING},
            "Run.log_model": "model export",
        },
        "retino.training.train": {
            "build_loaders": "set-up",
            "build_trainee": "set-up",
            "_calibrate": "calibration",
            "_publish_models": "checkpoints",
        },
        "retino.training.engine": {"fit": "training loop"},
        "retino.training.checkpoint": {"save": "checkpoints", "load": "checkpoints"},
        "retino.evaluation.predict": {
            "load_predictor": "load model",
            "write_gallery": "Grad-CAM gallery",
        },
        "retino.evaluation.evaluate": {"evaluate_test": "test predictions"},
        "retino.evaluation.plots": {
            "plot_curves": "figures",
            "plot_confusion": "figures",
            "plot_confusion_grid": "figures",
        },
    }
    MAIN = threading.main_thread()

    def _started() -> float:
        """The process's start, wall clock: /proc's start tick against the uptime now."""
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))

    class _Clock:
        """Exclusive time per phase on the main thread: a stack of (phase, started)."""

        def __init__(self, start: float) -> None:
            self.start = start
            self.totals: dict[str, float] = {"start-up": time.time() - start}
            self.imports: dict[str, float] = {}
            self.stack: list[list] = []

        def enter(self, phase: str) -> None:
            now = time.perf_counter()
            if self.stack:
                self._add(self.stack[-1], now)
            self.stack.append([phase, now])

        def leave(self) -> float:
            now = time.perf_counter()
            frame = self.stack.pop()
            self._add(frame, now)
            if self.stack:
                self.stack[-1][1] = now
            return now

        def _add(self, frame: list, now: float) -> None:
            self.totals[frame[0]] = self.totals.get(frame[0], 0.0) + now - frame[1]

    clock = _Clock(_started())

    def _timed(phase: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if threading.current_thread() is not MAIN:
                return fn(*args, **kwargs)
            clock.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                clock.leave()

        return wrapper

    _import = builtins.__import__

    def _timed_import(name, globals=None, locals=None, fromlist=(), level=0):
        if threading.current_thread() is not MAIN or (
            clock.stack and clock.stack[-1][0] == "imports"
        ):
            return _import(name, globals, locals, fromlist, level)
        clock.enter("imports")
        began = time.perf_counter()
        try:
            return _import(name, globals, locals, fromlist, level)
        finally:
            took = clock.leave() - began
            if took > 0.01 and level == 0:  # a first import, not a name already loaded
                clock.imports[name] = clock.imports.get(name, 0.0) + took

    def _wrap(module, targets: dict[str, str]) -> None:
        for target, phase in targets.items():
            owner = module
            *path, attr = target.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, attr, _timed(phase, getattr(owner, attr)))

    class _Finder(importlib.abc.MetaPathFinder):
        """Wraps a PHASES module's functions once it has executed."""

        def find_spec(self, name, path, target=None):
            if name not in PHASES:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                _wrap(module, PHASES[name])

            spec.loader.exec_module = exec_module
            return spec

    def _write() -> None:
        while clock.stack:
            clock.leave()
        end = time.time()
        known = sum(clock.totals.values())
        record = {
            "stage": os.environ["DVC_STAGE"],
            "start": clock.start,
            "end": end,
            "phases": {**clock.totals, "other": max(end - clock.start - known, 0.0)},
            "imports": dict(sorted(clock.imports.items(), key=lambda kv: -kv[1])[:8]),
        }
        out = Path(os.environ["RETINO_BENCH_PROBE"], f"{record['stage']}-{os.getpid()}.json")
        out.write_text(json.dumps(record))

    sys.meta_path.insert(0, _Finder())
    builtins.__import__ = _timed_import
    atexit.register(_write)
