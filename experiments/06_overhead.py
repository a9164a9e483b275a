"""Training-step overhead of every method against vanilla (issue 6; the paper's R5: about 1.33x).

    python experiments/06_overhead.py --profile mini            # the model the targets refer to
    python experiments/06_overhead.py --profile paper           # VGG16, 224 px, batch 128, bf16, CUDA

One process, one model initialisation copied into every method, one fixed batch, one device. Each
method's full training step (forward with the method, cross-entropy, backward, optimizer step,
`after_step()`) is warmed up, then the steps are run in rounds, each method once per round in a
shuffled order, so a busy spell of a shared machine hits all methods alike. The table gives each
method's median step time over rounds and its IQR, and its ratio to vanilla taken per round (paired)
with the median and IQR of those ratios. The SGDrop (ema) step is
also split into its pieces, timed separately on the same data in the same rounds: the EMA encoder
forward, the attribution (head forward and backward with respect to the feature map), the mask
(top-k) and the EMA update; each share is the piece's median over the SGDrop (ema) step's median.
Writes `<results>/../overhead/overhead-<profile>-<arch>-<device>.json` (default results/overhead/).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sgdrop import models
from sgdrop.benchmark import paired_ratio, summarize, time_interleaved
from sgdrop.io import environment, write_json
from sgdrop.methods import build_method
from sgdrop.saliency_dropout import feature_attribution, saliency_mask
from sgdrop.train import speed_up, to_model_input

PROFILES = {
    "smoke": dict(arch="vgg11", width=0.125, image_size=64, batch_size=8, device="cpu", repeats=3, warmup=1,
                  small_input=True, bf16=False, channels_last=True),
    "mini": dict(arch="vgg11", width=0.25, image_size=64, batch_size=32, device="cpu", repeats=60, warmup=3,
                 small_input=True, bf16=False, channels_last=True),
    "paper": dict(arch="vgg16", width=1.0, image_size=224, batch_size=128, device="cuda", repeats=50, warmup=10,
                  small_input=False, bf16=True, channels_last=True),
}

# table label -> (method name, constructor options); the class defaults unless the issue names a value
METHODS = {
    "vanilla": ("vanilla", {}),
    "dropout": ("dropout", {"p": 0.5}),
    "spatial_dropout": ("spatial_dropout", {"p": 0.5}),
    "random": ("random", {"rho": 0.01}),
    "rsc": ("rsc", {"p": 0.33, "batch_fraction": 0.33}),
    "dropblock": ("dropblock", {"p": 0.1, "block_size": 3}),
    "sgdrop (ema)": ("sgdrop", {"rho": 0.01, "attribution": "ema"}),
    "sgdrop (online)": ("sgdrop", {"rho": 0.01, "attribution": "online"}),
}
NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING = 0.01, 0.9, 5e-4, 0.1  # the engine's SGD recipe (lower lr: one batch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="mini", help="defaults for the options below")
    parser.add_argument("--arch", choices=models.ARCHS)
    parser.add_argument("--width", type=float)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", help="cpu | cuda | cuda:N")
    parser.add_argument("--repeats", type=int, help="timed rounds (each runs every method once)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first")
    parser.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every method's encoder and head in place, as train.compile=true does")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own, all cores)")
    parser.add_argument("--results", default="results/runs",
                        help="results root of the runs; the JSON goes to its sibling folder overhead/")
    parser.add_argument("--dry-run", action="store_true", help="print what would be measured and exit")
    args = parser.parse_args(argv)
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def output_path(args: argparse.Namespace) -> Path:
    device = torch.device(args.device).type
    suffix = "-compile" if args.compile else ""
    return Path(args.results).parent / "overhead" / f"overhead-{args.profile}-{args.arch}-{device}{suffix}.json"


def config_of(args: argparse.Namespace) -> dict:
    return {"arch": args.arch, "width": args.width, "image_size": args.image_size, "batch_size": args.batch_size,
            "device": args.device, "dtype": "bfloat16" if args.bf16 else "float32", "repeats": args.repeats,
            "profile": args.profile, "warmup": args.warmup, "small_input": args.small_input,
            "channels_last": args.channels_last, "compile": args.compile,
            "threads": args.threads or torch.get_num_threads()}


def make_step(model, x, y, device, bf16):
    """One full training step of `model` on (x, y), as `sgdrop.train.train_one_epoch` runs it."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, y)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_step()
    return step


