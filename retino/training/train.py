"""The train step: prepared splits -> models/best.pt, history and metrics, one MLflow run.

It builds what `fit` trains with — model, loss, optimizer, schedule, loaders — restores them
from the resume checkpoint when there is one, and persists every epoch through fit's callback.

Work in progress lives in a checkpoint folder that DVC does not wipe (`persist: true`):
resume.pt and best.pt after every epoch, and run.json with the MLflow run id and the fingerprint
of what is being trained. The next `dvc repro` after a crash resumes there and logs into the
same run; a different config or data starts over. A finished training publishes its outputs and
empties the folder, so `dvc repro --force` trains from scratch.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from retino.atomic import write_atomic
from retino.config import Config
from retino.data.cache import INDEX_FILE, open_index
from retino.data.dataset import CachedSplit, default_workers, make_loader
from retino.data.feed import CacheFeed, describe, residency
from retino.data.samplers import GradeSampler
from retino.data.splits import read_split
from retino.data.transforms import BatchTransform
from retino.tracking.names import (
    best_metrics,
    calibration_metrics,
    epoch_metrics,
    headline_placeholders,
    variant,
)
from retino.tracking.runs import open_run, run_name, run_params, run_tags, write_run_file
from retino.tracking.store import project_root
from retino.training import checkpoint
from retino.training.calibration import Calibration, calibrate
from retino.training.checkpoint import BEST_FILE, RESUME_FILE, Checkpoint
from retino.training.distributed import Dist, barrier, setup, teardown
from retino.training.engine import (
    FitResult,
    Loaders,
    Trainee,
    better,
    fit,
    predict,
    resolve_device,
)
from retino.training.eyes import fellow_index
from retino.training.heads import Head
from retino.training.models import build_model
from retino.training.optim import make_criterion, make_optimizer, make_scheduler

RUN_FILE = "run.json"
# metrics.json holds what identical runs reproduce bit for bit and what selection looked at:
# no timings (history and MLflow have them), no test numbers (the evaluate stage owns those)
SELECTED = ("train_loss", "train_acc", "train_qwk", "val_loss", "val_acc", "val_qwk")


def train(
    cfg: Config,
    prepared: Path,
    cache: Path,
    models_dir: Path,
    reports_dir: Path,
    ckpt_dir: Path,
) -> FitResult:
    """Train (as one process, or as one rank of a torchrun job) and publish the outputs."""
    torch.manual_seed(cfg.seed)  # model initialisation, identical on every rank
    job, device = setup(cfg.train, resolve_device(cfg.train.device))
    try:
        return _train(cfg, job, device, prepared, cache, models_dir, reports_dir, ckpt_dir)
    finally:
        teardown(job)


def _train(
    cfg: Config,
    job: Dist,
    device: torch.device,
    prepared: Path,
    cache: Path,
    models_dir: Path,
    reports_dir: Path,
    ckpt_dir: Path,
) -> FitResult:
    index = open_index(cache, cfg.data.image_size, cfg.preprocess.normalize)
    normalisation = {"mean": index["mean"], "std": index["std"]}
    loaders = build_loaders(cfg, prepared, cache, device, job)
    trainee = build_trainee(cfg, loaders, normalisation, device, job)

    tables = [Path(prepared) / f"{split}.csv" for split in ("train", "val", "test")]
    tag = checkpoint.fingerprint(cfg, [*tables, Path(cache) / INDEX_FILE])
    run_id = _claim_checkpoints(ckpt_dir, tag) if job.is_main else None
    barrier(job)  # every rank resumes from what rank 0 kept (one shared filesystem)
    resume = checkpoint.load_resume(ckpt_dir, tag)
    if resume is not None:
        trainee.model.load_state_dict(resume.model)
        trainee.optimizer.load_state_dict(resume.optimizer)
        trainee.scheduler.load_state_dict(resume.scheduler)
        torch.set_rng_state(resume.rng["torch"])
        if job.is_main:
            print(f"resuming after epoch {resume.epoch} of {cfg.train.epochs}", flush=True)
    done = FitResult(resume.history, resume.best_epoch) if resume else None
    if not job.is_main:  # the other ranks compute; rank 0 alone logs and writes
        return fit(trainee, loaders, cfg, done, job=job)

    def save(result: FitResult, name: str) -> None:
        resumable = name == RESUME_FILE  # best.pt needs no optimizer state
        state = Checkpoint(
            model=trainee.model.state_dict(), config=cfg.to_dict(), normalisation=normalisation,
            epoch=len(result.history), best_epoch=result.best_epoch, history=result.history,
            tag=tag, thresholds=None, eye_weight=None,  # calibrated once training ends
            optimizer=trainee.optimizer.state_dict() if resumable else None,
            scheduler=trainee.scheduler.state_dict() if resumable else None,
            rng={"torch": torch.get_rng_state()} if resumable else None,
        )  # fmt: skip
        checkpoint.save(state, ckpt_dir / name)

    flat = cfg.flat()
    root = project_root()
    select = cfg.train.select_metric
    tags = run_tags(flat) | {"device": _device_name(device), "world_size": str(job.world_size)}
    with open_run(root, run_id, run_name(flat), tags, system_metrics=True) as run:
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"run_id": run.run_id, "tag": tag}) + "\n")
        if run_id is None:
            run.log_metrics(headline_placeholders(select), step=0)
            run.log_params(run_params(flat))
            for split in ("train", "val", "test") if cfg.train.track_test else ("train", "val"):
                run.log_dataset(split, read_split(prepared, split), tags.get("data_md5", ""))
        if resume is not None:  # a kill may have come between checkpoint and logging
            run.log_epochs(_logged_epochs(resume.history, select))

        def on_epoch(result: FitResult, improved: bool) -> None:
            if improved:
                save(result, BEST_FILE)
            save(result, RESUME_FILE)
            run.log_epochs(_logged_epochs(result.history, select))

        result = fit(trainee, loaders, cfg, done, on_epoch, job)
        best = checkpoint.load(ckpt_dir / BEST_FILE)
        trainee.model.load_state_dict(best.model)
        calibration = _calibrate(cfg, trainee, loaders.val.dataset, device.type == "cuda")
        checkpoint.save(
            dataclasses.replace(
                best, thresholds=calibration.thresholds, eye_weight=calibration.eye_weight
            ),
            ckpt_dir / BEST_FILE,
        )
        _publish_models(ckpt_dir, models_dir, run.run_id)
        fitted = calibration_metrics(calibration.thresholds, calibration.eye_weight)
        if fitted:
            run.log_metrics(fitted)
        reports = _reports(result, loaders.val.dataset.labels.numpy(), calibration)
        (ckpt_dir / "history.csv").write_text(reports["history.csv"])  # logged under this name
        run.log_artifact(ckpt_dir / "history.csv")
        # best.pt once, as the model that grades photographs; the metadata shows in the UI
        # what best.pt holds besides the weights
        metadata = {"config": cfg.to_dict(), "normalisation": normalisation,
                    "best_epoch": result.best_epoch, "thresholds": calibration.thresholds,
                    "eye_weight": calibration.eye_weight}  # fmt: skip
        run.log_model(ckpt_dir / BEST_FILE, variant(cfg.arch, cfg.pretrained), trainee.head.columns,
                      calibration.eye_weight is not None, metadata)  # fmt: skip
    # The run is logged: only now replace the previous run's reports, which DVC keeps
    # (persist: true), so a failed training leaves them as they were.
    for name, text in reports.items():
        write_atomic(reports_dir / name, text)
    _empty(ckpt_dir)  # finished: nothing left to resume
    print(f"best epoch {result.best_epoch}: {select} {result.best[select]:.4f}")
    return result


def _logged_epochs(history: list[dict[str, float]], select: str) -> dict[int, dict[str, float]]:
    """MLflow metrics per epoch: best/ (the best epoch so far) first, then train/, val/, test/."""
    epochs, best = {}, None
    for row in history:
        if best is None or better(select, row[select], best[select]):
            best = row
        epochs[int(row["epoch"])] = best_metrics(best, select) | epoch_metrics(row)
    return epochs


def _device_name(device: torch.device) -> str:
    """What ran it: cpu, or cuda:0 (NVIDIA H100 80GB HBM3)."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def _calibrate(cfg: Config, trainee: Trainee, val: CachedSplit, pin: bool) -> Calibration:
    """The grading rule fitted on the selected model's validation outputs, with the evaluation's
    TTA (retino.training.calibration). This process reads the whole split: under DDP the other
    ranks are done, and the training's val loader holds this rank's shard only."""
    head = trainee.head
    if not (head.regression or cfg.eval.paired_eyes):
        return Calibration(None, None)  # argmax of the own eye: nothing to fit
    workers = default_workers(cfg.data.num_workers, pin)
    loader = make_loader(val, cfg.eval.batch_size, False, workers, pin)
    tta = cfg.eval.tta == "flips"
    labels, outputs = predict(trainee.model, loader, trainee.eval_tf, "calibrate", head=head,
                              tta=tta)  # fmt: skip
    return calibrate(head, outputs, labels, fellow_index(val.table["path"]), cfg.eval.paired_eyes)


