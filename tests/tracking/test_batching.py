"""Concurrent callers of a served network share its batches and each gets its own rows back;
a failing batch fails its callers only."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from retino.tracking.batching import SharedForward

CALLERS = 8


class Recording(nn.Module):
    """Doubles its input; records each batch's size; the first batch is slow, so that the other
    callers arrive while it runs; an input holding -1 fails its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(self.batches) == 1:
            time.sleep(0.5)
        if (x == -1).any():
            raise RuntimeError("a bad batch")
        return x * 2


def call_at_once(shared: SharedForward, inputs: list[torch.Tensor]) -> list:
    """Each input from a thread of its own, all started together: (output or exception)."""
    start = threading.Barrier(len(inputs))

    def call(x: torch.Tensor) -> torch.Tensor | Exception:
        start.wait()
        try:
            return shared(x)
        except RuntimeError as err:
            return err

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(call, inputs))


def test_concurrent_calls_share_batches_and_get_their_own_rows():
    model = Recording()
    inputs = [torch.full((1 + i % 3, 2), float(i)) for i in range(CALLERS)]
    outputs = call_at_once(SharedForward(model, max_batch=64), inputs)
    for x, out in zip(inputs, outputs, strict=True):
        assert torch.equal(out, x * 2)
    assert sum(model.batches) == sum(len(x) for x in inputs)
    assert len(model.batches) < CALLERS  # the ones that came during the first batch went as one


def test_a_batch_holds_at_most_max_batch_images_and_a_larger_input_goes_alone():
    model = Recording()
    inputs = [torch.ones(2, 2)] * (CALLERS - 1) + [torch.ones(7, 2)]
    outputs = call_at_once(SharedForward(model, max_batch=4), inputs)
    assert all(torch.equal(out, x * 2) for x, out in zip(inputs, outputs, strict=True))
    assert model.batches.count(7) == 1 and 4 in model.batches
    assert all(size <= 4 for size in model.batches if size != 7)


def test_a_failing_batch_fails_its_callers_and_the_next_call_runs():
    model = Recording()
    shared = SharedForward(model, max_batch=64)
    inputs = [torch.full((1, 2), -1.0 if i == CALLERS - 1 else float(i)) for i in range(CALLERS)]
    outputs = call_at_once(shared, inputs)
    failed = [out for out in outputs if isinstance(out, Exception)]
    assert failed and all(str(err) == "a bad batch" for err in failed)
    assert any(isinstance(out, torch.Tensor) for out in outputs)  # the slow first batch
    assert torch.equal(shared(torch.ones(2, 2)), torch.full((2, 2), 2.0))  # nobody is stuck


@pytest.mark.parametrize("threads", [1, 4])
def test_a_network_in_eval_mode_gives_what_it_gives_alone(threads):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
    net(torch.randn(2, 3, 8, 8))
    net.eval()
    inputs = [torch.randn(1, 3, 8, 8) for _ in range(threads * 2)]
    with torch.no_grad():
        alone = [net(x) for x in inputs]
        with ThreadPoolExecutor(threads) as pool:
            shared = list(pool.map(SharedForward(net, 64), inputs))
    for a, s in zip(alone, shared, strict=True):
        torch.testing.assert_close(s, a, rtol=0, atol=1e-6)
