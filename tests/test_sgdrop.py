"""SGDrop's attribution, mask and module: exact counts, gradient flow, EMA behaviour."""

import pytest
import torch
from torch import nn

import sgdrop
from sgdrop import SGDrop, feature_attribution, saliency_mask
from sgdrop.saliency_dropout import num_dropped


def tiny_net(channels=4, classes=3):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))
    return encoder, head


# --- saliency_mask -------------------------------------------------------------------------------

def test_mask_drops_exactly_the_k_largest_entries():
    attribution = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0, 0.2, 0.7, 0.05, 0.6, 0.4]])
    mask = saliency_mask(attribution, rho=0.3)  # k = floor(0.3 * 10) = 3
    assert mask.dtype == attribution.dtype and mask.shape == attribution.shape
    assert torch.equal((mask == 0).nonzero()[:, 1], torch.tensor([1, 3, 6]))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_mask_is_per_sample_on_feature_maps():
    attribution = torch.rand(5, 8, 4, 4) + 0.01  # all positive, n = 128
    mask = saliency_mask(attribution, rho=0.05)  # k = floor(6.4) = 6
    dropped = (mask == 0).flatten(1)
    assert dropped.sum(1).tolist() == [6] * 5
    for i in range(5):
        threshold = attribution[i].flatten().sort(descending=True).values[5]
        assert torch.equal(dropped[i], attribution[i].flatten() >= threshold)


def test_mask_k_is_at_least_one():
    attribution = torch.tensor([[0.1, 0.5, 0.2]])
    mask = saliency_mask(attribution, rho=0.01)  # floor(0.03) = 0 -> k = 1
    assert mask.tolist() == [[1.0, 0.0, 1.0]]


def test_mask_never_drops_non_positive_entries():
    attribution = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                                [0.0] * 10])
    mask = saliency_mask(attribution, rho=0.5)  # k = 5, but only one positive entry in row 0
    assert (mask[0] == 0).nonzero().flatten().tolist() == [2]
    assert mask[1].eq(1).all(), "an all-zero attribution drops nothing"


def test_mask_ties_drop_exactly_k():
    attribution = torch.ones(2, 100)
    mask = saliency_mask(attribution, rho=0.07)
    assert (mask == 0).sum(1).tolist() == [7, 7]


def test_k_is_floor_of_rho_n_even_where_floating_point_undershoots():
    assert 0.29 * 100 < 29  # the float trap this guards against
    assert num_dropped(0.29, 100) == 29
    assert num_dropped(0.01, 25088) == 250


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5])
def test_mask_rejects_rho_outside_unit_interval(rho):
    with pytest.raises(ValueError, match=str(rho)):
        saliency_mask(torch.rand(1, 10), rho)


def test_mask_keeps_dtype():
    mask = saliency_mask(torch.rand(2, 3, 2, 2, dtype=torch.float64), 0.1)
    assert mask.dtype == torch.float64


# --- feature_attribution -------------------------------------------------------------------------

def test_attribution_is_relu_of_gradient_times_activation():
    head = nn.Sequential(nn.Flatten(), nn.Linear(6, 2, bias=False))
    with torch.no_grad():
        head[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.0, 3.0, -2.0], [0.5] * 6]))
    z = torch.tensor([[[[1.0, 2.0, 3.0]], [[-1.0, 1.0, 1.0]]]])  # 1 x 2 x 1 x 3
    with torch.no_grad():  # must work inside no_grad
        attribution = feature_attribution(head, z, torch.tensor([0]))
    expected = torch.relu(head[1].weight[0].view(1, 2, 1, 3) * z)
    assert torch.allclose(attribution, expected)
    assert attribution.shape == z.shape and not attribution.requires_grad
    assert head[1].weight.grad is None, "no gradient may be left on the head"


def test_attribution_variants_have_the_feature_shape():
    encoder, head = tiny_net()
    z = encoder(torch.rand(2, 3, 6, 6))
    for kind in ("grad_x_activation", "gradient", "gradcam"):
        a = feature_attribution(head, z, torch.tensor([0, 2]), kind)
        assert a.shape == z.shape and (a >= 0).all()
    assert all(p.grad is None for p in head.parameters())


# --- SGDrop module -------------------------------------------------------------------------------