def build_trainee(
    cfg: Config, loaders: Loaders, normalisation: dict, device: torch.device, job: Dist
) -> Trainee:
    """What `fit` trains: the model with its head, optimizer, schedule, loss and transforms."""
    cuda = device.type == "cuda"
    head = Head(cfg.train.loss)
    model: nn.Module = build_model(cfg.arch, cfg.pretrained, cfg.train.weights, head.outputs)
    if cfg.train.sync_bn and job.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    mean, std = normalisation["mean"], normalisation["std"]
    train_tf = BatchTransform(mean, std, device, cfg.train.augment, channels_last=cuda)
    model.to(device, memory_format=train_tf.memory_format)
    optimizer = make_optimizer(model, cfg.train, job.world_size, fused=cuda)
    return Trainee(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.train),
        criterion=make_criterion(cfg.train, loaders.train.dataset.labels.numpy(), device),
        train_tf=train_tf,
        eval_tf=BatchTransform(mean, std, device, None, channels_last=cuda),
        head=head,
    )


def build_loaders(
    cfg: Config, prepared: Path, cache: Path, device: torch.device, job: Dist
) -> Loaders:
    """The train (sampled as train.sampler says), val and, with track_test, test loaders: on
    the CPU DataLoaders over the memory-mapped cache, on CUDA feeds that hold each split in GPU
    memory or stream it from the file, as data.cache_device says (retino.data.feed)."""
    cuda = device.type == "cuda"
    workers = default_workers(cfg.data.num_workers, cuda)
    splits = ("train", "val", "test") if cfg.train.track_test else ("train", "val")
    datasets = {split: CachedSplit(cache, prepared, split) for split in splits}
    sizes = {split: dataset.nbytes for split, dataset in datasets.items()}
    resident = residency(cfg.data.cache_device, device, sizes)
    if cuda and job.is_main:
        print(describe(resident, sizes, device), flush=True)

    def loader(split: str, batch_size: int, shuffle: bool) -> DataLoader | CacheFeed:
        dataset = datasets[split]
        # The order of epoch e is a permutation seeded by (seed, e) (fit calls set_epoch),
        # whatever the loader did before: a resumed run gets the same batches as an
        # uninterrupted one. A DataLoader's own generator would not do: with persistent workers
        # it is drawn from once per iterator, so epoch 2 shuffles differently after a restart.
        # Under DDP each rank reads its own shard. The balancing samplers do the same.
        if shuffle and cfg.train.sampler != "shuffle":
            labels = dataset.labels.numpy()
            sampler = GradeSampler(labels, cfg.train.sampler, cfg.train.epochs, cfg.seed,
                                   job.world_size, job.rank)  # fmt: skip
        else:
            sampler = DistributedSampler(
                dataset, num_replicas=job.world_size, rank=job.rank, shuffle=shuffle,
                seed=cfg.seed,
            )  # fmt: skip
        if resident[split] is None:  # a CPU training
            return make_loader(dataset, batch_size, shuffle, workers, cuda, sampler)
        return CacheFeed(dataset, batch_size, sampler, device, resident[split])

    test = loader("test", cfg.eval.batch_size, False) if cfg.train.track_test else None
    return Loaders(
        loader("train", cfg.train.batch_size, True), loader("val", cfg.eval.batch_size, False), test
    )


