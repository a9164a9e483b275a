"""What SGDrop adds to a training step on the mini-profile model, counted and timed.

    python scripts/sgdrop_cost.py [--repeats 60]

1. Multiply-adds (torch.utils.flop_counter; FLOPs / 2) of a vanilla step, of the attribution (the
   online mode's extra: the head's forward and its backward with respect to the feature map only) and
   of the EMA encoder's forward (the faithful mode adds it).
2. The EMA encoder's no-grad forward as SGDrop runs it (batch norm folded into the convolutions by
   sgdrop/folding.py, channels-last weights) against the plain eval-mode forward and against folded
   contiguous weights, timed in the same rounds (sgdrop.benchmark).
"""

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sgdrop import models
from sgdrop.benchmark import paired_ratio, time_interleaved
from sgdrop.methods import build_method


def gmacs(counter: FlopCounterMode) -> float:
    return counter.get_total_flops() / 2e9


def count(encoder, head, x, y) -> None:
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(head(encoder(x)), y).backward()
    with FlopCounterMode(display=False) as ema_forward, torch.no_grad():
        z = encoder(x)
    head.requires_grad_(False)  # as feature_attribution: the gradient with respect to z only
    z.requires_grad_(True)
    with FlopCounterMode(display=False) as attribution:
        head(z).gather(1, y.view(-1, 1)).sum().backward()
    base = gmacs(step)
    print(f"vanilla step (forward + backward): {base:.2f} G multiply-adds")
    print(f"attribution (online's extra): {gmacs(attribution):.3f} G = {gmacs(attribution) / base:.1%} of the step")
    print(f"EMA encoder forward (faithful mode adds it): {gmacs(ema_forward):.2f} G = {gmacs(ema_forward) / base:.1%}")


def time_ema_forward(encoder, head, x, repeats: int) -> None:
    """The EMA forward as SGDrop runs it (batch norm folded, channels-last weights) against the plain
    eval-mode forward and against folded contiguous weights, in the same rounds."""
    model = build_method("sgdrop", encoder, head, rho=0.01).train()
    contiguous = copy.deepcopy(model)
    contiguous.ema.module.to(memory_format=torch.contiguous_format)
    plain = model.ema.module["encoder"]

    def unfolded():
        with torch.no_grad():
            plain(x)

    times = time_interleaved({"as run": lambda: model.ema_features(x), "unfolded": unfolded,
                              "contiguous weights": lambda: contiguous.ema_features(x)},
                             torch.device("cpu"), repeats, warmup=3)
    print(f"EMA encoder forward, median of {repeats} rounds, as SGDrop runs it (folded, channels-last): "
          f"{statistics.median(times['as run']) * 1e3:.1f} ms")
    for other in ("unfolded", "contiguous weights"):
        ratio = paired_ratio(times[other], times["as run"])["ratio"]
        print(f"  {other}: {statistics.median(times[other]) * 1e3:.1f} ms ({ratio:.2f}x as long)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder, head = models.build("vgg11", 10, 0.25, small_input=True)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    time_ema_forward(encoder, head, x, args.repeats)  # first: count() turns off the head's gradients
    count(encoder, head, x, y)


if __name__ == "__main__":
    main()
