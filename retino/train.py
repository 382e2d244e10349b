"""The train step: prepared splits -> models/{best,last}.pt, history and metrics, one MLflow run.

Work in progress lives in a checkpoint folder that DVC does not wipe (`persist: true`):
resume.pt and best.pt after every epoch, and run.json with the MLflow run id and the fingerprint
of what is being trained. The next `dvc repro` after a crash resumes there and logs into the
same run; a different config or data starts over. A finished training publishes its outputs and
empties the folder, so `dvc repro --force` trains from scratch.
"""

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data.distributed import DistributedSampler

from retino.config import Config
from retino.data import FundusDataset, default_workers, make_loader, read_split, read_stats
from retino.distributed import Dist, barrier, setup, teardown
from retino.engine import (
    BEST_FILE,
    RESUME_FILE,
    FitResult,
    Loaders,
    fingerprint,
    fit,
    load_checkpoint,
    read_resume,
    resolve_device,
    save_atomic,
)
from retino.models import build_model
from retino.tracking import open_run, project_root, run_name, run_tags, write_run_file
from retino.transforms import BatchTransform

RUN_FILE = "run.json"
# metrics.json holds what identical runs reproduce bit for bit and what selection looked at:
# no timings (history and MLflow have them), no test numbers (the evaluate stage owns those)
SELECTED = ("train_loss", "train_acc", "val_loss", "val_acc", "val_qwk")


def train(
    cfg: Config,
    data_root: Path,
    prepared: Path,
    models_dir: Path,
    reports_dir: Path,
    ckpt_dir: Path,
) -> FitResult:
    """Train (as one process, or as one rank of a torchrun job) and publish the outputs."""
    torch.manual_seed(cfg.seed)  # model initialisation, identical on every rank
    job, device = setup(cfg.train, resolve_device(cfg.train.device))
    try:
        return _train(cfg, job, device, data_root, prepared, models_dir, reports_dir, ckpt_dir)
    finally:
        teardown(job)


def _train(
    cfg: Config,
    job: Dist,
    device: torch.device,
    data_root: Path,
    prepared: Path,
    models_dir: Path,
    reports_dir: Path,
    ckpt_dir: Path,
) -> FitResult:
    stats = read_stats(prepared)
    cuda = device.type == "cuda"
    train_tf = BatchTransform(stats["mean"], stats["std"], device, cfg.train.augment, cuda)
    eval_tf = BatchTransform(stats["mean"], stats["std"], device, None, cuda)
    loaders = _loaders(cfg, data_root, prepared, cuda, job)
    model = build_model(cfg.arch, cfg.pretrained, cfg.train.weights)

    tag = fingerprint(cfg, prepared)
    run_id = _claim_checkpoints(ckpt_dir, tag) if job.is_main else None
    barrier(job)  # every rank resumes from what rank 0 kept (one shared filesystem)
    resume = read_resume(ckpt_dir, tag)
    run_fit = functools.partial(
        fit, model, loaders, train_tf, eval_tf, cfg, ckpt_dir, tag, resume, job=job
    )
    if not job.is_main:  # the other ranks compute; rank 0 alone logs and writes
        return run_fit()

    flat = cfg.flat()
    root = project_root()
    with open_run(root, run_id, run_name(flat), run_tags(root, flat)) as run:
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"run_id": run.run_id, "tag": tag}) + "\n")
        if run_id is None:
            run.log_params(flat)
        if resume is not None:  # a kill may have come between checkpoint and logging
            run.log_history(resume["history"])
        result = run_fit(on_epoch=lambda epoch, row: run.log_history([row]))
        val_labels = loaders.val.dataset.labels.numpy()
        _publish(result, val_labels, stats, ckpt_dir, models_dir, reports_dir, run.run_id)
        run.log_metrics({"best_epoch": result.best_epoch})
        run.log_artifact(models_dir / BEST_FILE, "checkpoints")
        run.log_artifact(reports_dir / "history.csv")
        model.load_state_dict(load_checkpoint(models_dir / BEST_FILE)["model"])
        size = cfg.data.image_size
        # batch of 2: an example batch of 1 would freeze the exported graph to batch size 1
        run.log_model(model.cpu().float(), np.zeros((2, 3, size, size), dtype=np.float32))
    for path in ckpt_dir.iterdir():  # finished: nothing left to resume
        path.unlink()
    metric = cfg.train.select_metric
    print(f"best epoch {result.best_epoch}: {metric} {result.best[metric]:.4f}")
    return result


def _loaders(cfg: Config, data_root: Path, prepared: Path, pin: bool, job: Dist) -> Loaders:
    workers = default_workers(cfg.data.num_workers)
    size = cfg.data.image_size

    def loader(split: str, batch_size: int, shuffle: bool):
        dataset = FundusDataset(read_split(prepared, split), data_root, size)
        # The order of epoch e is a permutation seeded by (seed, e) (the engine calls set_epoch),
        # whatever the loader did before: a resumed run gets the same batches as an
        # uninterrupted one. A DataLoader's own generator would not do: with persistent workers
        # it is drawn from once per iterator, so epoch 2 shuffles differently after a restart.
        # Under DDP each rank reads its own shard.
        sampler = DistributedSampler(
            dataset, num_replicas=job.world_size, rank=job.rank, shuffle=shuffle, seed=cfg.seed
        )
        return make_loader(dataset, batch_size, shuffle, workers, pin, sampler)

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
    if previous.get("tag") == tag:
        return previous.get("run_id")
    if any(ckpt_dir.iterdir()):
        print(f"{ckpt_dir}: checkpoints of a different config or data; starting fresh")
    for path in ckpt_dir.iterdir():
        path.unlink()
    return None


def _publish(
    result: FitResult,
    val_labels: np.ndarray,
    stats: dict,
    ckpt_dir: Path,
    models_dir: Path,
    reports_dir: Path,
    run_id: str,
) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    # the input normalisation travels with the weights: best.pt alone is enough to predict
    best = load_checkpoint(ckpt_dir / BEST_FILE)
    save_atomic({**best, "mean": stats["mean"], "std": stats["std"]}, models_dir / BEST_FILE)
    shutil.copy2(ckpt_dir / RESUME_FILE, models_dir / "last.pt")
    write_run_file(models_dir / RUN_FILE, run_id)
    reports_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.history).to_csv(reports_dir / "history.csv", index=False)
    metrics = {"best_epoch": result.best_epoch, **{k: result.best[k] for k in SELECTED}}
    # "always grade 0" scores this: the bar a useful model must clear
    metrics["val_majority_acc"] = float(np.bincount(val_labels).max() / len(val_labels))
    (reports_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
