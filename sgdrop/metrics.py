"""The measurements of the paper: accuracy, Grad-CAM attribution area, neuron coverage.

Every model here is split in two: ``encoder`` (images ``B x 3 x H x W`` -> the last convolutional
feature map ``z``, ``B x C x h x w``) and ``head`` (``z`` -> logits ``B x K``). Every function takes
that pair and iterables of ``(x, y)`` batches already on the right device, and

- evaluates in eval mode, then gives every sub-module back the training flag it had;
- never leaves a ``.grad`` on a parameter (Grad-CAM differentiates with respect to ``z`` only);
- works under an outer ``torch.no_grad()`` and under ``torch.autocast``.

Definitions (see SPEC.md, "The measurements"):

- Grad-CAM (Selvaraju et al. 2017) at the encoder's output, for the true class, ReLU'd, bilinearly
  upsampled to the input size and divided by its per-image max.
- Attribution area ratio: share of pixels whose Grad-CAM is >= ``threshold`` (0.5 by default).
- Neuron coverage (DeepXplore, Pei et al. 2017): a neuron is one channel of an ``nn.Conv2d`` of the
  encoder, its value the spatial mean of that conv's output; per input and per layer the values are
  min-max scaled across channels, and a neuron is activated when its scaled value is ``> t``.
  Reported both as the mean over inputs and as the union over the whole set.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

Batches = Iterable[tuple[Tensor, Tensor]]


# --------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode, then give each sub-module back its own training flag.

    Restoring per sub-module (not a blanket ``.train()``) keeps a partly frozen model exactly as
    the caller left it.
    """
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


def _maybe_progress(batches: Batches, progress: bool, desc: str) -> Batches:
    return tqdm(batches, desc=desc, leave=False, disable=None) if progress else batches  # None: off when not a TTY


def _max_normalise(cams: Tensor) -> Tensor:
    """Divide each map by its max; an all-zero map stays zero (instead of 0/0)."""
    peak = cams.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(torch.finfo(cams.dtype).tiny), 0.0)


# -------------------------------------------------------------------------------------------- Grad-CAM
def _gradcam_and_logits(
    encoder: nn.Module, head: nn.Module, x: Tensor, target: Tensor | int
) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps (B, H, W) and the logits (B, K) of one forward pass; modules must be in eval."""
    # The encoder needs no graph: Grad-CAM only differentiates the head with respect to z.
    with torch.no_grad():
        z = encoder(x)
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = head(z)
        target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
        score = logits.gather(1, target[:, None].long()).sum()
        # Grad with respect to z only, so no parameter ever gets a .grad.
        (grad,) = torch.autograd.grad(score, z)
    # Compute the map in float32 even when the caller runs under autocast.
    z, grad = z.detach().float(), grad.float()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): the Grad-CAM channel weights
    cam = F.relu((weights * z).sum(dim=1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return _max_normalise(cam[:, 0]), logits.detach()


def gradcam(encoder: nn.Module, head: nn.Module, x: Tensor, target: Tensor | int) -> Tensor:
    """Grad-CAM of class ``target`` at the encoder's output, upsampled to ``x``'s size.

    ``target`` is an int or a (B,) tensor of classes. Returns float32 maps (B, H, W) in [0, 1],
    each divided by its max (an all-zero map stays zero).
    """
    with eval_mode(encoder, head):
        cams, _ = _gradcam_and_logits(encoder, head, x, target)
    return cams


def area_ratio(cams: Tensor, threshold: float) -> Tensor:
    """Share of pixels of each map (B, H, W) with value >= ``threshold``; 0.0 for an all-zero map.

    An all-zero map (no positive evidence at all) attributes nothing, so it counts as 0 whatever
    the threshold.
    """
    covered = (cams >= threshold).flatten(1).float().mean(dim=1)
    return torch.where(cams.flatten(1).amax(dim=1) > 0, covered, 0.0)


def attribution_area_ratio(
    encoder: nn.Module,
    head: nn.Module,
    batches: Batches,
    threshold: float = 0.5,
    progress: bool = False,
) -> float:
    """Mean over all images of the area ratio of the true class's Grad-CAM at ``threshold``."""
    total, count = 0.0, 0
    with eval_mode(encoder, head):
        for x, y in _maybe_progress(batches, progress, "attribution"):
            cams, _ = _gradcam_and_logits(encoder, head, x, y)
            total += area_ratio(cams, threshold).sum().item()
            count += len(x)
    if count == 0:
        raise ValueError("attribution_area_ratio got no images")
    return total / count


