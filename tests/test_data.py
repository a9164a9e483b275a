"""Tests of sgdrop.data: subsets, image folders and their cache, errors, synthetic data, augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from sgdrop import data, imagefolder
from sgdrop.data import DataError

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((REPO / "sgdrop" / "default.yaml").read_text())["dataset"]
IMAGENETTE_ROOT = Path(os.environ.get("SGDROP_DATA_ROOT") or REPO.parent / "shared" / "data")
HAS_IMAGENETTE = (IMAGENETTE_ROOT / "imagenette2-224" / "train").is_dir()


def config(**overrides) -> dict:
    """The dataset section of default.yaml with ``overrides``."""
    return DEFAULTS | overrides


def split_by_class(split: data.ImageTensors, n_classes: int) -> list[int]:
    return torch.bincount(split.labels, minlength=n_classes).tolist()


def check_subsets(splits: data.ImageSplits, per_class: int, val_per_class: int, n_test: int) -> None:
    """Exact per-class counts, disjoint train/val inside the pool, and the whole test split in order."""
    n_classes = len(splits.classes)
    assert split_by_class(splits.train, n_classes) == [per_class] * n_classes
    assert split_by_class(splits.val, n_classes) == [val_per_class] * n_classes
    assert not set(splits.train.indices.tolist()) & set(splits.val.indices.tolist())
    assert torch.equal(splits.test.indices, torch.arange(n_test))
    assert splits.train.images.dtype == torch.uint8 and splits.train.indices.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------
# Subsets, on synthetic data
# ---------------------------------------------------------------------------------------------------


def synthetic(**overrides) -> data.ImageSplits:
    base = dict(name="synthetic", image_size=16, num_classes=4, synthetic_pool_per_class=30,
                synthetic_test_per_class=5, per_class=10, val_per_class=5)
    return data.build_datasets(config(**base | overrides))


def test_subsets_are_deterministic_stratified_and_disjoint():
    first, again, other = synthetic(), synthetic(), synthetic(data_seed=1)
    check_subsets(first, per_class=10, val_per_class=5, n_test=20)
    assert torch.equal(first.train.indices, again.train.indices)
    assert torch.equal(first.val.indices, again.val.indices)
    assert torch.equal(first.train.images, again.train.images)
    assert not torch.equal(first.train.indices, other.train.indices)
    # Indices point into the pool: the images and labels are the pool's.
    assert torch.equal(first.train.labels, first.train.indices // 30)
    assert first.mean == first.std == (0.5, 0.5, 0.5)


def test_subset_sizes_fraction_all_and_nesting():
    assert split_by_class(synthetic(per_class=None, fraction=0.2).train, 4) == [5] * 4  # 20% of 25
    assert split_by_class(synthetic(per_class=None).train, 4) == [25] * 4
    small, large = synthetic(per_class=3), synthetic(per_class=10)
    assert set(small.train.indices.tolist()) <= set(large.train.indices.tolist())
    assert torch.equal(small.val.indices, large.val.indices)


def test_test_split_does_not_depend_on_the_pool():
    assert torch.equal(synthetic().test.images, synthetic(synthetic_pool_per_class=40).test.images)


@pytest.mark.parametrize("overrides, message", [
    (dict(per_class=26), "class 'tilt0_coarse' has 30 training images but needs 5"),
    (dict(per_class=10, fraction=0.5), "set one of them to null"),
    (dict(per_class=None, fraction=1.5), "outside (0, 1]"),
    (dict(name="nope"), "unknown dataset.name 'nope'"),
])
def test_bad_subset_settings_are_data_errors(overrides, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("]", r"\]")):
        synthetic(**overrides)


# ---------------------------------------------------------------------------------------------------
# Synthetic images
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """One torch thread: tiny convolutions gain nothing from more, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_synthetic_data_is_learnable_by_a_small_cnn():
    torch.manual_seed(0)
    splits = synthetic(image_size=32, num_classes=10, synthetic_pool_per_class=100, synthetic_test_per_class=30,
                       per_class=None, val_per_class=0)
    # No pixel gives the class away: class mean images differ no more than those of shuffled labels.
    def spread_of_class_means(labels: torch.Tensor) -> torch.Tensor:
        means = torch.stack([splits.train.images[labels == k].float().mean(0) for k in range(10)])
        return means.std(0).mean()

    shuffled = [spread_of_class_means(splits.train.labels[torch.randperm(len(splits.train))]) for _ in range(5)]
    assert spread_of_class_means(splits.train.labels) < 1.2 * torch.stack(shuffled).mean()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        for batch in torch.randperm(len(splits.train), generator=generator).split(50):
            x = data.normalize(data.augment(splits.train.images[batch], generator), splits.mean, splits.std)
            loss = torch.nn.functional.cross_entropy(net(x), splits.train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predictions = net(data.normalize(splits.test.images, splits.mean, splits.std)).argmax(1)
    assert (predictions == splits.test.labels).float().mean() > 0.3  # chance is 0.1


# ---------------------------------------------------------------------------------------------------
# Image folders, cache and errors, on small images made here
# ---------------------------------------------------------------------------------------------------


def save_image(path: Path, seed: int, mode: str = "RGB") -> None:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (30, 40, 3), dtype=torch.uint8, generator=generator).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{train,val}/{cat,dog,fox}/*.jpg: 6 training and 2 test images per class, one grayscale."""
    root = tmp_path / "data"
    for split, count in (("train", 6), ("val", 2)):
        for c, name in enumerate(("cat", "dog", "fox")):
            for i in range(count):
                save_image(root / split / name / f"{i}.jpg", seed=100 * c + i + (50 if split == "val" else 0))
    save_image(root / "train" / "dog" / "gray.jpg", seed=7, mode="L")
    return root


def folder(tree: Path, **overrides) -> data.ImageSplits:
    base = dict(name="folder", root=str(tree), image_size=16, per_class=3, val_per_class=2,
                cache_dir=str(tree.parent / "cache"))
    return data.build_datasets(config(**base | overrides))


def test_image_folder_splits_cache_and_pixels(tree: Path):
    splits = folder(tree)
    assert splits.classes == ["cat", "dog", "fox"]
    assert splits.mean == data.IMAGENET_MEAN
    check_subsets(splits, per_class=3, val_per_class=2, n_test=6)
    assert splits.info["pool_images"] == 19 and splits.info["images"] == {"train": 9, "val": 6, "test": 6}
    # The test split is the val folder, whole, in sorted order; the cache lives in cache_dir only.
    val_files = sorted((tree / "val").rglob("*.jpg"))
    expected = torch.stack([imagefolder.decode_image(path, 16) for path in val_files])
    assert torch.equal(splits.test.images, expected)
    assert all(Path(f).parent == tree.parent / "cache" for f in splits.info["cache_files"])
    assert not list(tree.rglob("*.pt"))


def test_grayscale_image_becomes_three_channels(tree: Path):
    image = imagefolder.decode_image(tree / "train" / "dog" / "gray.jpg", 16)
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_second_build_loads_from_cache(tree: Path, monkeypatch):
    first = folder(tree)

    def no_decoding(path, size):
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    second = folder(tree)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, split).images, getattr(second, split).images)
        assert torch.equal(getattr(first, split).indices, getattr(second, split).indices)


def test_corrupt_cache_is_rebuilt(tree: Path):
    first = folder(tree)
    cache_file = Path(first.info["cache_files"][0])
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        second = folder(tree)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.load(cache_file, weights_only=True)["images"].shape == (19, 3, 16, 16)


def test_changed_files_change_the_cache_key(tree: Path):
    first = folder(tree)
    save_image(tree / "train" / "cat" / "new.jpg", seed=999)
    assert folder(tree).info["cache_files"][0] != first.info["cache_files"][0]


def test_empty_class_folder_is_named(tree: Path):
    (tree / "train" / "emu").mkdir()
    with pytest.raises(DataError, match=r"class folder .*emu holds no image"):
        folder(tree)


@pytest.mark.parametrize("content", ["truncated", "not_an_image"])
def test_bad_image_fails_or_is_skipped_with_a_warning(tree: Path, content: str):
    bad = tree / "train" / "cat" / "3.jpg"
    data_bytes = bad.read_bytes()
    bad.write_bytes(data_bytes[: len(data_bytes) // 2] if content == "truncated" else b"hello")
    with pytest.raises(DataError, match=r"cannot read image .*cat/3\.jpg.*skip_bad_images=true") as error:
        folder(tree)
    assert "\n" not in str(error.value)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*cat/3\.jpg"):
        splits = folder(tree, skip_bad_images=True)
    assert splits.info["pool_images"] == 18 and len(splits.info["skipped_images"]) == 1
    with pytest.raises(DataError, match=r"cat/3\.jpg"):  # also when the cache already holds the split
        folder(tree)


def test_missing_data_messages(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SGDROP_DATA_ROOT", raising=False)
    empty = str(tmp_path)
    with pytest.raises(DataError, match="SGDROP_DATA_ROOT.*imagenette2.tgz.*dataset.download=true"):
        data.build_datasets(config(name="imagenette", root=empty))
    with pytest.raises(DataError, match="cannot be downloaded automatically"):
        data.build_datasets(config(name="imagenet", root=empty))
    with pytest.raises(DataError, match="no CIFAR-10 in"):
        data.build_datasets(config(name="cifar10", root=empty))
    with pytest.raises(DataError, match="train/CLASS/IMAGE"):
        data.build_datasets(config(name="folder", root=empty))


def test_resolve_data_root(monkeypatch):
    monkeypatch.setenv("SGDROP_DATA_ROOT", "/from/env")
    assert data.resolve_data_root("/given") == Path("/given")
    assert data.resolve_data_root(None) == Path("/from/env")
    monkeypatch.delenv("SGDROP_DATA_ROOT")
    assert data.resolve_data_root(None) == Path("data")


def test_imagenette_accepts_root_holding_train_and_val(tree: Path):
    splits = data.build_datasets(config(name="imagenette", root=str(tree), image_size=16, per_class=3,
                                        val_per_class=2, cache_dir=str(tree.parent / "cache")))
    assert splits.info["data_dir"] == str(tree.resolve())


# ---------------------------------------------------------------------------------------------------
# Batch helpers
# ---------------------------------------------------------------------------------------------------


def test_normalize():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = data.normalize(images, data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert out.dtype == torch.float32 and out.shape == images.shape
    expected = [(1 - m) / s for m, s in zip(data.IMAGENET_MEAN, data.IMAGENET_STD)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))
    assert torch.equal(out, data.normalize(images.float(), data.IMAGENET_MEAN, data.IMAGENET_STD))


def test_augment_shape_determinism_and_flips():
    # A horizontal ramp: a crop keeps it increasing from left to right, a flip makes it decreasing.
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8)
    images = ramp.expand(64, 3, 32, 32).contiguous()
    out = data.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, data.augment(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, data.augment(images, torch.Generator().manual_seed(1)))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert 10 < flipped.sum() < 54
    # Crops zoom in: the ramp's range shrinks for most images.
    assert ((out[:, 0, 0, :].amax(1) - out[:, 0, 0, :].amin(1)) < 250).float().mean() > 0.5
    assert data.normalize(out, (0.5,) * 3, (0.5,) * 3).shape == images.shape
    torch.manual_seed(3)  # without a generator: torch's global one
    first = data.augment(images)
    torch.manual_seed(3)
    assert torch.equal(first, data.augment(images))


# ---------------------------------------------------------------------------------------------------
# The real Imagenette (skipped where it is absent)
# ---------------------------------------------------------------------------------------------------

needs_imagenette = pytest.mark.skipif(
    not HAS_IMAGENETTE, reason=f"no Imagenette at {IMAGENETTE_ROOT}/imagenette2-224 (set SGDROP_DATA_ROOT to its parent)")


@pytest.fixture(scope="module")
def imagenette_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imagenette_cache")


def imagenette(cache: Path, **overrides) -> data.ImageSplits:
    base = dict(name="imagenette", root=str(IMAGENETTE_ROOT), image_size=32, per_class=20, val_per_class=10,
                cache_dir=str(cache))
    return data.build_datasets(config(**base | overrides))


@pytest.mark.imagenette
@needs_imagenette
def test_imagenette_subsets(imagenette_cache: Path):
    first = imagenette(imagenette_cache)
    check_subsets(first, per_class=20, val_per_class=10, n_test=3925)
    assert first.info["pool_images"] == 9469 and len(first.classes) == 10
    assert first.train.images.shape[1:] == (3, 32, 32)
    again, other = imagenette(imagenette_cache), imagenette(imagenette_cache, data_seed=1)
    assert torch.equal(first.train.indices, again.train.indices)
    assert torch.equal(first.val.indices, again.val.indices)
    assert not torch.equal(first.train.indices, other.train.indices)
    assert torch.equal(first.test.images, other.test.images)
