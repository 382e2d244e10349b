"""The CUDA path — bf16 autocast, channels_last, pinned loaders with workers, torch.compile — on
a GPU only: skipped elsewhere. benchmarks/gpu.sh runs these on one."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from retino.config import AugmentConfig
from retino.data.dataset import CachedSplit
from retino.data.transforms import BatchTransform
from retino.training import checkpoint
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

MEAN, STD = [0.45, 0.3, 0.2], [0.25, 0.2, 0.15]


def transformed(device: str, augment: AugmentConfig, images: torch.Tensor) -> torch.Tensor:
    transform = BatchTransform(MEAN, STD, torch.device(device), augment, device == "cuda")
    return transform(images, torch.Generator().manual_seed(5))


def test_flips_on_the_gpu_equal_the_cpu_exactly():
    images = torch.randint(0, 256, (16, 3, 48, 48), dtype=torch.uint8)
    flips = AugmentConfig(hflip=0.5, vflip=0.5, rotation=0.0, scale_min=1.0, color_jitter=0.0)
    gpu = transformed("cuda", flips, images.pin_memory())
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(gpu.cpu(), transformed("cpu", flips, images))


def test_warp_and_jitter_on_the_gpu_match_the_cpu():
    images = torch.randint(0, 256, (16, 3, 48, 48), dtype=torch.uint8)
    full = AugmentConfig(hflip=0.5, vflip=0.5, rotation=30.0, scale_min=0.8, color_jitter=0.2)
    gpu, cpu = transformed("cuda", full, images).cpu(), transformed("cpu", full, images)
    # the same random draws (a CPU generator): only float rounding in grid_sample may differ
    assert (cpu != transformed("cpu", None, images)).any()  # the warp did something
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=0)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_training_and_grading_on_the_gpu(project, compile):
    from retino.evaluation.evaluate import predict_split
    from retino.evaluation.predict import load_predictor
    from tests.training.test_train import run_train, runs

    # the CUDA defaults: loader workers (one per core, at most 8), pinned memory
    cfg = tiny_config(train__device="cuda", train__compile=compile, data__num_workers=-1)
    metrics = run_train(project, cfg)
    history = pd.read_csv(project / "reports" / "history.csv")
    assert list(history.epoch) == [1, 2]
    assert all(math.isfinite(v) for v in metrics.values())
    assert history.train_loss.notna().all() and (history.images_per_s > 0).all()
    run = runs(project).iloc[0]
    assert run.status == "FINISHED"
    assert run["tags.device"].startswith(f"cuda:0 ({torch.cuda.get_device_name(0)}")

    # bf16 is only the autocast compute: the weights stay float32, and load on any device
    best = checkpoint.load(project / "models" / "best.pt")
    assert {t.dtype for t in best.model.values() if t.is_floating_point()} == {torch.float32}
    cached = CachedSplit(project / "preprocessed", project / "prepared", "test")
    on_gpu = predict_split(load_predictor(str(project / "models" / "best.pt"), "cuda"), cached)
    on_cpu = predict_split(load_predictor(str(project / "models" / "best.pt"), "cpu"), cached)
    probs = [f"p{g}" for g in range(5)]
    # bf16 autocast on the GPU, fp32 on the CPU: probabilities agree to bf16 precision
    assert np.abs(on_gpu[probs].to_numpy() - on_cpu[probs].to_numpy()).max() < 0.05


def test_the_kappa_recipe_on_the_gpu(project):
    from retino.evaluation.evaluate import predict_split
    from retino.evaluation.predict import load_predictor
    from tests.training.test_train import run_train

    # the regression head under bf16 autocast, a balancing sampler through pinned loader workers,
    # flip TTA on channels_last batches, the eye blend
    recipe = {"train__loss": "regression", "train__sampler": "progressive",
              "eval__tta": "flips", "eval__paired_eyes": True}  # fmt: skip
    cfg = tiny_config(train__device="cuda", data__num_workers=-1, **recipe)
    metrics = run_train(project, cfg)
    assert all(math.isfinite(v) for v in metrics.values())
    thresholds = [metrics[f"threshold_{k}"] for k in range(1, 5)]
    assert thresholds == sorted(thresholds) and 0 <= metrics["eye_weight"] <= 0.5
    best = project / "models" / "best.pt"
    cached = CachedSplit(project / "preprocessed", project / "prepared", "test")
    on_gpu = predict_split(load_predictor(str(best), "cuda"), cached)
    on_cpu = predict_split(load_predictor(str(best), "cpu"), cached)
    # the flip-averaged, blended scores agree to bf16 precision
    np.testing.assert_allclose(on_gpu.score, on_cpu.score, rtol=0.02, atol=0.05)