def gradcam_examples(encoder: nn.Module, head: nn.Module, x: Tensor, y: Tensor) -> dict:
    """True-class Grad-CAMs and predictions for a figure of overlays.

    Returns ``{"cams": float16 array (B, H, W), "pred": int64 array (B,)}`` (float16 halves the
    size of what gets saved; the maps are in [0, 1] anyway).
    """
    with eval_mode(encoder, head):
        cams, logits = _gradcam_and_logits(encoder, head, x, y)
    return {
        "cams": cams.cpu().numpy().astype(np.float16),
        "pred": logits.argmax(dim=1).cpu().numpy().astype(np.int64),
    }


# -------------------------------------------------------------------------------------------- accuracy
def accuracy(encoder: nn.Module, head: nn.Module, batches: Batches, progress: bool = False) -> float:
    """Top-1 accuracy in [0, 1]."""
    correct, count = 0, 0
    with eval_mode(encoder, head), torch.no_grad():
        for x, y in _maybe_progress(batches, progress, "accuracy"):
            pred = head(encoder(x)).argmax(dim=1)
            correct += (pred == y.to(pred.device)).sum().item()
            count += len(y)
    if count == 0:
        raise ValueError("accuracy got no images")
    return correct / count


# ------------------------------------------------------------------------------------- neuron coverage
def _threshold_key(t: float) -> str:
    return str(float(t))


def _scaled_neuron_values(out: Tensor) -> Tensor:
    """Channel means of a conv output (B, C, h, w), min-max scaled across channels per input.

    A layer whose channels are all equal for an input scales to all zeros (nothing activated).
    """
    values = out.detach().float().mean(dim=(2, 3))  # (B, C)
    low = values.amin(dim=1, keepdim=True)
    span = values.amax(dim=1, keepdim=True) - low
    return torch.where(span > 0, (values - low) / span.clamp_min(torch.finfo(values.dtype).tiny), 0.0)


class _CoverageCounter:
    """Forward hook for one conv layer: accumulates, per threshold, how many inputs activated each
    neuron (a (C,) count on the batches' device).

    Only these per-channel counts are kept, never the activations; they hold both numbers we
    report (mean: total count / (inputs x C); union: share of channels with count > 0), and they
    stay on the device so the hook never forces a GPU sync.
    """

    def __init__(self, thresholds: Sequence[float]):
        self.thresholds = list(thresholds)
        self.counts: list[Tensor] | None = None  # per threshold, (C,) int64
        self.calls = 0  # forward calls in the current batch, to catch shared or skipped layers

    def __call__(self, module: nn.Module, inputs, out: Tensor) -> None:
        self.calls += 1
        scaled = _scaled_neuron_values(out)  # (B, C)
        counts = [(scaled > t).sum(dim=0) for t in self.thresholds]
        self.counts = counts if self.counts is None else [a + b for a, b in zip(self.counts, counts)]

    @property
    def channels(self) -> int:
        return len(self.counts[0])

    def activated_sum(self, i: int) -> int:
        """Sum over inputs of the number of neurons each activated at threshold ``i``."""
        return int(self.counts[i].sum().item())

    def union_count(self, i: int) -> int:
        """Number of neurons that at least one input activated at threshold ``i``."""
        return int((self.counts[i] > 0).sum().item())


