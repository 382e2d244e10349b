"""Writing a run: one MLflow run per pipeline execution, reopened by the later stages.

`open_run` starts (or reopens) the run and ends it FINISHED, FAILED on an error, KILLED on
Ctrl-C / SIGTERM; `Run` logs to it with retries, never interrupted half-way (see `_Deferred`).
"""

import contextlib
import json
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from retino.errors import RetinoError
from retino.tracking.names import recipe, variant
from retino.tracking.store import DEFAULT_EXPERIMENT, Store, git, open_store, retry
from retino.yamlfile import load_yaml

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
# Where and how a run executes, not what it learns: tags, so that params are the knobs worth
# comparing. The device is "where" (the `device` tag names the one resolved from `auto`);
# eval.batch_size only sets how many images one forward pass of a frozen model takes.
SETUP_KEYS = ("data.num_workers", "data.cache_device", "preprocess.workers", "preprocess.device",
              "train.device", "train.master_addr", "train.master_port", "train.node_rank",
              "train.dist_timeout", "eval.batch_size")  # fmt: skip
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
DATA_DVC = Path("data.dvc")  # the data version: its md5, relative to the stage's workspace


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

    def log_epochs(self, epochs: dict[int, dict[str, float]]) -> None:
        """Each epoch's metrics at step=epoch, skipping epochs already logged (a resumed run
        holds some). An epoch is one batch, all or nothing: its first metric marks it logged."""
        client = self.store.client
        first = next(iter(next(iter(epochs.values()), {})), None)
        if first is None:
            return
        logged = self._guard.call(lambda: client.get_metric_history(self.run_id, first))
        steps = {m.step for m in logged}
        for epoch, metrics in epochs.items():
            if epoch not in steps:
                self.log_metrics(metrics, step=epoch)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard.call(lambda: mlflow.set_tags(tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._guard.call(lambda: mlflow.log_artifact(str(path), artifact_path))

    def log_image(self, path: Path, key: str) -> None:
        """A PNG under `key` (step 0): the chart view's image grid shows a key across runs."""
        from PIL import Image

        with Image.open(path) as image:
            image.load()
        self._guard.call(lambda: mlflow.log_image(image, key=key, step=0, synchronous=True))

    def log_dataset(self, split: str, table: pd.DataFrame, data_md5: str) -> None:
        """A prepared split table as the run's input, in the UI's Dataset column: named after
        the split, digest of the table, source the DVC-tracked data it was drawn from."""
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource({"dvc_data": "data.dvc", "dvc_md5": data_md5,
                                    "table": f"prepared/{split}.csv"})  # fmt: skip
        context = DATASET_CONTEXTS[split]
        with warnings.catch_warnings():  # MLflow's schema hints on an int column: noise here
            warnings.simplefilter("ignore")
            dataset = mlflow.data.from_pandas(table, source=source, name=split, targets="label")
            self._guard.call(lambda: mlflow.log_input(dataset, context=context))

    def log_model(
        self, checkpoint: Path, name: str, outputs: list[str], paired: bool, metadata: dict
    ) -> None:
        """best.pt as a model that grades photographs (retino.tracking.logged_model), with its
        signature; `metadata` lands in its MLmodel file."""
        from importlib.metadata import version

        import mlflow.pyfunc

        from retino.tracking import logged_model as spec

        # what the network and the image path need (a CUDA build's +cu130 is no pip version)
        packages = ("torch", "torchvision", "pillow", "simplejpeg")
        requirements = [f"{p}=={version(p).split('+')[0]}" for p in packages]
        with warnings.catch_warnings():
            # an example photograph would be megabytes of base64 in every model; the signature
            # and the README say what a request holds
            warnings.filterwarnings("ignore", ".*An input example was not provided")
            self._guard.call(
                lambda: mlflow.pyfunc.log_model(
                    name=name, python_model=str(spec.MODEL_CODE),
                    artifacts={spec.CHECKPOINT: str(checkpoint)},
                    signature=spec.signature(outputs, paired), pip_requirements=requirements,
                    metadata={spec.FORMAT_KEY: spec.FORMAT, **metadata},
                )
            )  # fmt: skip


@contextlib.contextmanager
def open_run(
    root: Path,
    run_id: str | None = None,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    system_metrics: bool = False,
) -> Iterator[Run]:
    """Start a run (or reopen `run_id`) and end it FINISHED, FAILED on error, KILLED on interrupt.

    `system_metrics`: sample CPU, memory, disk, network (and GPU, with nvidia-ml-py) as
    system/... metrics while the run is open; the train stage turns it on.

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
                    run_name=name, tags=tags, log_system_metrics=system_metrics,
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


def run_params(cfg_flat: dict[str, Any]) -> dict[str, Any]:
    """The flattened config less the setup values (`SETUP_KEYS`, tags instead)."""
    return {k: v for k, v in cfg_flat.items() if k not in SETUP_KEYS}


def run_tags(cfg_flat: dict[str, Any]) -> dict[str, str]:
    """Provenance (code version, DVC experiment, data version, model), the setup values, and
    a one-line description: the run page's note."""
    tags = {
        "git_commit": git(Path.cwd(), "rev-parse", "HEAD") or "unknown",
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "data_md5": data_version(DATA_DVC),
        "arch": str(cfg_flat["arch"]),
        "pretrained": str(cfg_flat["pretrained"]),
        "variant": variant_name(cfg_flat),
        **{key: str(cfg_flat[key]) for key in SETUP_KEYS},
    }
    tags["mlflow.note.content"] = describe(cfg_flat, tags["data_md5"], tags["dvc_exp_name"])
    return {k: v for k, v in tags.items() if v}


def describe(cfg_flat: dict[str, Any], data_md5: str, exp_name: str) -> str:
    """resnet50 pretrained (IMAGENET1K_V1), 224 px, 20 epochs, sgd lr 0.01 cosine, batch 64;
    regression, flips TTA (where not the lab's recipe); selects on val_qwk; data 3f2a1c0b;
    DVC experiment bandy-skin"""
    c = cfg_flat
    weights = {False: "from scratch", True: f"pretrained ({c['train.weights']})"}.get(
        c["pretrained"], f"pretrained ({c['pretrained']})"
    )
    parts = [
        f"{c['arch']} {weights}, {c['data.image_size']} px, {c['train.epochs']} epochs, "
        f"{c['train.optimizer']} lr {c['train.lr']:g} {c['train.schedule']}, "
        f"batch {c['train.batch_size']}"
        + ("" if c["train.nproc"] == 1 else f" x {c['train.nproc']} processes"),
        recipe(c),
        f"selects on {c['train.select_metric']}",
        f"data {data_md5.removesuffix('.dir')[:8] or 'unversioned'}",
    ]
    if exp_name:
        parts.append(f"DVC experiment {exp_name}")
    return "; ".join(p for p in parts if p)


def variant_name(cfg_flat: dict[str, Any]) -> str:
    """The run's `variant` tag, shared by runs that differ only in `seed`, for the UI's "Group by":
    the run name without its experiment suffix, and the recipe where it is not the lab's
    ('resnet18-scratch', 'resnet18-scratch, regression, flips TTA')."""
    return ", ".join(filter(None, (variant(cfg_flat["arch"], cfg_flat["pretrained"]),
                                   recipe(cfg_flat))))  # fmt: skip


def run_name(cfg_flat: dict[str, Any]) -> str:
    """<arch>-<pretrained|scratch>-<DVC experiment name, or the short git sha outside one>; an
    experiment already named after its variant (a sweep's resnet18-pretrained-seed=1) alone."""
    prefix = variant(cfg_flat["arch"], cfg_flat["pretrained"])
    suffix = (
        os.environ.get("DVC_EXP_NAME")
        or (git(Path.cwd(), "rev-parse", "--short", "HEAD") or "nogit")[:7]
    )
    return suffix if suffix == prefix or suffix.startswith(f"{prefix}-") else f"{prefix}-{suffix}"


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
