"""Registry mapping a method name (as a config writes it) to its class and constructor arguments."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import RegularizedClassifier
from .baselines import RSC, DropBlock, FeatureDropout, RandomDrop, SpatialDropout, Vanilla
from .saliency_dropout import SGDrop

# name -> (class, the `method.*` config keys its constructor takes, as {config key: argument name})
METHODS: dict[str, tuple[type[RegularizedClassifier], dict[str, str]]] = {
    "vanilla": (Vanilla, {}),
    "dropout": (FeatureDropout, {"p": "p"}),
    "spatial_dropout": (SpatialDropout, {"p": "p"}),
    "random": (RandomDrop, {"rho": "rho", "rescale": "rescale"}),
    "rsc": (RSC, {"p": "p", "batch_fraction": "batch_fraction"}),
    "dropblock": (DropBlock, {"p": "p", "block_size": "block_size"}),
    "sgdrop": (SGDrop, {"rho": "rho", "ema_decay": "ema_decay", "ema_warmup": "ema_warmup",
                        "attribution": "attribution", "saliency": "saliency", "rescale": "rescale"}),
}


def build_method(name: str, encoder: nn.Module, head: nn.Module, /, **options: Any) -> RegularizedClassifier:
    """Wrap `(encoder, head)` in method `name`; `options` may hold every `method.*` key, each method
    takes the ones it uses (so one config section serves all methods)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    cls, keys = METHODS[name]
    return cls(encoder, head, **{arg: options[key] for key, arg in keys.items() if key in options})


def method_hparams(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The `method.*` values that matter for method `name` (for labels and run names)."""
    return {key: options[key] for key in METHODS[name][1] if key in options}


def method_label(name: str, options: dict[str, Any]) -> str:
    """Short display label of a configured method, e.g. 'dropout p=0.5', 'sgdrop (online)',
    'sgdrop ema=0.9 no-warmup' (defaults are left out)."""
    if name in ("dropout", "spatial_dropout", "dropblock", "rsc"):
        return f"{name} p={options.get('p')}"
    if name == "random":
        return f"random rho={options.get('rho')}"
    if name == "sgdrop":
        label = "sgdrop"
        extras = []
        if options.get("attribution", "ema") != "ema":
            extras.append(options["attribution"])
        if options.get("saliency", "grad_x_activation") != "grad_x_activation":
            extras.append(options["saliency"])
        if extras:
            label += f" ({', '.join(extras)})"
        if options.get("rho", 0.01) != 0.01:
            label += f" rho={options['rho']}"
        if options.get("attribution", "ema") == "ema":  # the EMA settings only matter with an EMA copy
            if options.get("ema_decay", 0.99) != 0.99:
                label += f" ema={options['ema_decay']:g}"
            if not options.get("ema_warmup", True):
                label += " no-warmup"
        return label
    return name