def neuron_coverage(
    encoder: nn.Module,
    batches: Batches,
    thresholds: Sequence[float] = (0.25, 0.5, 0.75),
    progress: bool = False,
) -> dict:
    """DeepXplore neuron coverage of every ``nn.Conv2d`` in ``encoder`` (``named_modules`` order).

    Returns a JSON-serialisable dict::

        {"layers": [...], "channels": [...], "thresholds": [...], "layer_output": "conv2d",
         "per_layer": {"0.25": {"mean": [per layer], "union": [per layer]}, ...},
         "all_layers": {"0.25": {"mean": x, "union": y}, ...},
         "last_layer": {"0.25": {"mean": x, "union": y}, ...},
         "num_inputs": N}

    ``mean``: average over inputs of the share of neurons that input activates. ``union``: share of
    neurons activated by at least one input of the set. ``all_layers`` pools every conv neuron of
    the encoder. The hooked value is the conv's own output (before any BN or ReLU that follows).
    """
    thresholds = [float(t) for t in thresholds]
    convs = [(name, m) for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("neuron_coverage: the encoder has no nn.Conv2d")
    counters = [_CoverageCounter(thresholds) for _ in convs]
    handles = [m.register_forward_hook(c) for (_, m), c in zip(convs, counters)]
    num_inputs = 0
    try:
        with eval_mode(encoder), torch.no_grad():
            for x, _ in _maybe_progress(batches, progress, "coverage"):
                for c in counters:
                    c.calls = 0
                encoder(x)
                num_inputs += len(x)
                # A conv used twice (or not at all) per forward would make "share of neurons"
                # meaningless, so refuse rather than report a wrong number.
                bad = [name for (name, _), c in zip(convs, counters) if c.calls != 1]
                if bad:
                    raise RuntimeError(f"neuron_coverage: conv layers not run exactly once: {bad}")
    finally:
        for h in handles:
            h.remove()
    if num_inputs == 0:
        raise ValueError("neuron_coverage got no images")
    return _coverage_report(convs, counters, thresholds, num_inputs)


def _coverage_report(convs, counters, thresholds: list[float], num_inputs: int) -> dict:
    """Turn the accumulated counts into the shares of :func:`neuron_coverage`'s report."""
    channels = [c.channels for c in counters]
    total = sum(channels)
    per_layer, all_layers, last_layer = {}, {}, {}
    for i, t in enumerate(thresholds):
        means = [c.activated_sum(i) / (num_inputs * c.channels) for c in counters]
        unions = [c.union_count(i) / c.channels for c in counters]
        key = _threshold_key(t)
        per_layer[key] = {"mean": means, "union": unions}
        all_layers[key] = {
            # Every input has the same number of neurons, so the mean of per-input shares is the
            # pooled count over (inputs x neurons).
            "mean": sum(c.activated_sum(i) for c in counters) / (num_inputs * total),
            "union": sum(c.union_count(i) for c in counters) / total,
        }
        last_layer[key] = {"mean": means[-1], "union": unions[-1]}
    return {
        "layers": [name for name, _ in convs],
        "channels": channels,
        "thresholds": thresholds,
        "layer_output": "conv2d",
        "per_layer": per_layer,
        "all_layers": all_layers,
        "last_layer": last_layer,
        "num_inputs": num_inputs,
    }


# ---------------------------------------------------------------------------------------------- all
def evaluate_all(
    encoder: nn.Module,
    head: nn.Module,
    batches_fn: Callable[[], Batches],
    *,
    attr_threshold: float,
    coverage_thresholds: Sequence[float],
    progress: bool = False,
) -> dict:
    """Accuracy, attribution area ratio and neuron coverage, one pass over ``batches_fn()`` each."""
    return {
        "test_acc": accuracy(encoder, head, batches_fn(), progress=progress),
        "attr_area_ratio": attribution_area_ratio(
            encoder, head, batches_fn(), threshold=attr_threshold, progress=progress
        ),
        "attr_threshold": float(attr_threshold),
        "coverage": neuron_coverage(
            encoder, batches_fn(), thresholds=coverage_thresholds, progress=progress
        ),
    }
