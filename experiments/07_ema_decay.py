"""The EMA copy that picks the mask: its decay, its warm-up, and no copy at all (the online mode).

The paper gives no decay. The default, 0.99 with warm-up, uses min(0.99, (1 + t) / (10 + t)) at step
t, so in short runs (a mini run is ~400 steps) the warm-up, not 0.99, sets the decay throughout.
Without warm-up the decay is fixed from the first step: 0 makes the copy the previous step's weights
(in eval mode), 0.999 keeps it near its random initialisation for most of a short run. The online mode
uses the online network's own feature map in training mode. All at the default rho.
"""

import sys

import common

EMA = {
    "online": {"method.attribution": "online"},
    "decay 0": {"method.ema_decay": 0.0, "method.ema_warmup": False},
    "decay 0.9": {"method.ema_decay": 0.9, "method.ema_warmup": False},
    "decay 0.99": {"method.ema_decay": 0.99, "method.ema_warmup": False},
    "decay 0.999": {"method.ema_decay": 0.999, "method.ema_warmup": False},
    "decay 0.99 + warm-up (default)": {},
}

GRID = common.Grid(set={"method.name": "sgdrop", "method.attribution": "ema"}, axes={"ema": EMA})

if __name__ == "__main__":
    sys.exit(common.main("07_ema_decay", GRID))
