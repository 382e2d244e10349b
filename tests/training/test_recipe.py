"""The training recipe's options do what params.yaml says: schedules, class weights, label
smoothing, lr scaling, which epoch is selected, the frozen first phase, resume only of the very
same training, and the kappa recipe (regression head, balanced sampling, flip TTA, both eyes),
resumed bit for bit."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from retino.data.samplers import GradeSampler
from retino.training import checkpoint
from retino.training.distributed import Dist
from retino.training.engine import better
from retino.training.optim import class_weights, lr_factor, make_criterion, make_optimizer
from retino.training.train import build_loaders
from tests.conftest import tiny_config
from tests.training.test_models import random_imagenet_weights
from tests.training.test_train import run_train, runs

CPU = torch.device("cpu")


def factors(**overrides) -> list[float]:
    cfg = tiny_config(**{f"train__{k}": v for k, v in overrides.items()}).train
    return [lr_factor(epoch, cfg) for epoch in range(cfg.epochs)]


def test_cosine_after_warm_up():
    got = factors(schedule="cosine", epochs=6, warmup_epochs=1)
    # warm-up epoch 0 at 1/2, then half a cosine over the 5 remaining epochs
    expected = [0.5] + [0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    assert got == pytest.approx(expected)


def test_step_decays_every_step_size_epochs():
    got = factors(schedule="step", epochs=6, warmup_epochs=0, step_size=2, gamma=0.1)
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_after_a_linear_warm_up():
    got = factors(schedule="constant", epochs=5, warmup_epochs=2)
    assert got == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])


def test_scale_lr_multiplies_by_the_process_count():
    model = torch.nn.Linear(2, 5)
    scaled = tiny_config(train__lr=0.01, train__scale_lr=True).train
    plain = tiny_config(train__lr=0.01, train__scale_lr=False).train
    assert make_optimizer(model, scaled, 4).param_groups[0]["lr"] == pytest.approx(0.04)
    assert make_optimizer(model, plain, 4).param_groups[0]["lr"] == 0.01


def test_class_weights_give_every_present_grade_the_same_total_weight():
    labels = np.array([0] * 12 + [1] * 4 + [2] * 3 + [4] * 1)  # no grade 3
    weights = class_weights(labels).numpy()
    totals = weights * np.bincount(labels, minlength=5)
    assert totals[[0, 1, 2, 4]] == pytest.approx([totals[0]] * 4)
    assert weights[3] == 0 and weights[4] > weights[2] > weights[1] > weights[0]


def test_weighted_and_smoothed_criterion_is_the_textbook_loss():
    labels = np.array([0] * 6 + [1] * 2 + [2, 3, 4, 4])
    logits = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    y = torch.as_tensor(labels)
    cfg = tiny_config(train__class_weights=True, train__label_smoothing=0.2).train
    loss = make_criterion(cfg, labels, torch.device("cpu"))(logits, y)
    # label smoothing: the target is 0.8 on the grade plus 0.2 spread evenly over all five
    target = 0.8 * F.one_hot(y, 5) + 0.2 / 5
    w = class_weights(labels)
    per_sample = -(target * w * F.log_softmax(logits, 1)).sum(1)
    assert loss.item() == pytest.approx((per_sample.sum() / w[y].sum()).item(), rel=1e-6)
    plain = tiny_config(train__class_weights=False, train__label_smoothing=0.0).train
    assert make_criterion(plain, labels, torch.device("cpu"))(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y).item()
    )


def test_regression_criterion_is_the_weighted_squared_error():
    labels = np.array([0] * 6 + [1] * 2 + [2, 3, 4, 4])
    scores = torch.randn(12, 1, generator=torch.Generator().manual_seed(0))
    y = torch.as_tensor(labels)
    plain = tiny_config(train__loss="regression", train__class_weights=False).train
    got = make_criterion(plain, labels, torch.device("cpu"))(scores, y)
    assert got.item() == pytest.approx(F.mse_loss(scores[:, 0], y.float()).item(), rel=1e-6)
    weighted = tiny_config(train__loss="regression", train__class_weights=True).train
    w = class_weights(labels)[y]
    expected = (w * (scores[:, 0] - y) ** 2).sum() / w.sum()
    got = make_criterion(weighted, labels, torch.device("cpu"))(scores, y)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_train_split_is_drawn_by_the_configured_sampler(project):
    data = (project / "prepared", project / "preprocessed")
    for name in ("balanced", "progressive"):
        loaders = build_loaders(tiny_config(train__sampler=name), *data, CPU, Dist())
        assert isinstance(loaders.train.sampler, GradeSampler)
        assert loaders.train.sampler.mode == name
    shuffled = build_loaders(tiny_config(train__sampler="shuffle"), *data, CPU, Dist())
    assert not isinstance(shuffled.train.sampler, GradeSampler)
    assert not isinstance(shuffled.val.sampler, GradeSampler)


KAPPA_RECIPE = {"train__loss": "regression", "train__sampler": "progressive",
                "eval__tta": "flips", "eval__paired_eyes": True}  # fmt: skip


@pytest.mark.slow  # two trainings
def test_the_kappa_recipe_resumes_bit_for_bit(project):
    cfg = tiny_config(train__epochs=2, **KAPPA_RECIPE)
    full = run_train(project, cfg, "full")

    # the power goes after epoch 1 is on disk (resume.pt written, the epoch's line not printed)
    def power_cut(row, epochs):
        raise RuntimeError("power cut")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError, match="power cut"):
        mp.setattr("retino.training.engine._epoch_line", power_cut)
        run_train(project, cfg, "crash")
    assert checkpoint.load(project / "crash" / "ckpt" / "resume.pt").epoch == 1
    resumed = run_train(project, cfg, "crash")
    assert (project / "crash/reports/metrics.json").read_bytes() == (
        project / "full/reports/metrics.json"
    ).read_bytes()
    a, b = (checkpoint.load(project / name / "models" / "best.pt") for name in ("full", "crash"))
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert (a.thresholds, a.eye_weight) == (b.thresholds, b.eye_weight)

    # the fitted rule: in metrics.json, best.pt, the run and the logged model's metadata
    assert resumed == full
    assert a.thresholds == [full[f"threshold_{k}"] for k in range(1, 5)]
    assert a.eye_weight == full["eye_weight"] and 0 <= a.eye_weight <= 0.5
    assert a.model["fc.weight"].shape == (1, 512)  # one output: the grade
    run_id = json.loads((project / "full" / "models" / "run.json").read_text())["run_id"]
    run = runs(project).set_index("run_id").loc[run_id]
    for k in range(1, 5):
        assert run[f"metrics.best/threshold_{k}"] == full[f"threshold_{k}"]
    assert run["metrics.best/eye_weight"] == full["eye_weight"]
    assert (
        "; regression, progressive sampling, flips TTA, both eyes; "
        in run["tags.mlflow.note.content"]
    )


def test_losses_select_the_lowest_and_scores_the_highest():
    assert better("val_loss", 0.4, 0.5) and not better("val_loss", 0.6, 0.5)
    assert better("val_qwk", 0.6, 0.5) and not better("val_qwk", 0.4, 0.5)
    assert better("val_acc", 0.1, None)


def test_val_loss_selects_the_epoch_of_lowest_validation_loss(project):
    cfg = tiny_config(train__epochs=3, train__select_metric="val_loss")
    metrics = run_train(project, cfg)
    history = pd.read_csv(project / "reports" / "history.csv")
    assert history.val_loss.nunique() == 3  # the direction matters on this run
    assert metrics["best_epoch"] == history.val_loss.idxmin() + 1
    assert metrics["val_loss"] == history.val_loss.min()
    # and the schedule ran as configured, one lr per epoch (cosine, no warm-up here)
    expected = [0.003 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    assert list(history.lr) == pytest.approx(expected)


def backbone_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainable backbone tensors: BatchNorm running statistics move even when frozen."""
    learnable = {name for name, _ in resnet18().named_parameters()}
    return {k: v for k, v in state.items() if k in learnable and not k.startswith("fc.")}


