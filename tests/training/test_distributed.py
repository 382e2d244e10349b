"""torchrun + DDP on CPU (gloo, 2 processes) on tiny data."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from retino.training.distributed import gather_ordered
from tests.conftest import tiny_config
from tests.training.test_models import random_imagenet_weights
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


@pytest.mark.slow
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
    assert sorted(p.name for p in (project / "ddp/models").iterdir()) == ["best.pt", "run.json"]
    table = runs(project)
    assert len(table) == 2  # the single-process run and exactly one for the DDP job
    ddp_run = json.loads((project / "ddp/models/run.json").read_text())["run_id"]
    row = table[table.run_id == ddp_run].iloc[0]
    assert row.status == "FINISHED" and row["params.train.nproc"] == "2"
    assert row["metrics.val/qwk"] == history.val_qwk[0]
    assert row["metrics.train/qwk"] == history.train_qwk[0]


@pytest.mark.slow
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
    proc = start_stage(project, "fail", extra_path=str(hook))
    _, err = proc.communicate(timeout=300)  # a hang guard
    assert proc.returncode != 0
    assert "injected failure on rank 1" in err
    assert "error: distributed training failed" in err
    assert set(runs(project).status) <= {"FAILED", "KILLED"}


# Each rank saves its parameters when fit returns (the hook runs in every torchrun child).
SAVE_PARAMS = """
import os
if os.environ.get("RANK") is not None:
    import torch
    import retino.training.engine as engine
    fit = engine.fit
    def fit_then_save(trainee, *args, **kwargs):
        result = fit(trainee, *args, **kwargs)
        params = {k: v.detach().clone() for k, v in trainee.model.named_parameters()}
        torch.save(params, os.path.join(os.environ["PARAMS_OUT"], os.environ["RANK"] + ".pt"))
        return result
    engine.fit = fit_then_save
"""


@pytest.mark.slow
def test_unfreezing_rewraps_ddp_so_the_ranks_stay_in_step(project, tmp_path, monkeypatch):
    # DDP all-reduces the gradients of the parameters that required them when it was built: if
    # fit kept the head-only wrapper after freeze_epochs, the backbones would drift apart
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SAVE_PARAMS)
    monkeypatch.setenv("PARAMS_OUT", str(tmp_path))
    weights = project / "imagenet.pth"
    start = random_imagenet_weights(weights)
    cfg = tiny_config(pretrained=str(weights), train__epochs=2, train__freeze_epochs=1,
                      train__nproc=2)  # fmt: skip
    write_params(project / "params.yaml", cfg)
    proc = start_stage(project, "freeze", extra_path=str(hook))
    _, err = proc.communicate(timeout=600)  # a hang guard
    assert proc.returncode == 0, err
    rank0, rank1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    backbone = [k for k in rank0 if not k.startswith("fc.")]
    assert not any(torch.equal(rank0[k], start[k]) for k in backbone)  # epoch 2 trained it


def test_gather_restores_order_without_padding():
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


def _epoch_on_rank(rank: int, world_size: int, init: str, out: str) -> None:
    """One train_one_epoch of `_tiny_epoch`'s model on this rank's shard, joined over gloo."""
    import torch.distributed as dist

    from retino.training.distributed import Dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        metrics = _tiny_epoch(Dist(rank, world_size, rank))
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(metrics))


def _tiny_epoch(job) -> dict[str, float]:
    """A linear model (no BatchNorm: a sample's prediction does not depend on its batch) that
    does not learn (lr 0), over 40 fixed images of mixed grades."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from retino.data.transforms import BatchTransform
    from retino.training.engine import epoch_generator, train_one_epoch

    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 5, (40,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    data = TensorDataset(images, labels)
    sampler = DistributedSampler(data, job.world_size, job.rank, shuffle=False)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    transform = BatchTransform([0.5] * 3, [0.25] * 3, torch.device("cpu"), None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return train_one_epoch(model, loader, transform, optimizer, nn.CrossEntropyLoss(),
                           epoch_generator(0, 0, job.rank), 1, job=job)  # fmt: skip


@pytest.mark.slow
def test_train_qwk_under_ddp_is_that_of_all_predictions(tmp_path):
    # two gloo ranks each see half the images; their summed confusion matrix gives the QWK of
    # all 40 predictions, exactly as one process computes it (a mean of per-rank QWKs would not)
    import torch.multiprocessing as mp

    from retino.training.distributed import Dist

    single = _tiny_epoch(Dist())
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_epoch_on_rank, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        ranks = json.loads((tmp_path / f"{rank}.json").read_text())
        assert ranks["qwk"] == single["qwk"] and ranks["acc"] == single["acc"]
        assert ranks["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert 0 < abs(single["qwk"]) < 1  # a real mix of right and wrong grades
