"""One network forward for the photographs of concurrent requests.

`mlflow models serve` grades each request in a thread of its own, and most requests hold one
photograph: alone, each would run the network at batch size 1, which costs a CPU about half as
much again per image as a batch of eight. `SharedForward` stands in for the network in a served
model: a call that arrives while another thread's forward runs waits, and when that forward ends,
one of the waiting threads runs the waiting calls as one batch and hands each its rows. Nothing
waits on a timer: a lone request runs at once, at the latency it had alone.

The thread that runs a batch is one of the callers, so the batch runs under that caller's
thread-local torch state (no_grad, autocast): every caller is `engine.predict`, which sets the
same. Each image's output does not depend on its batch (the network is in eval mode), up to the
last float bits the kernels' batch shapes change, as between `retino predict`'s batches.
"""

import threading
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(eq=False)
class _Call:
    x: torch.Tensor
    woken: threading.Event = field(default_factory=threading.Event)
    leads: bool = False  # this caller runs the next batch itself
    out: torch.Tensor | None = None
    error: BaseException | None = None


class SharedForward(nn.Module):
    """`model` for threads that call it at once: their inputs go as one batch of up to
    `max_batch` images (a larger input goes alone)."""

    def __init__(self, model: nn.Module, max_batch: int) -> None:
        super().__init__()
        self.model, self.max_batch = model, max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._busy = False  # a batch is running; a new call waits for it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = _Call(x)
        with self._lock:
            self._waiting.append(call)
            call.leads, self._busy = not self._busy, True
        if not call.leads:
            call.woken.wait()  # answered, or told to run the next batch
        if call.leads:
            self._run_batch()
        if call.error is not None:
            raise call.error
        return call.out

    def _run_batch(self) -> None:
        """Run the waiting calls, oldest first (the leader is the oldest), as one batch; then
        hand the lead to the oldest call still waiting, if any."""
        with self._lock:
            batch, images = [self._waiting[0]], len(self._waiting[0].x)
            for call in self._waiting[1:]:
                if images + len(call.x) > self.max_batch:
                    break
                batch.append(call)
                images += len(call.x)
            del self._waiting[: len(batch)]
        try:
            outs = self.model(torch.cat([c.x for c in batch])).split([len(c.x) for c in batch])
            for call, out in zip(batch, outs, strict=True):
                call.out = out
        except BaseException as err:  # every caller of the batch gets it, none is left waiting
            for call in batch:
                call.error = err
        with self._lock:
            if self._waiting:
                self._waiting[0].leads = True
                self._waiting[0].woken.set()
            else:
                self._busy = False
        for call in batch[1:]:
            call.woken.set()
