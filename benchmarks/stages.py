"""One measurement of `retino bench scale`, in a process of its own:

    python -m benchmarks.stages STAGE '{"data": ..., "work": ..., ...}'

A stage first imports and builds what it needs (torch, a model, mlflow: not timed), then its
work is timed: the library call the pipeline stage or the CLI command makes. The last stdout
line is JSON: the wall and CPU seconds of the work, the items it handled (images, or runs), and peak
resident memory in MB: this process's high-water mark before and after the work, and for the
stages with a process pool, that of its largest worker (RUSAGE_CHILDREN: workers count once
reaped, which both pools do before their call returns).
"""

import json
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from retino.config import Config, from_dict
from retino.errors import RetinoError, exit_on_error
from retino.yamlfile import load_yaml

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
Work = Callable[[], int]  # does the measured work, returns how many items it handled
# the (arch, pretrained) cells of `retino compare`'s table that logged runs take in turn
CELLS = (("resnet18", False), ("resnet18", True), ("resnet50", False), ("resnet50", True))
EPOCHS = 20  # per logged run: the GPU recipe's length (README, "Training on EyePACS")


def config(args: dict) -> Config:
    """The committed params, with the benchmark's image size, model and batch size."""
    raw = load_yaml(PARAMS)
    raw["arch"] = args.get("arch", raw["arch"])
    raw["data"]["image_size"] = args.get("size", raw["data"]["image_size"])
    raw["train"]["batch_size"] = raw["eval"]["batch_size"] = args.get("batch_size", 64)
    return from_dict(raw)


def validate_old(args: dict) -> Work:
    """The check as the issue found it: the layout, then every image fully decoded by Pillow
    (`Image.open(path).load()`), one at a time, in this one process."""
    from PIL import Image

    from retino.data.layouts import read_layout

    root = Path(args["data"])

    def work() -> int:
        report = read_layout(root)
        samples = [s for split in report.samples.values() for s in split]
        for sample in samples:
            try:
                with Image.open(root / sample.path) as image:
                    image.load()
            except OSError as err:
                report.problems.append(f"{root / sample.path}: {err}")
        report.raise_if_invalid()
        return len(samples)

    return work


def validate(args: dict) -> Work:
    """`retino validate`: headers first, then every image decoded at 1/8 scale, a process per
    core."""
    from retino.data.validation import DEFAULT_MAX_PIXELS, cpu_workers
    from retino.data.validation import validate as check

    def work() -> int:
        report = check(Path(args["data"]), DEFAULT_MAX_PIXELS, decode=True, workers=cpu_workers())
        report.raise_if_invalid()
        return sum(len(split) for split in report.samples.values())

    return work


def prepare(args: dict) -> Work:
    """The prepare stage: headers, grouped split, tables."""
    from retino.data.prepare import prepare as run

    cfg = config(args)

    def work() -> int:
        report = run(Path(args["data"]), Path(args["work"]) / "prepared", cfg)
        return sum(len(split) for split in report.samples.values())

    return work


def preprocess(args: dict) -> Work:
    """The preprocess stage at `size` px: every image decoded once into the uint8 cache."""
    from retino.data.preprocess import preprocess as run

    cfg, work_dir = config(args), Path(args["work"])

    def work() -> int:
        index = run(Path(args["data"]), work_dir / "prepared", work_dir / args["cache"], cfg)
        return sum(entry["rows"] for entry in index["splits"].values())

    return work


