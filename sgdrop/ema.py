"""An exponential-moving-average copy of a network whose tensors are all buffers.

SGDrop computes its mask on an EMA copy of the network. Keeping that copy's weights as *buffers*
rather than parameters means `parameters()` never hands them to the optimizer, DDP never reduces
their gradients, and autograd never accumulates `.grad` on them, yet `state_dict()` saves them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """Deep copy of `module` in eval mode, with every parameter turned into a buffer of the same name."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().clone())
    return clone.eval().requires_grad_(False)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """Decay used at optimizer step `step` (0-based).

    With warm-up the decay is min(decay, (1 + step) / (10 + step)), as in timm's and TensorFlow's
    EMA: the copy tracks the online weights almost exactly for the first few dozen steps, so early
    masks come from a network that has already moved away from its random initialisation.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


class EmaCopy(nn.Module):
    """Holds the EMA copy of `source` and updates it from `source` after each optimizer step."""

    def __init__(self, source: nn.Module, decay: float = 0.99, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = frozen_copy(source)
        # A tensor (not a Python int) so that the step count is saved in state_dict and resumes exactly.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._host_updates: int | None = None  # host mirror of num_updates: no device sync per step

    def train(self, mode: bool = True) -> "EmaCopy":
        # The EMA copy always runs in eval mode (batch norm uses its running statistics).
        super().train(mode)
        self.module.eval()
        return self

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """Move every float tensor (weights and batch-norm statistics) towards `source`; copy the rest."""
        if self._host_updates is None:
            self._host_updates = int(self.num_updates)  # one sync, after construction or loading
        decay = ema_decay_at(self._host_updates, self.decay, self.warmup)
        ema_state = self.module.state_dict(keep_vars=True)
        floats_ema, floats_src = [], []
        for name, src in source.state_dict(keep_vars=True).items():
            dst = ema_state[name]
            if dst.is_floating_point():
                floats_ema.append(dst)
                floats_src.append(src.detach())
            else:
                dst.copy_(src)  # e.g. num_batches_tracked
        if floats_ema:
            # One fused call for all tensors: ema += (1 - decay) * (online - ema).
            torch._foreach_lerp_(floats_ema, floats_src, 1.0 - decay)
        self.num_updates += 1
        self._host_updates += 1

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._host_updates = None  # re-read the loaded step count on the next update

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup}"
