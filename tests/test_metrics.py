"""Tests of sgdrop.metrics against hand-made cases and against captum's Grad-CAM (CPU, seconds)."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from sgdrop import metrics


# ----------------------------------------------------------------------------------------- fixtures
def small_cnn(seed: int = 0, pooled_head: bool = False):
    """A random two-conv encoder (3x16x16 -> 16x8x8) and a linear head with 5 classes."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
    )
    # A flatten head makes the gradient vary over space, a pooled head makes it constant:
    # both must match captum.
    if pooled_head:
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    else:
        head = nn.Sequential(nn.Dropout(0.5), nn.Flatten(), nn.Linear(16 * 8 * 8, 5))
    # Give BatchNorm non-trivial running statistics, so eval vs train mode matters.
    encoder[1].running_mean.uniform_(-0.5, 0.5)
    encoder[1].running_var.uniform_(0.5, 2.0)
    return encoder, head


def captum_gradcam(encoder, head, x, target):
    """The reference: captum's LayerGradCam at the encoder's output, upsampled and max-normalised."""
    model = nn.Sequential(encoder, head).eval()
    attr = LayerGradCam(model, encoder).attribute(x, target=target, relu_attributions=True)
    attr = LayerAttribution.interpolate(attr, x.shape[-2:], interpolate_mode="bilinear")[:, 0]
    peak = attr.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, attr / peak, torch.zeros_like(attr))


def training_flags(*modules):
    return [m.training for module in modules for m in module.modules()]


# ------------------------------------------------------------------------------------- area ratio
def test_area_ratio_of_a_known_block():
    cams = torch.zeros(3, 16, 16)
    cams[0, :, :8] = 1.0  # a 16x8 block: half the image
    cams[1, :4, :4] = 1.0  # 16 of 256 pixels
    cams[1, 4:8, :4] = 0.5  # exactly at the threshold: counts
    cams[1, 8:12, :4] = 0.49  # just below: does not count
    cams[2] = 1.0
    ratio = metrics.area_ratio(cams, threshold=0.5)
    assert ratio.tolist() == [0.5, 32 / 256, 1.0]


def test_area_ratio_of_an_all_zero_cam_is_zero_whatever_the_threshold():
    cams = torch.zeros(2, 8, 8)
    cams[1, 0, 0] = 1.0
    assert metrics.area_ratio(cams, threshold=0.5).tolist() == [0.0, 1 / 64]
    assert metrics.area_ratio(cams, threshold=0.0).tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("pooled_head", [False, True])
def test_gradcam_matches_captum(pooled_head):
    encoder, head = small_cnn(pooled_head=pooled_head)
    x = torch.randn(6, 3, 16, 16)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = metrics.gradcam(encoder, head, x, target)
    reference = captum_gradcam(encoder, head, x, target)
    assert ours.shape == (6, 16, 16)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # Max-normalised: each non-empty map peaks at exactly 1.
    peaks = ours.amax(dim=(1, 2))
    assert torch.all((peaks == 1) | (peaks == 0))
    # An int target means the same class for every image.
    torch.testing.assert_close(
        metrics.gradcam(encoder, head, x, 2), captum_gradcam(encoder, head, x, 2), atol=1e-5, rtol=0
    )


def test_gradcam_leaves_no_grads_works_under_no_grad_and_restores_modes():
    encoder, head = small_cnn()
    encoder.train()
    head.train()
    head[0].eval()  # a mixed state must come back exactly as it was
    flags = training_flags(encoder, head)
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        cams = metrics.gradcam(encoder, head, x, y)
    assert all(p.grad is None for p in [*encoder.parameters(), *head.parameters()])
    assert training_flags(encoder, head) == flags
    # It ran in eval mode: same answer as the eval-mode captum reference (BN stats, no dropout).
    torch.testing.assert_close(cams, captum_gradcam(encoder, head, x, y), atol=1e-5, rtol=0)


def test_gradcam_under_autocast_returns_float32_close_to_full_precision():
    encoder, head = small_cnn()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    full = metrics.gradcam(encoder, head, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        low = metrics.gradcam(encoder, head, x, y)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=0.05, rtol=0)


def test_attribution_area_ratio_is_the_mean_over_images():
    encoder, head = small_cnn()
    encoder.eval(), head.eval()
    x = torch.randn(5, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4])
    expected = metrics.area_ratio(captum_gradcam(encoder, head, x, y), 0.3).mean().item()
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]  # unequal batches: a mean over images, not batches
    got = metrics.attribution_area_ratio(encoder, head, batches, threshold=0.3)
    assert got == pytest.approx(expected, abs=1e-6)


def test_gradcam_examples_types():
    encoder, head = small_cnn()
    encoder.eval(), head.eval()
    x = torch.randn(3, 3, 16, 16)
    y = torch.tensor([0, 1, 2])
    out = metrics.gradcam_examples(encoder, head, x, y)
    assert out["cams"].dtype == np.float16 and out["cams"].shape == (3, 16, 16)
    assert out["pred"].shape == (3,) and np.issubdtype(out["pred"].dtype, np.integer)
    with torch.no_grad():
        assert out["pred"].tolist() == head(encoder(x)).argmax(1).tolist()


