"""Share of dropped feature-map entries: SGDrop at rho in {0.001, 0.005, 0.01, 0.025, 0.05, 0.1}."""

import sys

import common

GRID = common.Grid(
    set={"method.name": "sgdrop"},
    sweep={"method.rho": [0.001, 0.005, 0.01, 0.025, 0.05, 0.1]},
)

if __name__ == "__main__":
    sys.exit(common.main("03_rho_ablation", GRID))
