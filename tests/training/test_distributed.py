"""torchrun + DDP on CPU (gloo, 2 processes) on tiny data."""

import json
import time

import pandas as pd
import pytest

from retino.training.distributed import gather_ordered
from tests.conftest import tiny_config
from tests.training.test_train import run_train, runs, start_stage, write_params

# Same global batch (16) as one process with batch 16, same initial weights, no augmentation and
# a learning rate too small to move the weights: the first-epoch train loss is then the initial
# model's mean loss over every train image, reduced across ranks. What DDP changes by design
# remains: BatchNorm statistics over 8 images per rank instead of 16, and which images share a
# batch (DistributedSampler's order). On these 36 images that moves the loss by a few per cent.
LOSS_TOLERANCE = 0.05
NO_AUGMENT = {"train__augment__hflip": 0.0, "train__augment__vflip": 0.0,
              "train__augment__rotation": 0.0, "train__augment__scale_min": 1.0,
              "train__augment__color_jitter": 0.0}  # fmt: skip


def test_two_processes_one_run_close_to_single_process(project):
    single = tiny_config(train__epochs=1, train__batch_size=16, train__lr=1e-8, **NO_AUGMENT)
    run_train(project, single, "single")
    single_loss = pd.read_csv(project / "single/reports/history.csv").train_loss[0]

    ddp = tiny_config(
        train__epochs=1, train__batch_size=8, train__lr=1e-8, train__nproc=2, **NO_AUGMENT
    )
    write_params(project / "params.yaml", ddp)
    proc = start_stage(project, "ddp")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "launching 2 processes" in out
    assert out.count("best epoch") == 1  # rank 1 stays silent

    history = pd.read_csv(project / "ddp/reports/history.csv")
    assert len(history) == 1
    assert history.train_loss[0] == pytest.approx(single_loss, rel=LOSS_TOLERANCE)
    assert sorted(p.name for p in (project / "ddp/models").iterdir()) == [
        "best.pt", "last.pt", "run.json"
    ]  # fmt: skip
    table = runs(project)
    assert len(table) == 2  # the single-process run and exactly one for the DDP job
    ddp_run = json.loads((project / "ddp/models/run.json").read_text())["run_id"]
    row = table[table.run_id == ddp_run].iloc[0]
    assert row.status == "FINISHED" and row["params.train.nproc"] == "2"
    assert row["metrics.val_qwk"] == history.val_qwk[0]


def test_a_failing_rank_ends_the_job_with_its_message(project, tmp_path):
    # rank 1 fails at its first training step; rank 0 must not hang in the next collective
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import retino.training.engine\n"
        "    def boom(*args, **kwargs):\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    retino.training.engine.train_one_epoch = boom\n"
    )
    write_params(project / "params.yaml",
                 tiny_config(train__nproc=2, train__dist_timeout=60))  # fmt: skip
    start = time.monotonic()
    proc = start_stage(project, "fail", extra_path=str(hook))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in err
    assert "error: distributed training failed" in err
    assert time.monotonic() - start < 240
    assert set(runs(project).status) <= {"FAILED", "KILLED"}


def test_gather_restores_order_without_padding():
    import torch

    class Job:  # two ranks' shards of 5 samples, as DistributedSampler(shuffle=False) deals them
        enabled, world_size = True, 2

    shards = [torch.tensor([0, 2, 4]), torch.tensor([1, 3, 0])]  # rank 1 padded with sample 0
    import torch.distributed as dist

    original = dist.all_gather
    dist.all_gather = lambda parts, local: [p.copy_(s) for p, s in zip(parts, shards, strict=True)]
    try:
        assert gather_ordered(Job(), shards[0], 5).tolist() == [0, 1, 2, 3, 4]
    finally:
        dist.all_gather = original
