"""Baselines, the method registry and the encoder/head split of every architecture."""

import pytest
import torch
from torch import nn

from sgdrop import METHODS, RandomDrop, build_method, method_label, models, random_mask


def small_pair():
    torch.manual_seed(0)
    return models.build("vgg11", num_classes=5, width=0.125, small_input=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_and_is_plain_in_eval(name):
    encoder, head = small_pair()
    options = {"rho": 0.05, "p": 0.3, "ema_decay": 0.9, "ema_warmup": True, "attribution": "ema",
               "saliency": "grad_x_activation", "rescale": False, "block_size": 3, "batch_fraction": 0.5}
    model = build_method(name, encoder, head, **options)
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model.train()
    loss = nn.functional.cross_entropy(model(x, y), y)
    loss.backward()
    model.after_step()
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, y), model.head(model.encoder(x)))


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method 'sgdorp'"):
        build_method("sgdorp", *small_pair())


def test_random_mask_drops_exactly_k_random_entries():
    torch.manual_seed(0)
    mask = random_mask(torch.zeros(6, 8, 5, 5), rho=0.03)  # n = 200 -> k = 6
    assert (mask == 0).flatten(1).sum(1).tolist() == [6] * 6
    assert not torch.equal(mask[0], mask[1]), "positions differ between samples"


def test_random_control_matches_sgdrop_count():
    model = RandomDrop(*small_pair(), rho=0.01).train()
    z = torch.ones(2, 128, 4, 4)
    dropped = (model.regularize(z, None, None) == 0).flatten(1).sum(1)
    assert dropped.tolist() == [20, 20]  # floor(0.01 * 2048)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_rate_is_range_checked(p):
    with pytest.raises(ValueError, match="p must be in"):
        build_method("dropout", *small_pair(), p=p)


def test_labels():
    assert method_label("dropout", {"p": 0.5}) == "dropout p=0.5"
    assert method_label("sgdrop", {"rho": 0.01, "attribution": "ema"}) == "sgdrop"
    assert method_label("sgdrop", {"rho": 0.05, "attribution": "online"}) == "sgdrop (online) rho=0.05"
    assert method_label("sgdrop", {"ema_decay": 0.99, "ema_warmup": True}) == "sgdrop"
    assert method_label("sgdrop", {"ema_decay": 0.0, "ema_warmup": False}) == "sgdrop ema=0 no-warmup"
    assert method_label("sgdrop", {"attribution": "online", "ema_decay": 0.9}) == "sgdrop (online)"


@pytest.mark.parametrize("arch,expected", [("vgg11", [512, 7, 7]), ("vgg16", [512, 7, 7]),
                                           ("resnet18", [512, 7, 7]), ("resnet50", [2048, 7, 7]),
                                           ("convnext_tiny", [768, 7, 7])])
def test_encoder_output_at_224(arch, expected):
    encoder, head = models.build(arch, num_classes=10)
    assert models.feature_shape(encoder, 224) == expected
    with torch.no_grad():
        assert head.eval()(torch.zeros(1, *expected)).shape == (1, 10)


@pytest.mark.parametrize("arch,width,expected", [("vgg11", 0.25, [128, 4, 4]), ("vgg16", 0.25, [128, 4, 4]),
                                                 ("resnet18", 1.0, [512, 4, 4]), ("resnet50", 1.0, [2048, 4, 4]),
                                                 ("convnext_tiny", 1.0, [768, 4, 4])])
def test_encoder_output_at_small_cpu_size(arch, width, expected):
    encoder, head = models.build(arch, num_classes=10, width=width, small_input=True)
    assert models.feature_shape(encoder, 64) == expected


def test_head_has_no_dropout_unless_configured():
    _, head = models.build("vgg11", 10, width=0.25)
    assert all(m.p == 0 for m in head.modules() if isinstance(m, nn.Dropout))
    _, head = models.build("vgg11", 10, width=0.25, head_dropout=0.5)
    assert any(m.p == 0.5 for m in head.modules() if isinstance(m, nn.Dropout))


def test_model_errors_are_clear():
    with pytest.raises(ValueError, match="unknown architecture 'vgg12'"):
        models.build("vgg12", 10)
    with pytest.raises(ValueError, match="VGG only"):
        models.build("resnet18", 10, width=0.5)


def test_pretrained_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.pretrained=false"):
        models.build("resnet18", 10, pretrained=True)


def test_dropblock_fits_small_maps():
    model = build_method("dropblock", *small_pair(), p=0.3, block_size=5).train()
    for size in (1, 2, 4):
        z = torch.ones(2, 8, size, size)
        assert model.regularize(z, None, None).shape == z.shape


def test_vgg_head_pool_is_skipped_only_at_its_own_size():
    pool = models.PoolTo((4, 4))
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    assert pool(z) is z  # the identity: no copy and no backward node
    torch.testing.assert_close(pool(torch.ones(2, 8, 8, 8)), torch.ones(2, 8, 4, 4))
    _, head = models.build("vgg11", 10, 0.125, small_input=True)
    assert isinstance(head[0], models.PoolTo) and head[0].output_size == (4, 4)
