"""Main comparison: vanilla, dropout (p chosen on the validation split by the analysis, from the paper's
0.2-0.7 range), the random-drop control at SGDrop's rho, RSC, DropBlock and SGDrop (rho = 0.01, and its
fast online-attribution mode), over several seeds. Same recipe and budget for every method."""

import sys

import common

METHODS = {
    "vanilla": {"method.name": "vanilla"},
    "dropout0.2": {"method.name": "dropout", "method.p": 0.2},
    "dropout0.5": {"method.name": "dropout", "method.p": 0.5},
    "dropout0.7": {"method.name": "dropout", "method.p": 0.7},
    "random": {"method.name": "random", "method.rho": 0.01},
    "rsc": {"method.name": "rsc", "method.p": 0.33, "method.batch_fraction": 0.33},
    "dropblock": {"method.name": "dropblock", "method.p": 0.1, "method.block_size": 3},
    "sgdrop": {"method.name": "sgdrop", "method.rho": 0.01},
    "sgdrop_online": {"method.name": "sgdrop", "method.rho": 0.01, "method.attribution": "online"},
}

GRID = common.Grid(axes={"method": METHODS})

if __name__ == "__main__":
    sys.exit(common.main("02_main_accuracy", GRID))
