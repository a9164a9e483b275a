"""SGDrop: Saliency Guided Dropout (Bertoin et al., arXiv:2409.17370) and its reproduction.

Drop-in use in a training loop::

    encoder, head = sgdrop.models.build("vgg11", num_classes=10)
    model = sgdrop.SGDrop(encoder, head, rho=0.01)
    loss = F.cross_entropy(model(x, y), y); loss.backward(); opt.step(); model.update_ema()
"""

from . import models
from .base import RegularizedClassifier
from .baselines import RSC, DropBlock, FeatureDropout, RandomDrop, SpatialDropout, Vanilla, random_mask
from .methods import METHODS, build_method, method_label
from .saliency_dropout import SGDrop, feature_attribution, saliency_mask

__version__ = "0.1.0"

__all__ = [
    "SGDrop", "feature_attribution", "saliency_mask", "RegularizedClassifier", "Vanilla", "FeatureDropout",
    "SpatialDropout", "RandomDrop", "RSC", "DropBlock", "random_mask", "METHODS", "build_method",
    "method_label", "models",
]
