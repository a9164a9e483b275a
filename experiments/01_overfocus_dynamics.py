"""Overfocusing dynamics (the paper's Fig. 1): vanilla VGG11 on low-data Imagenette, with the attribution
area ratio and the train/test accuracy recorded every epoch, across training-set sizes (does overfocusing
grow as data shrinks?). The profile gives the sizes (``sweep: {dataset.per_class: [...]}``)."""

import sys

import common

GRID = common.Grid(
    set={"method.name": "vanilla", "model.arch": "vgg11", "eval.attr_every_epoch": True},
    sweep={"dataset.per_class": [25, 50, 100]},
)

if __name__ == "__main__":
    sys.exit(common.main("01_overfocus_dynamics", GRID))