def train(args: dict) -> Work:
    """One epoch of the train stage over the cached train split: the loaders and the model,
    optimizer and loss it builds (retino.training.train), then `train_one_epoch` (validation
    after the epoch is `evaluate`'s cost)."""
    import torch

    from retino.data.cache import open_index
    from retino.training.distributed import Dist
    from retino.training.engine import epoch_generator, resolve_device, train_one_epoch, train_step
    from retino.training.train import build_loaders, build_trainee

    cfg, work_dir = config(args), Path(args["work"])
    cache, prepared = work_dir / args["cache"], work_dir / "prepared"
    device = resolve_device(cfg.train.device)
    index = open_index(cache, cfg.data.image_size, cfg.preprocess.normalize)
    loaders = build_loaders(cfg, prepared, cache, device, Dist())
    torch.manual_seed(cfg.seed)
    normalisation = {"mean": index["mean"], "std": index["std"]}
    t = build_trainee(cfg, loaders, normalisation, device, Dist())
    loader = loaders.train

    # one step first, untimed: oneDNN builds its kernels and the allocator its pools on first
    # use, a cost per process, not per image
    images, labels = next(iter(loader))
    train_step(t.model, images, labels, t.train_tf, t.optimizer, t.criterion, torch.Generator())

    def work() -> int:
        generator = epoch_generator(cfg.seed, 0, 0)
        train_one_epoch(t.model, loader, t.train_tf, t.optimizer, t.criterion, generator, 1,
                        head=t.head)  # fmt: skip
        return len(loader.dataset)

    return work


def evaluate(args: dict) -> Work:
    """The evaluate stage's prediction and reports over the cached test split (`evaluate_test`:
    predictions, metrics with their bootstrap intervals, predictions.csv), with an untrained
    model; MLflow logging and the 10-image Grad-CAM gallery, whose cost does not grow with the
    data, are left out."""
    import torch

    from retino.data.dataset import CachedSplit
    from retino.data.transforms import BatchTransform
    from retino.evaluation.evaluate import evaluate_test
    from retino.evaluation.predict import Predictor
    from retino.training.calibration import Calibration
    from retino.training.engine import resolve_device
    from retino.training.heads import Head
    from retino.training.models import build_model

    cfg, work_dir = config(args), Path(args["work"])
    cache = work_dir / args["cache"]
    device = resolve_device(cfg.train.device)
    index = json.loads((cache / "index.json").read_text())
    transform = BatchTransform(index["mean"], index["std"], device, None, device.type == "cuda")
    head = Head(cfg.train.loss)
    model = build_model(cfg.arch, outputs=head.outputs)
    model = model.to(device, memory_format=transform.memory_format).eval()
    # argmax of the own eye, as a model trained without thresholds or an eye blend grades
    predictor = Predictor(model, cfg, transform, "untrained", head, Calibration(None, None))
    cached = CachedSplit(cache, work_dir / "prepared", "test")
    with torch.no_grad():  # one batch first, untimed, as for `train`
        images, _ = cached.__getitems__(list(range(min(len(cached), cfg.eval.batch_size))))
        model(transform(images))

    def work() -> int:
        evaluate_test(predictor, cached, work_dir / "eval", cfg.eval.bootstrap, cfg.seed)
        return len(cached)

    return work


def log_runs(args: dict) -> Work:
    """`count` runs logged into the store at `store` as the pipeline logs them (params, three
    datasets, EPOCHS epochs of curves, test metrics, eval/ artifacts), with made-up numbers;
    no model, images or system metrics, which `retino compare` never reads."""
    import pandas as pd

    import retino.tracking.runs  # noqa: F401  mlflow: imported here, not timed

    flat = config(args).flat()
    tables = {
        split: pd.DataFrame({"path": [f"images/{i}_left.jpeg" for i in range(n)],
                             "label": [i % 5 for i in range(n)]})
        for split, n in (("train", 640), ("val", 160), ("test", 200))
    }  # fmt: skip

    def work() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            for number in range(args["first"], args["first"] + args["count"]):
                _log_run(Path(args["store"]), number, flat, tables, Path(tmp))
        return args["count"]

    return work


