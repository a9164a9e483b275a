"""DDP plumbing, read from what `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK), as in torchvision's
reference scripts. A plain `python -m sgdrop.train` is a world of one and touches none of it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class Info:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init() -> Info:
    """Join the process group started by torchrun (nccl on GPUs, gloo on CPUs), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Info()
    info = Info(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        torch_dist.init_process_group(backend)
    return info


def wrap(model: nn.Module, info: Info, device: torch.device) -> nn.Module:
    """DDP-wrapped model for the training forward; `model` itself stays the one to save and evaluate.

    Buffers are not broadcast at every forward: SGDrop's EMA copy lives in buffers, and sending the
    whole network over the wire each step would cost more than the step. Every rank applies the same
    averaged gradients, so weights and EMA weights stay equal; batch-norm statistics are per rank,
    and rank 0's are the ones saved."""
    if not info.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def barrier(info: Info) -> None:
    if info.enabled:
        torch_dist.barrier()


@contextmanager
def main_first(info: Info) -> Iterator[None]:
    """Let rank 0 run the block first (e.g. filling a cache), then the others."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_available() and torch_dist.is_initialized():
        tensor = tensor.clone()
        torch_dist.all_reduce(tensor)
    return tensor


def cleanup(info: Info) -> None:
    if info.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
