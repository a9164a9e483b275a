"""The folded (conv + batch norm as one conv) inference view of SGDrop's EMA encoder."""

import copy

import pytest
import torch
from torch import nn

from sgdrop import models
from sgdrop.folding import fold_batch_norm
from sgdrop.methods import build_method


def randomize_batch_norm(module: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial statistics and affine parameters, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=generator))
                m.bias.copy_(torch.randn(m.num_features, generator=generator))


@pytest.mark.parametrize("arch, width, pairs", [("vgg11", 0.125, 8), ("resnet18", 1.0, 20)])
def test_folded_view_computes_the_eval_forward(arch, width, pairs):
    encoder, _ = models.build(arch, 10, width, small_input=True)
    randomize_batch_norm(encoder)
    encoder.eval()
    folded = fold_batch_norm(encoder)
    assert sum(1 for n in folded.graph.nodes if str(n.target).startswith("folded_")) == pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = encoder(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_folded_view_has_no_tensors_of_its_own_and_follows_updates():
    encoder, _ = models.build("vgg11", 10, 0.125, small_input=True)
    encoder.eval()
    folded = fold_batch_norm(encoder)
    assert list(folded.parameters()) == [] and list(folded.buffers()) == []
    randomize_batch_norm(encoder, seed=1)  # in place, as an EMA update or load_state_dict does
    with torch.no_grad():
        encoder[0].weight.mul_(-0.5)
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(folded(x), encoder(x), rtol=1e-4, atol=1e-4)


def test_nothing_to_fold_gives_none():
    assert fold_batch_norm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())) is None
    assert fold_batch_norm(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3))) is None  # bn before conv
    encoder, _ = models.build("convnext_tiny", 10, small_input=True)  # layer norm only
    assert fold_batch_norm(encoder) is None


def test_sgdrop_ema_features_use_the_folded_view_and_state_dict_is_unchanged():
    encoder, head = models.build("vgg11", 10, 0.125, small_input=True)
    model = build_method("sgdrop", encoder, head, rho=0.01)
    assert model._ema_encoder_folded is not None
    assert not any("folded" in key for key in model.state_dict())
    randomize_batch_norm(model.ema.module)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.ema_features(x), model.ema.module["encoder"](x), rtol=1e-4, atol=1e-4)


def test_a_copied_sgdrop_folds_its_own_ema_tensors():
    encoder, head = models.build("vgg11", 10, 0.125, small_input=True)
    model = build_method("sgdrop", encoder, head, rho=0.01)
    clone = copy.deepcopy(model).double()
    randomize_batch_norm(clone.ema.module, seed=2)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(clone.ema_features(x), clone.ema.module["encoder"](x))
        assert not torch.allclose(model.ema_features(x.float()).double(), clone.ema_features(x), atol=1e-3)