@pytest.mark.parametrize("freeze_epochs, frozen", [(1, True), (0, False)])
def test_freeze_epochs_train_the_head_only(project, freeze_epochs, frozen):
    weights = project / "imagenet.pth"
    start = backbone_weights(random_imagenet_weights(weights))
    cfg = tiny_config(pretrained=str(weights), train__epochs=1, train__freeze_epochs=freeze_epochs)
    run_train(project, cfg)
    best = checkpoint.load(project / "models" / "best.pt").model
    unchanged = [torch.equal(best[k], v) for k, v in start.items()]
    assert all(unchanged) if frozen else not any(unchanged)


@pytest.mark.slow  # two trainings
def test_a_changed_config_retrains_from_scratch(project, capsys):
    # a training that finished its epochs but died before publishing leaves resume.pt behind
    def crash(*args):
        raise RuntimeError("disk full")

    # a context of its own: undoing the fixture's monkeypatch would also undo the project's
    # chdir and DVC_ROOT, and the next run would log to a store in the checkout
    with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError, match="disk full"):
        mp.setattr("retino.training.train._publish_models", crash)
        run_train(project, tiny_config(train__epochs=1, train__lr=0.003), "a")
    assert checkpoint.load(project / "a" / "ckpt" / "resume.pt").epoch == 1

    changed = tiny_config(train__epochs=1, train__lr=0.001)
    resumed = run_train(project, changed, "a")  # same checkpoint folder, other lr
    out = capsys.readouterr().out
    assert "different config or data; starting fresh" in out and "resuming" not in out
    assert resumed == run_train(project, changed, "b")  # as a run that never saw the old one
