"""Does the attribution that picks the dropped entries matter? SGDrop with grad x activation (the
paper's), the plain gradient and Grad-CAM channel weights, and the random control, all at the same rho."""

import sys

import common

SALIENCY = {
    "grad_x_activation": {"method.name": "sgdrop", "method.saliency": "grad_x_activation"},
    "gradient": {"method.name": "sgdrop", "method.saliency": "gradient"},
    "gradcam": {"method.name": "sgdrop", "method.saliency": "gradcam"},
    "random": {"method.name": "random"},
}

GRID = common.Grid(set={"method.rho": 0.01}, axes={"saliency": SALIENCY})

if __name__ == "__main__":
    sys.exit(common.main("04_attribution_methods", GRID))
