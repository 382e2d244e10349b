"""The CUDA path — the cache feed (data.cache_device), steps that never wait for the GPU, bf16
autocast, channels_last, fused optimizers, torch.compile — on a GPU only: skipped elsewhere.
benchmarks/gpu.sh runs these on one."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data.distributed import DistributedSampler

from retino.config import AugmentConfig
from retino.data.dataset import CachedSplit, make_loader
from retino.data.feed import CacheFeed
from retino.data.transforms import BatchTransform
from retino.training import checkpoint
from retino.training.distributed import Dist
from retino.training.engine import EpochSums, train_step
from retino.training.train import build_loaders, build_trainee
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

MEAN, STD = [0.45, 0.3, 0.2], [0.25, 0.2, 0.15]
CUDA = torch.device("cuda", 0)


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


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streamed"])
def test_the_cache_feed_on_the_gpu_gives_the_cpu_loaders_batches(project, resident):
    split = CachedSplit(project / "preprocessed", project / "prepared", "train")
    sampler = DistributedSampler(split, num_replicas=1, rank=0, shuffle=True, seed=7)
    loader = make_loader(split, 5, True, 0, False, sampler)
    feed = CacheFeed(split, 5, sampler, CUDA, resident)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected, got = list(loader), list(feed)
        assert len(got) == len(expected) == len(feed)
        for (x, y), (images, labels) in zip(expected, got, strict=True):
            assert images.device.type == labels.device.type == "cuda"
            assert images.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(images.cpu(), x) and torch.equal(labels.cpu(), y)


@pytest.mark.parametrize("loss", ["ce", "regression"])
def test_a_train_step_never_waits_for_the_gpu(project, loss):
    # torch raises on any host-device synchronisation while the debug mode is "error": the
    # feed's gather, the augmentation, the step, the fused optimizer and the running sums
    cfg = tiny_config(train__device="cuda", train__loss=loss, train__augment__rotation=10.0,
                      train__augment__scale_min=0.9, train__augment__color_jitter=0.1)  # fmt: skip
    loaders = build_loaders(cfg, project / "prepared", project / "preprocessed", CUDA, Dist())
    assert isinstance(loaders.train, CacheFeed) and loaders.train.resident
    index = json.loads((project / "preprocessed" / "index.json").read_text())
    normalisation = {"mean": index["mean"], "std": index["std"]}
    t = build_trainee(cfg, loaders, normalisation, CUDA, Dist())
    generator, sums = torch.Generator().manual_seed(0), EpochSums(CUDA)
    batches = iter(loaders.train)

    def step(number: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        loss, logits, y = train_step(t.model, images, labels, t.train_tf, t.optimizer,
                                     t.criterion, generator)  # fmt: skip
        sums.add(number, loss, t.head.batch_grades(logits), y)

    step(1, *next(batches))  # the first: the upload, cuDNN's set-up, the fused kernels' state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for number, (images, labels) in enumerate(batches, start=2):
            step(number, images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    total, _, seen, _ = sums.read(1, t.optimizer)  # the epoch's one wait
    assert seen == len(loaders.train.dataset) and math.isfinite(total)


def test_compile_is_guarded_where_the_last_feature_map_is_one_pixel():
    # On an H200 the compiled backward failed at 32 px (layer4 at 1 x 1: inductor's stride check
    # in convolution_backward) once cudnn.benchmark was on. At 32 px `compiled` now keeps the
    # model eager; at 64 px (2 x 2) it compiles, and must train there with cudnn.benchmark too.
    from torchvision.models import resnet18

    from retino.training.engine import compiled

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        for size in (32, 64):
            torch.manual_seed(0)
            model = resnet18(num_classes=5).to(CUDA, memory_format=torch.channels_last)
            net = compiled(model, size)
            assert (net is model) == (size == 32)
            optimizer = torch.optim.AdamW(model.parameters(), fused=True)
            for batch in (8, 8, 5):  # a shorter last batch, as at an epoch's end
                x = torch.randn(batch, 3, size, size, device=CUDA)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = F.cross_entropy(net(x).float(), torch.zeros(batch, dtype=torch.long,
                                                                     device=CUDA))  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            assert math.isfinite(loss.item())
    finally:
        torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_training_and_grading_on_the_gpu(project, compile):
    from retino.data.preprocess import preprocess
    from retino.evaluation.evaluate import predict_split
    from retino.evaluation.predict import load_predictor
    from tests.training.test_train import run_train, runs

    # the CUDA defaults: the splits in GPU memory; compiled at 64 px, where compile applies
    size = 64 if compile else 32
    cfg = tiny_config(train__device="cuda", train__compile=compile, data__num_workers=-1,
                      data__image_size=size)  # fmt: skip
    if compile:
        preprocess(project / "data", project / "prepared", project / "preprocessed", cfg)
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