def test_gradient_reaches_encoder_only_through_kept_entries():
    encoder, head = tiny_net()
    model = SGDrop(encoder, head, rho=0.1, attribution="online")
    x, y = torch.rand(2, 3, 5, 5), torch.tensor([0, 1])
    captured = {}

    def keep_z(module, inputs, out):
        out.retain_grad()
        captured["z"] = out

    encoder.register_forward_hook(keep_z)
    model.train()
    model(x, y).sum().backward()
    z = captured["z"]
    mask = saliency_mask(feature_attribution(head, z, y), 0.1)
    assert (mask == 0).sum() == 2 * 10  # k = floor(0.1 * 100) per sample
    assert z.grad[mask == 0].abs().max() == 0
    assert z.grad[mask == 1].abs().max() > 0
    assert all(p.grad is not None for p in encoder.parameters())


def test_ema_mask_follows_the_ema_copy_not_the_online_weights():
    encoder, head = tiny_net()
    model = SGDrop(encoder, head, rho=0.05, attribution="ema").train()
    with torch.no_grad():  # make the online network differ from its EMA copy
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    z = model.encoder(x)
    mask = model.compute_mask(z, x, y)
    ema = model.ema.module
    expected = saliency_mask(feature_attribution(ema["head"], ema["encoder"](x), y), 0.05)
    online = saliency_mask(feature_attribution(model.head, z, y), 0.05)
    assert torch.equal(mask, expected)
    assert not torch.equal(mask, online)


def test_eval_mode_changes_nothing():
    encoder, head = tiny_net()
    model = SGDrop(encoder, head, rho=0.5).eval()
    x, y = torch.rand(3, 3, 6, 6), torch.tensor([0, 1, 2])
    plain = head(encoder(x))
    assert torch.equal(model(x, y), plain)
    assert torch.equal(model(x), plain)


def test_training_forward_masks():
    encoder, head = tiny_net()
    model = SGDrop(encoder, head, rho=0.3, attribution="online").train()
    x, y = torch.rand(3, 3, 6, 6), torch.tensor([0, 1, 2])
    torch.manual_seed(1)
    masked = model(x, y)
    assert masked.shape == (3, 3)


def test_ema_parameters_are_not_trainable_but_are_saved():
    encoder, head = tiny_net()
    model = SGDrop(encoder, head)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("ema") for n in names)
    assert len(list(model.parameters())) == len(list(encoder.parameters())) + len(list(head.parameters()))
    state = model.state_dict()
    assert "ema.module.encoder.0.weight" in state and "ema.module.encoder.1.running_mean" in state
    clone = SGDrop(*tiny_net())
    clone.load_state_dict(state)
    assert torch.equal(clone.ema.module["encoder"][0].weight, model.ema.module["encoder"][0].weight)


def test_update_ema_moves_weights_and_batchnorm_buffers():
    encoder, head = tiny_net()
    model = SGDrop(encoder, head, ema_decay=0.9, ema_warmup=False).train()
    ema_bn = model.ema.module["encoder"][1]
    before_mean, before_weight = ema_bn.running_mean.clone(), model.ema.module["encoder"][0].weight.clone()
    model.encoder(torch.rand(8, 3, 6, 6) * 5)  # updates the online running stats
    with torch.no_grad():
        model.encoder[0].weight.add_(1.0)
    model.update_ema()
    assert not torch.equal(ema_bn.running_mean, before_mean)
    expected = before_weight + 0.1 * (model.encoder[0].weight - before_weight)
    assert torch.allclose(model.ema.module["encoder"][0].weight, expected)
    assert ema_bn.num_batches_tracked == model.encoder[1].num_batches_tracked
    assert int(model.ema.num_updates) == 1


def test_ema_warmup_follows_online_weights_closely_at_first():
    from sgdrop.ema import ema_decay_at
    assert ema_decay_at(0, 0.99, True) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.99, True) == 0.99
    assert ema_decay_at(0, 0.99, False) == 0.99


def test_ema_copy_stays_in_eval_mode():
    model = SGDrop(*tiny_net()).train()
    assert model.training and not model.ema.module.training


def test_online_mode_keeps_no_ema_copy():
    model = SGDrop(*tiny_net(), attribution="online")
    assert model.ema is None
    model.update_ema()  # a no-op, not an error


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="1.5"):
        SGDrop(*tiny_net(), rho=1.5)
    with pytest.raises(ValueError, match="attribution"):
        SGDrop(*tiny_net(), attribution="other")


def test_public_api_names():
    for name in ("feature_attribution", "saliency_mask", "SGDrop", "METHODS", "build_method"):
        assert hasattr(sgdrop, name)
