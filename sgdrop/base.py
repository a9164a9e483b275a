"""The interface every regularization method shares, so the training loop never branches on a name."""

from __future__ import annotations

from torch import Tensor, nn


class RegularizedClassifier(nn.Module):
    """An `encoder -> feature map -> head` classifier whose feature map a method may alter in training.

    `forward(x, target)` in training mode returns the logits of the head on the regularized feature
    map; in eval mode (or without a target) it returns the plain network's logits, so evaluation code
    never needs to know which method trained the model. `after_step()` is called after every
    optimizer step (SGDrop updates its EMA copy there).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        z = self.encoder(x)
        if self.training and target is not None:
            z = self.regularize(z, x, target)
        return self.head(z)

    def regularize(self, z: Tensor, x: Tensor, target: Tensor) -> Tensor:
        """Return the feature map the head sees in training. The vanilla method returns `z` unchanged."""
        return z

    def after_step(self) -> None:
        """Hook run after each optimizer step."""