# -------------------------------------------------------------------------------- neuron coverage
def known_encoder():
    """An encoder whose conv channel means are set by hand.

    - ``known`` (1x1 conv, 4 channels): channel c of a constant image of value v has mean
      a_c * v + b_c. With v = 0 the means are A = b = [0, .2, .6, 1]; with v = 1 they are
      B = a + b = [1, .7, .3, 0]. Both already span [0, 1], so scaling leaves them as they are.
    - ``const`` (3 channels, zero weights, equal biases): all channels equal -> scales to all 0.
    - ``last`` (2 channels, zero weights, biases [0, 1]): scaled [0, 1] for every input.
    """
    known = nn.Conv2d(3, 4, 1)
    const = nn.Conv2d(4, 3, 3, padding=1)
    last = nn.Conv2d(3, 2, 3, padding=1)
    b = torch.tensor([0.0, 0.2, 0.6, 1.0])
    a = torch.tensor([1.0, 0.7, 0.3, 0.0]) - b
    with torch.no_grad():
        known.weight.zero_()
        known.weight[:, 0, 0, 0] = a  # reads the first colour channel only
        known.bias.copy_(b)
        const.weight.zero_()
        const.bias.fill_(0.5)
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 1.0]))
    return nn.Sequential(
        OrderedDict(known=known, act=nn.ReLU(), const=const, last=last, pool=nn.MaxPool2d(2))
    )


def known_batches(together: bool):
    images = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])  # v = 0, v = 1
    labels = torch.tensor([0, 1])
    if together:
        return [(images, labels)]
    return [(images[:1], labels[:1]), (images[1:], labels[1:])]


@pytest.mark.parametrize("together", [True, False])
def test_neuron_coverage_of_known_activations(together):
    encoder = known_encoder()
    report = metrics.neuron_coverage(encoder, known_batches(together), thresholds=(0.25, 0.5, 0.75))
    assert report["layers"] == ["known", "const", "last"]
    assert report["channels"] == [4, 3, 2]
    assert report["thresholds"] == [0.25, 0.5, 0.75]
    assert report["layer_output"] == "conv2d"
    assert report["num_inputs"] == 2
    # known: A=[0,.2,.6,1], B=[1,.7,.3,0]
    #   t=.25: A {2,3}, B {0,1,2} -> mean (2+3)/8, union 4/4
    #   t=.5 : A {2,3}, B {0,1}   -> mean (2+2)/8, union 4/4
    #   t=.75: A {3},   B {0}     -> mean (1+1)/8, union 2/4
    # const: nothing; last: channel 1 for both inputs -> mean 1/2, union 1/2.
    expected_per_layer = {
        "0.25": {"mean": [5 / 8, 0.0, 0.5], "union": [1.0, 0.0, 0.5]},
        "0.5": {"mean": [4 / 8, 0.0, 0.5], "union": [1.0, 0.0, 0.5]},
        "0.75": {"mean": [2 / 8, 0.0, 0.5], "union": [0.5, 0.0, 0.5]},
    }
    assert report["per_layer"] == expected_per_layer
    # Pooled over 4 + 3 + 2 = 9 neurons: per-input counts A, B are (2+1, 3+1), (2+1, 2+1), (1+1, 1+1).
    assert report["all_layers"] == {
        "0.25": {"mean": 7 / 18, "union": 5 / 9},
        "0.5": {"mean": 6 / 18, "union": 5 / 9},
        "0.75": {"mean": 4 / 18, "union": 3 / 9},
    }
    assert report["last_layer"] == {k: {"mean": 0.5, "union": 0.5} for k in expected_per_layer}
    json.dumps(report)  # must be JSON-serialisable as is
    assert all(not m._forward_hooks for m in encoder.modules())


def test_neuron_coverage_removes_hooks_on_error_and_restores_mode():
    encoder = known_encoder().train()

    def failing_batches():
        yield known_batches(True)[0]
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        metrics.neuron_coverage(encoder, failing_batches())
    assert all(not m._forward_hooks for m in encoder.modules())
    assert all(m.training for m in encoder.modules())


def test_neuron_coverage_refuses_a_conv_run_twice():
    conv = nn.Conv2d(3, 3, 1)
    shared = nn.Sequential(conv, nn.ReLU(), conv)  # same module twice in one forward
    with pytest.raises(RuntimeError, match="exactly once"):
        metrics.neuron_coverage(shared, known_batches(True))
    assert not conv._forward_hooks


# --------------------------------------------------------------------------------------- accuracy
def test_accuracy_of_known_predictions():
    # Identity model: the "images" are the logits themselves.
    encoder, head = nn.Flatten(), nn.Identity()
    logits = torch.eye(4)  # predicts 0, 1, 2, 3
    labels = torch.tensor([0, 1, 2, 0])  # the last one is wrong
    batches = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]
    assert metrics.accuracy(encoder, head, batches) == 0.75


def test_evaluate_all_reports_every_measurement():
    encoder, head = small_cnn()
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        report = metrics.evaluate_all(
            encoder,
            head,
            lambda: iter([(x[:2], y[:2]), (x[2:], y[2:])]),  # a fresh one-shot iterable each call
            attr_threshold=0.5,
            coverage_thresholds=(0.5,),
        )
    assert set(report) == {"test_acc", "attr_area_ratio", "attr_threshold", "coverage"}
    assert 0 <= report["test_acc"] <= 1 and 0 <= report["attr_area_ratio"] <= 1
    assert report["attr_threshold"] == 0.5
    assert report["coverage"]["num_inputs"] == 4
    json.dumps(report)
    assert all(p.grad is None for p in [*encoder.parameters(), *head.parameters()])
