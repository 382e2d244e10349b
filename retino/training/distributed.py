"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

The train stage relaunches itself under `torchrun` when `train.nproc` or `train.nnodes` asks for
more than one process (or the user runs `torchrun ... stages/train.py` directly). Each process
then calls `setup()`, which reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and
joins the process group with a timeout, so a dead peer ends the job instead of hanging it.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from retino.config import TrainConfig
from retino.errors import RetinoError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; the defaults are a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs to MLflow, writes checkpoints and outputs, and shows progress."""
        return self.rank == 0


def processes_per_node(cfg: TrainConfig) -> int:
    if cfg.nproc == "auto":
        return max(torch.cuda.device_count(), 1)
    return int(cfg.nproc)


def needs_launch(cfg: TrainConfig) -> bool:
    """True in the stage process that must start torchrun (not inside a torchrun worker)."""
    inside = "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ
    return not inside and (processes_per_node(cfg) > 1 or cfg.nnodes > 1)


def launch(cfg: TrainConfig, script_argv: list[str]) -> int:
    """Run `torchrun ... <script_argv>` and return its exit status."""
    nproc = processes_per_node(cfg)
    if cfg.nnodes == 1:
        rendezvous = ["--standalone"]  # a free local port, no settings needed
    else:
        rendezvous = [
            f"--nnodes={cfg.nnodes}",
            f"--node-rank={cfg.node_rank}",
            f"--master-addr={cfg.master_addr}",
            f"--master-port={cfg.master_port}",
        ]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous,
           f"--nproc-per-node={nproc}", *script_argv]  # fmt: skip
    print(f"launching {nproc * cfg.nnodes} processes: {' '.join(cmd[1:])}", flush=True)
    status = subprocess.run(cmd, check=False).returncode
    if status != 0:
        print(
            f"error: distributed training failed (torchrun exit {status}); "
            "the failing rank's message is above",
            file=sys.stderr,
        )
    return status


def setup(cfg: TrainConfig, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; return it and this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif cfg.sync_bn:
        raise RetinoError("train.sync_bn: SyncBatchNorm needs CUDA; set it to false on CPU")
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=timedelta(seconds=cfg.dist_timeout),
    )
    return Dist(dist.get_rank(), world_size, local_rank), device


def teardown(job: Dist) -> None:
    if job.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(job: Dist) -> None:
    if job.enabled:
        dist.barrier()


def all_sum(job: Dist, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (e.g. loss*n, correct, seen)."""
    if not job.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_ordered(job: Dist, local: torch.Tensor, total: int) -> torch.Tensor:
    """Undo DistributedSampler(shuffle=False)'s interleaving: rank r holds samples r, r+W, ...
    (padded to equal length by repeating the first samples). Returns all `total`, in order."""
    if not job.enabled:
        return local
    parts = [torch.empty_like(local) for _ in range(job.world_size)]
    dist.all_gather(parts, local.contiguous())
    # (W, n, ...) -> (n, W, ...) -> sample k*W + r; the padding sits at the end
    return torch.stack(parts).transpose(0, 1).reshape(-1, *local.shape[1:])[:total]