def sgdrop_pieces(model, x, y, device, bf16):
    """The pieces of an SGDrop (ema) step, each a function on fixed inputs from the same batch."""
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    with autocast():
        z_ema = model.ema_features(x)
        attribution = feature_attribution(model.ema.module["head"], z_ema, y, model.saliency)

    def ema_forward():
        with autocast():
            model.ema_features(x)

    def attribute():
        with autocast():
            feature_attribution(model.ema.module["head"], z_ema, y, model.saliency)

    return {"ema_forward": ema_forward, "attribution": attribute,
            "mask": lambda: saliency_mask(attribution, model.rho), "ema_update": model.update_ema}


def markdown_table(methods: dict) -> str:
    lines = ["| method | median step (ms) | IQR (ms) | ratio to vanilla (paired median) | ratio IQR |",
             "|---|---:|---:|---:|---:|"]
    for label, row in methods.items():
        lines.append(f"| {label} | {row['median_step_s'] * 1e3:.1f} | {row['iqr_s'] * 1e3:.1f} "
                     f"| {row['ratio_to_vanilla']:.3f} | {row['ratio_iqr']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = output_path(args)
    if args.dry_run:
        print(f"would time one training step of: {', '.join(METHODS)}")
        print(f"and the SGDrop (ema) pieces: ema_forward, attribution, mask, ema_update; config: {config_of(args)}")
        print(f"would write {out}")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, head = models.build(args.arch, NUM_CLASSES, args.width, small_input=args.small_input)
    # The input's layout is the engine's (channels-last on CUDA, as loaded on the CPU, where the
    # channels-last weights decide the convolutions' layout).
    x = to_model_input(torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device), device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)

    steps, nets = {}, {}
    for label, (name, options) in METHODS.items():
        net = build_method(name, copy.deepcopy(encoder), copy.deepcopy(head), **options)
        # As the engine does; without channels-last, layouts stay as the methods set them.
        nets[label] = speed_up(net.to(device), args.channels_last, args.compile).train()
        steps[label] = make_step(nets[label], x, y, device, args.bf16)
    pieces = sgdrop_pieces(nets["sgdrop (ema)"], x, y, device, args.bf16)
    print(f"timing {len(steps)} methods and {len(pieces)} SGDrop pieces, {args.repeats} rounds after "
          f"{args.warmup} warm-up rounds, on {device} ({torch.get_num_threads()} threads)", flush=True)
    times = time_interleaved({**steps, **pieces}, device, args.repeats, args.warmup)

    summary = {name: summarize(t) for name, t in times.items()}
    methods = {}
    for label in steps:
        ratio = paired_ratio(times[label], times["vanilla"])
        methods[label] = {"median_step_s": summary[label]["median_s"], "iqr_s": summary[label]["iqr_s"],
                          "ratio_to_vanilla": ratio["ratio"], "ratio_iqr": ratio["ratio_iqr"],
                          "method": METHODS[label][0], "options": METHODS[label][1]}
    sgdrop_step = summary["sgdrop (ema)"]["median_s"]
    breakdown = {f"{piece}_share": summary[piece]["median_s"] / sgdrop_step for piece in pieces}
    breakdown.update({f"{piece}_median_s": summary[piece]["median_s"] for piece in pieces})
    result = {"kind": "overhead", "config": config_of(args), "methods": methods, "sgdrop_breakdown": breakdown,
              "env": environment(device)}
    write_json(out, result)

    print(markdown_table(methods))
    print("\nSGDrop (ema) step: " + ", ".join(f"{piece} {breakdown[f'{piece}_share']:.1%}" for piece in pieces))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
