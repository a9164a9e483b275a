"""SGDrop across architectures: VGG16, ResNet50 and ConvNeXt-T at the paper's scale; a small VGG and
ResNet18 on the CPU profiles (the profile selects). Vanilla versus SGDrop on each."""

import sys

import common

ARCHS = {
    "vgg11": {"model.arch": "vgg11"},  # width from the profile (0.25 on CPU, 1 at paper scale)
    "vgg16": {"model.arch": "vgg16"},
    "resnet18": {"model.arch": "resnet18", "model.width": 1.0},
    "resnet50": {"model.arch": "resnet50", "model.width": 1.0},
    # ConvNeXt trains with AdamW in its own recipe (Liu et al. 2022: lr 4e-3 at batch 4096, wd 0.05)
    "convnext_tiny": {"model.arch": "convnext_tiny", "model.width": 1.0, "train.optimizer": "adamw",
                      "train.lr": 0.001, "train.weight_decay": 0.05},
}
METHODS = {
    "vanilla": {"method.name": "vanilla"},
    "sgdrop": {"method.name": "sgdrop", "method.rho": 0.01},
}

GRID = common.Grid(axes={"arch": ARCHS, "method": METHODS})

if __name__ == "__main__":
    sys.exit(common.main("05_architectures", GRID))
