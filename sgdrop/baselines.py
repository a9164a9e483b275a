"""Baselines behind the same interface as SGDrop, all acting on the same feature map.

- `Vanilla`: no regularization.
- `FeatureDropout`: element-wise dropout of the feature map at rate p (inverted scaling).
- `SpatialDropout`: whole channels dropped at rate p (`nn.Dropout2d`).
- `RandomDrop`: the control for SGDrop: drops k = max(1, floor(rho * n)) *random* entries per
  sample, the same count SGDrop drops, so a gain of SGDrop over it is due to saliency, not masking.
- `RSC`: Representation Self-Challenging (Huang et al., 2020): mutes the features with the largest
  gradient of the true-class logit, on a share of the batch.
- `DropBlock`: `torchvision.ops.DropBlock2d` (Ghiasi et al., 2018).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from .base import RegularizedClassifier
from .saliency_dropout import feature_attribution, num_dropped, rescale_kept


def _check_rate(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")


class Vanilla(RegularizedClassifier):
    """The plain network."""


class FeatureDropout(RegularizedClassifier):
    def __init__(self, encoder: nn.Module, head: nn.Module, p: float = 0.5):
        super().__init__(encoder, head)
        _check_rate("p", p)
        self.dropout = nn.Dropout(p)

    def regularize(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        return self.dropout(z)


class SpatialDropout(FeatureDropout):
    def __init__(self, encoder: nn.Module, head: nn.Module, p: float = 0.5):
        super().__init__(encoder, head, p)
        self.dropout = nn.Dropout2d(p)


def random_mask(like: Tensor, rho: float) -> Tensor:
    """{0, 1} mask that zeroes exactly k = max(1, floor(rho * n)) uniformly random entries per sample."""
    flat = like.flatten(1)
    k = num_dropped(rho, flat.shape[1])
    drop = torch.rand(flat.shape, device=flat.device).topk(k, dim=1, sorted=False).indices
    return torch.ones_like(flat).scatter_(1, drop, 0.0).view_as(like)


class RandomDrop(RegularizedClassifier):
    def __init__(self, encoder: nn.Module, head: nn.Module, rho: float = 0.01, rescale: bool = False):
        super().__init__(encoder, head)
        num_dropped(rho, 100)  # validates rho
        self.rho = rho
        self.rescale = rescale

    def regularize(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        mask = random_mask(z, self.rho)
        return rescale_kept(z, mask) if self.rescale else z * mask

    def extra_repr(self) -> str:
        return f"rho={self.rho}, rescale={self.rescale}"


class RSC(RegularizedClassifier):
    """Representation Self-Challenging, simplified to its core.

    Per challenged sample, the gradient of the true-class logit with respect to the feature map is
    pooled either over space (channel-wise RSC) or over channels (spatial RSC), chosen at random with
    equal odds as in the original; the share `p` of channels or positions with the largest pooled
    gradient is muted. A random `batch_fraction` of the samples is challenged (the original challenges
    a fixed share too; its confidence-based selection of which samples is left out).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, p: float = 0.33, batch_fraction: float = 0.33):
        super().__init__(encoder, head)
        _check_rate("p", p)
        self.p = p
        self.batch_fraction = batch_fraction

    def regularize(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        grad = feature_attribution(self.head, z, target, "gradient")  # ReLU(dlogit/dz): large positive
        b, c, h, w = z.shape
        channel_wise = torch.rand(b, 1, 1, 1, device=z.device) < 0.5
        per_channel = grad.mean(dim=(2, 3), keepdim=True)  # b, c, 1, 1
        per_position = grad.mean(dim=1, keepdim=True)  # b, 1, h, w
        keep_channel = _keep_below_top_share(per_channel, self.p)
        keep_position = _keep_below_top_share(per_position, self.p)
        mask = torch.where(channel_wise, keep_channel.expand_as(z), keep_position.expand_as(z))
        challenged = (torch.rand(b, 1, 1, 1, device=z.device) < self.batch_fraction).to(z.dtype)
        mask = challenged * mask + (1 - challenged)
        return z * mask.to(z.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_fraction={self.batch_fraction}"


def _keep_below_top_share(scores: Tensor, share: float) -> Tensor:
    """1 where a score is not among the top `share` of its sample's entries, else 0."""
    flat = scores.flatten(1)
    k = max(1, int(share * flat.shape[1]))
    top = flat.topk(k, dim=1, sorted=False).indices
    return torch.ones_like(flat).scatter_(1, top, 0.0).view_as(scores)


class DropBlock(RegularizedClassifier):
    """DropBlock; on a map smaller than `block_size` the block shrinks to the largest odd size that fits
    (torchvision requires an odd block)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, p: float = 0.1, block_size: int = 3):
        super().__init__(encoder, head)
        _check_rate("p", p)
        self.p = p
        self.block_size = block_size

    def regularize(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        fits = min(self.block_size, *z.shape[2:])
        block = fits if fits % 2 else fits - 1
        if block < 1:
            return z
        return torchvision.ops.drop_block2d(z, self.p, block, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"
