"""torchvision classifiers split into an encoder (up to the last conv feature map) and a head.

| arch          | encoder (torchvision names)           | feature map at 224 px | small_input=True at 64 px |
|---------------|---------------------------------------|-----------------------|---------------------------|
| vgg11, vgg16  | `features`                            | 512w x 7 x 7          | 512w x 4 x 4 (no last max-pool) |
| resnet18      | conv1 ... `layer4`                    | 512 x 7 x 7           | 512 x 4 x 4 (no stem max-pool)  |
| resnet50      | conv1 ... `layer4`                    | 2048 x 7 x 7          | 2048 x 4 x 4 (no stem max-pool) |
| convnext_tiny | `features` (all four stages)          | 768 x 7 x 7           | 768 x 4 x 4 (2x2 stem instead of 4x4) |

(w = width.) `small_input` removes one downsampling so the last map stays at least 4x4 at 64 px:
on a 2x2 map, rho-masking and the attribution area are too coarse to mean anything (SPEC.md).
The head is everything after the feature map (pooling and classifier); with `small_input` the VGG
head pools to 4x4 instead of torchvision's 7x7, so it does not upsample the small map. It has no dropout unless
`head_dropout` is set, so that a comparison of methods isolates the regularizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import vgg as tv_vgg

ARCHS = ("vgg11", "vgg16", "resnet18", "resnet50", "convnext_tiny")
_VGG_CFG = {"vgg11": "A", "vgg16": "D"}


def build(arch: str, num_classes: int, width: float = 1.0, *, batch_norm: bool = True,
          small_input: bool = False, head_dropout: float = 0.0, pretrained: bool = False) -> tuple[nn.Module, nn.Module]:
    """Return `(encoder, head)` of `arch` with `num_classes` outputs; see the module docstring."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if width != 1.0 and not arch.startswith("vgg"):
        raise ValueError(f"width scaling is implemented for VGG only; set model.width=1 for {arch}")
    if pretrained and (width != 1.0 or small_input):
        raise ValueError("pretrained weights need model.width=1 and model.small_input=false")
    if arch.startswith("vgg"):
        encoder, head = _vgg(arch, num_classes, width, batch_norm, small_input, head_dropout)
    elif arch.startswith("resnet"):
        encoder, head = _resnet(arch, num_classes, small_input, head_dropout)
    else:
        encoder, head = _convnext(num_classes, small_input, head_dropout)
    if pretrained:
        _load_pretrained(arch, batch_norm, encoder, head)
    return encoder, head


def feature_shape(encoder: nn.Module, image_size: int) -> list[int]:
    """(C, H, W) of the encoder's output for a square `image_size` input."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        shape = list(encoder(torch.zeros(1, 3, image_size, image_size)).shape[1:])
    encoder.train(was_training)
    return shape


def _vgg(arch, num_classes, width, batch_norm, small_input, head_dropout):
    cfg = [v if v == "M" else max(8, int(round(v * width))) for v in tv_vgg.cfgs[_VGG_CFG[arch]]]
    if small_input:
        cfg = cfg[:-1]  # drop the last max-pool
    encoder = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
    channels = [v for v in cfg if v != "M"][-1]
    hidden = max(64, int(round(4096 * width)))
    pool = 4 if small_input else 7  # the map's own size (4x4 at 64 px, 7x7 at 224 px): no upsampling
    head = nn.Sequential(
        PoolTo((pool, pool)), nn.Flatten(1),
        nn.Linear(channels * pool * pool, hidden), nn.ReLU(True), nn.Dropout(head_dropout),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(head_dropout),
        nn.Linear(hidden, num_classes),
    )
    _init_vgg(encoder)
    _init_vgg(head)
    return encoder, head


class PoolTo(nn.AdaptiveAvgPool2d):
    """torchvision VGG's adaptive average pool, skipped when the map already has the output size.

    The VGG head pools to the map's own size (7x7 at 224 px, 4x4 at 64 px with `small_input`), where
    the pool is the identity; skipping it gives the same values and saves its backward pass, which
    on the CPU costs as much as a small matmul (and SGDrop runs the head twice per step).
    """

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(self.output_size):
            return x
        return super().forward(x)


def _init_vgg(module: nn.Module) -> None:
    """torchvision's VGG initialisation (models/vgg.py)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _resnet(arch, num_classes, small_input, head_dropout):
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    encoder = nn.Sequential(net.conv1, net.bn1, net.relu, nn.Identity() if small_input else net.maxpool,
                            net.layer1, net.layer2, net.layer3, net.layer4)
    head = nn.Sequential(net.avgpool, nn.Flatten(1), nn.Dropout(head_dropout), net.fc)
    return encoder, head


def _convnext(num_classes, small_input, head_dropout):
    net = torchvision.models.convnext_tiny(weights=None, num_classes=num_classes)
    if small_input:
        stem = net.features[0][0]
        net.features[0][0] = nn.Conv2d(3, stem.out_channels, kernel_size=2, stride=2)
    layer_norm, flatten, fc = net.classifier
    head = nn.Sequential(net.avgpool, layer_norm, flatten, nn.Dropout(head_dropout), fc)
    return net.features, head


def _load_pretrained(arch, batch_norm, encoder, head):
    """Load torchvision's ImageNet weights from the local torch hub cache (never downloads).

    The classifier's last layer keeps its fresh initialisation when the class count differs."""
    name = f"{arch}_bn" if arch.startswith("vgg") and batch_norm else arch
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights for {name} not found at {path}; download {weights.url} "
                                f"there, or set model.pretrained=false")
    reference = torchvision.models.get_model(name)
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    ref_encoder, ref_head = _split_reference(arch, reference)
    encoder.load_state_dict(ref_encoder.state_dict())
    own = head.state_dict()
    compatible = {k: v for k, v in zip(own, ref_head.state_dict().values()) if own[k].shape == v.shape}
    head.load_state_dict({**own, **compatible})


def _split_reference(arch, net):
    if arch.startswith("vgg"):
        return net.features, nn.Sequential(net.avgpool, net.classifier)
    if arch.startswith("resnet"):
        return (nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4),
                nn.Sequential(net.fc))
    return net.features, nn.Sequential(net.classifier)