def _claim_checkpoints(ckpt_dir: Path, tag: str) -> str | None:
    """The MLflow run to continue if ckpt_dir holds this very training; else empty the folder."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads((ckpt_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        previous = {}
    if isinstance(previous, dict) and previous.get("tag") == tag:
        return previous.get("run_id")
    if any(ckpt_dir.iterdir()):
        print(f"{ckpt_dir}: checkpoints of a different config or data; starting fresh")
    _empty(ckpt_dir)
    return None


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _publish_models(ckpt_dir: Path, models_dir: Path, run_id: str) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    # the last epoch's resume state (optimizer included, ~3x best.pt) is not published:
    # nothing reads it once training is over, and every experiment would cache a copy
    shutil.copy2(ckpt_dir / BEST_FILE, models_dir / BEST_FILE)
    write_run_file(models_dir / RUN_FILE, run_id)


def _reports(result: FitResult, val_labels: np.ndarray, calibration: Calibration) -> dict[str, str]:
    """history.csv and metrics.json, as text."""
    metrics = {"best_epoch": result.best_epoch, **{k: result.best[k] for k in SELECTED}}
    # "always grade 0" scores this: the bar a useful model must clear
    metrics["val_majority_acc"] = float(np.bincount(val_labels).max() / len(val_labels))
    metrics |= calibration_metrics(calibration.thresholds, calibration.eye_weight, prefix="")
    return {
        "history.csv": pd.DataFrame(result.history).to_csv(index=False),
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
    }