def _log_run(root: Path, number: int, flat: dict, tables: dict, tmp: Path) -> None:
    from retino.tracking.names import best_metrics, epoch_metrics, test_metrics, variant
    from retino.tracking.runs import open_run, run_params

    arch, pretrained = CELLS[number % len(CELLS)]
    flat = {**flat, "arch": arch, "pretrained": pretrained}
    select = flat["train.select_metric"]
    tags = {"arch": arch, "pretrained": str(pretrained), "dvc_exp_name": f"bench-{number}"}
    with open_run(root, name=f"{variant(arch, pretrained)}-bench-{number}", tags=tags) as run:
        run.log_params(run_params(flat))
        for split, table in tables.items():
            run.log_dataset(split, table, "")
        for epoch in range(1, EPOCHS + 1):  # a call per epoch, as the train stage logs
            rise = 1 - math.exp(-epoch / 4)
            row = {"epoch": epoch, "lr": 0.002}
            for split in ("train", "val", "test"):
                row |= {f"{split}_loss": 1.2 - 0.6 * rise, f"{split}_acc": 0.7 + 0.2 * rise,
                        f"{split}_qwk": 0.8 * rise}  # fmt: skip
            # the curves only rise: every epoch is the best so far
            run.log_epochs({epoch: best_metrics(row, select) | epoch_metrics(row)})
        run.log_metrics(test_metrics({"qwk": 0.7, "accuracy": 0.85, "majority_accuracy": 0.735}))
        counts = [[30 if i == j else 1 for j in range(5)] for i in range(5)]
        (tmp / "confusion.json").write_text(json.dumps({"counts": counts}))
        test = tables["test"].rename(columns={"path": "image"})
        test = test.assign(predicted=0, p0=0.8, p1=0.05, p2=0.05, p3=0.05, p4=0.05)
        test.to_csv(tmp / "predictions.csv", index=False)  # as evaluate writes it
        for name in ("confusion.json", "predictions.csv"):
            run.log_artifact(tmp / name, "eval")


def compare(args: dict) -> Work:
    """`retino compare` over every run of the store: table with 95 % intervals (1000 resamples),
    paired comparisons, forest plot, curves, confusion grid, logged to MLflow."""
    from retino.evaluation.compare import compare as run

    def work() -> int:
        run(Path(args["store"]), Path(args["out"]), "retino", None, 1000)
        return args["runs"]

    return work


STAGES: dict[str, Callable[[dict], Work]] = {
    "validate-old": validate_old,
    "validate": validate,
    "prepare": prepare,
    "preprocess": preprocess,
    "train": train,
    "evaluate": evaluate,
    "log-runs": log_runs,
    "compare": compare,
}


POOLED = {"validate", "preprocess"}  # the stages that run a process pool


def peak_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    over from the parent through fork and exec, so a child would report at least the
    benchmark's own peak."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: ru_maxrss, in bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    return int(kilobytes) / 1024


def workers_peak_mb() -> float:
    """The peak resident memory of the largest child process reaped so far (kilobytes on
    Linux). Forked workers' counts include the pages they share with this process."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process and its reaped workers: under a load that comes and goes it
    varies less than the wall time does."""
    mine, workers = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return mine.ru_utime + mine.ru_stime + workers.ru_utime + workers.ru_stime


@exit_on_error
def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in STAGES:
        raise RetinoError(f"usage: python -m benchmarks.stages {{{','.join(STAGES)}}} JSON")
    work = STAGES[argv[0]](json.loads(argv[1]))
    before = peak_mb()
    cpu = cpu_seconds()
    start = time.perf_counter()
    items = work()
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "items": items,
        "peak_mb_before": round(before, 1),
        "peak_mb": round(peak_mb(), 1),
        # other stages start no workers, only helper commands (git, ldconfig) worth nothing
        "worker_peak_mb": round(workers_peak_mb(), 1) if argv[0] in POOLED else 0.0,
    }
    torch = sys.modules.get("torch")  # where the model ran, for the stages that have one
    if torch is not None:
        cuda = torch.cuda.is_available()
        result["device"] = f"cuda: {torch.cuda.get_device_name()}" if cuda else "cpu"
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
