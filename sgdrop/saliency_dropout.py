"""Saliency Guided Dropout (SGDrop): attribution, mask, and the module that puts them together.

For a batch (x, y): an EMA copy of the network, in eval mode, computes the feature map z' = phi'(x)
and the attribution A = ReLU(d psi'_y(z') / d z' * z'); per sample the k = max(1, floor(rho * n))
entries with the largest positive attribution are zeroed in the online feature map z = phi(x), and
the loss is computed on psi(z * M). At evaluation SGDrop does nothing. See SPEC.md, "The method".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import RegularizedClassifier
from .ema import EmaCopy
from .folding import fold_batch_norm

SALIENCIES = ("grad_x_activation", "gradient", "gradcam")
ATTRIBUTION_SOURCES = ("ema", "online")


def feature_attribution(head: nn.Module, z: Tensor, target: Tensor, saliency: str = "grad_x_activation") -> Tensor:
    """Attribution of the true class on the feature map `z`, same shape as `z`, detached.

    `grad_x_activation` (the paper's): ReLU(d head(z)[i, target_i] / d z * z). `gradient`:
    ReLU(d head(z)[i, target_i] / d z). `gradcam`: ReLU(w_c * z) with w_c the spatial mean of the
    gradient of channel c (Grad-CAM's channel weights, kept per entry). Only the gradient with
    respect to `z` is computed, so no `.grad` is left on any parameter of `head`, and it works
    inside an outer `torch.no_grad()`.
    """
    if saliency not in SALIENCIES:
        raise ValueError(f"saliency must be one of {SALIENCIES}, got {saliency!r}")
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        score = head(z).gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, z)
    if saliency == "gradient":
        attribution = grad
    elif saliency == "gradcam":
        attribution = grad.mean(dim=(2, 3), keepdim=True) * z
    else:
        attribution = grad * z
    return torch.relu(attribution).detach()


def num_dropped(rho: float, n: int) -> int:
    """k = max(1, floor(rho * n)); the tiny epsilon keeps floor exact when rho * n is an integer
    that floating point lands just under (0.29 * 100 = 28.999...)."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    return max(1, math.floor(rho * n + 1e-9))


def saliency_mask(attribution: Tensor, rho: float) -> Tensor:
    """{0, 1} mask of `attribution`'s shape and dtype that zeroes, per sample, the k largest entries.

    k = max(1, floor(rho * n)) with n the entries per sample; an entry whose attribution is <= 0 is
    never dropped, so fewer than k drop when fewer than k are positive. Ties are broken by `topk`,
    so exactly k entries drop whenever at least k are positive. Runs on the attribution's device
    with no host synchronisation.
    """
    flat = attribution.flatten(1)
    k = num_dropped(rho, flat.shape[1])
    top_values, top_indices = flat.topk(k, dim=1, sorted=False)
    mask = torch.ones_like(flat)
    mask.scatter_(1, top_indices, (top_values <= 0).to(flat.dtype))
    return mask.view_as(attribution)


def rescale_kept(z: Tensor, mask: Tensor) -> Tensor:
    """z * mask * n / kept per sample, so the expected total activation is unchanged (optional)."""
    n = mask[0].numel()
    kept = mask.flatten(1).sum(1).clamp_min(1.0)
    return z * mask * (n / kept).view(-1, *([1] * (z.dim() - 1)))


class SGDrop(RegularizedClassifier):
    """Saliency Guided Dropout around an `encoder` (up to the last conv feature map) and a `head`.

    Args:
        rho: share of feature-map entries dropped per sample (paper: 0.01).
        ema_decay: decay of the EMA copy that computes the mask. The paper does not give one; 0.99
            (a half-life of ~70 steps) keeps the copy within about one epoch of the online weights
            in the low-data runs of this package, where a run is a few hundred to a few thousand steps.
        ema_warmup: follow the online weights closely during the first steps (see `ema.ema_decay_at`).
        attribution: "ema" computes the mask on the EMA copy (the paper's method, one extra forward
            pass of the encoder); "online" uses the online network's own feature map (fast mode).
        saliency: attribution method (see `feature_attribution`).
        rescale: rescale the kept entries by n / kept (off in the paper).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, rho: float = 0.01, ema_decay: float = 0.99,
                 attribution: str = "ema", rescale: bool = False, saliency: str = "grad_x_activation",
                 ema_warmup: bool = True):
        super().__init__(encoder, head)
        num_dropped(rho, 100)  # validates rho
        if attribution not in ATTRIBUTION_SOURCES:
            raise ValueError(f"attribution must be one of {ATTRIBUTION_SOURCES}, got {attribution!r}")
        if saliency not in SALIENCIES:
            raise ValueError(f"saliency must be one of {SALIENCIES}, got {saliency!r}")
        self.rho = rho
        self.attribution = attribution
        self.saliency = saliency
        self.rescale = rescale
        # Registered as a submodule holding buffers only: saved in state_dict, absent from parameters().
        self.ema = EmaCopy(nn.ModuleDict({"encoder": encoder, "head": head}), ema_decay, ema_warmup) \
            if attribution == "ema" else None
        if self.ema is not None:
            # The EMA forward (no autograd, eval mode) is the price of the faithful method. With
            # contiguous conv weights oneDNN takes 1.76x as long for it on the CPU; channels-last
            # weights make the convolutions channels-last whatever the input's layout (measured with
            # scripts/sgdrop_cost.py; on CUDA the engine puts the whole model in channels-last).
            # Only the layout of the EMA buffers changes: they are saved, loaded and moved as before.
            self.ema.module.to(memory_format=torch.channels_last)
        # The EMA encoder is only ever run in eval mode, so its batch norms fold into the convolutions
        # (see sgdrop/folding.py); None when there is nothing to fold. Kept out of the module tree
        # (it shares the EMA copy's tensors and owns none), so state_dict and .to() never see it.
        self.__dict__["_ema_encoder_folded"] = fold_batch_norm(self.ema.module["encoder"]) \
            if self.ema is not None else None

    def compute_mask(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        """The {0, 1} mask for the online feature map `z` of inputs `x`."""
        if self.ema is not None:
            z_source, head = self.ema_features(x), self.ema.module["head"]
        else:
            z_source, head = z, self.head
        return saliency_mask(feature_attribution(head, z_source, target, self.saliency), self.rho)

    def ema_features(self, x: Tensor) -> Tensor:
        """The EMA copy's feature map z' of `x`, without an autograd graph."""
        folded = self._ema_encoder_folded
        encoder = folded if folded is not None else self.ema.module["encoder"]
        with torch.no_grad():
            return encoder(x)

    def regularize(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        mask = self.compute_mask(z, x, target).to(z.dtype)
        return rescale_kept(z, mask) if self.rescale else z * mask

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the EMA copy's weights and batch-norm buffers towards the online network."""
        if self.ema is not None:
            self.ema.update(nn.ModuleDict({"encoder": self.encoder, "head": self.head}))

    def after_step(self) -> None:
        self.update_ema()

    def extra_repr(self) -> str:
        return f"rho={self.rho}, attribution={self.attribution!r}, saliency={self.saliency!r}, rescale={self.rescale}"
