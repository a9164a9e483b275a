"""Data sets as in-memory uint8 tensors, their deterministic low-data subsets, and batch augmentation.

``build_datasets(cfg["dataset"])`` returns three splits:

- test: the official validation split of the data set, whole and untouched;
- val: ``val_per_class`` images per class drawn from the official training split (model selection);
- train: ``per_class`` images per class (or a ``fraction``, or all) drawn from what remains.

Both draws depend on ``data_seed`` only, so every method and training seed sees the same images.
Images stay uint8 until a batch is on the device, where ``augment`` and ``normalize`` work on the
whole batch at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from sgdrop.imagefolder import DataError, load_split

__all__ = ["DataError", "ImageTensors", "ImageSplits", "resolve_data_root", "build_datasets", "draw_subsets",
           "synthetic_images", "normalize", "augment"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
CROP_SCALE = (0.35, 1.0)  # share of the image area kept by the random-resized crop
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class ImageTensors:
    """Images of one split with their labels and their index in the source split (for auditing).

    For image folders the source split is the sorted file listing, less any skipped unreadable file.
    """

    images: torch.Tensor  # uint8, N x 3 x S x S
    labels: torch.Tensor  # int64, N
    indices: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: torch.Tensor) -> ImageTensors:
        """The images at these positions (positions in this object, not source indices)."""
        return ImageTensors(self.images[indices], self.labels[indices], self.indices[indices])


@dataclass
class ImageSplits:
    train: ImageTensors
    val: ImageTensors
    test: ImageTensors
    classes: list[str]
    mean: tuple
    std: tuple
    info: dict  # what was resolved (folders, counts, cache files, ...); JSON-serialisable


def resolve_data_root(root: str | None) -> Path:
    """``root``, else ``$SGDROP_DATA_ROOT``, else ``./data``."""
    return Path(root or os.environ.get("SGDROP_DATA_ROOT") or "data").expanduser()


def build_datasets(cfg: dict) -> ImageSplits:
    """Load the data set named in ``cfg`` (the ``dataset`` section of the run config) and draw its subsets."""
    loaders = {"imagenette": _imagenette, "imagenet": _imagenet, "folder": _folder, "cifar10": _cifar10,
               "synthetic": _synthetic}
    if cfg["name"] not in loaders:
        raise DataError(f"unknown dataset.name {cfg['name']!r}: choose one of {', '.join(loaders)}")
    pool, test, classes, info = loaders[cfg["name"]](cfg, int(cfg["image_size"]))
    val_idx, train_idx = draw_subsets(pool.labels, classes, cfg)
    train, val = pool.select(train_idx), pool.select(val_idx)
    info |= {"dataset": cfg["name"], "image_size": int(cfg["image_size"]), "data_seed": int(cfg["data_seed"]),
             "per_class": cfg["per_class"], "fraction": cfg["fraction"], "val_per_class": cfg["val_per_class"],
             "num_classes": len(classes), "pool_images": len(pool),
             "images": {"train": len(train), "val": len(val), "test": len(test)}}
    synthetic = cfg["name"] == "synthetic"
    mean, std = ((0.5,) * 3, (0.5,) * 3) if synthetic else (IMAGENET_MEAN, IMAGENET_STD)
    return ImageSplits(train, val, test, classes, mean, std, info)


def draw_subsets(labels: torch.Tensor, classes: list[str], cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of the validation and training subsets of a training pool with these ``labels``.

    Each class is shuffled once by a generator seeded with ``data_seed`` alone: its first
    ``val_per_class`` images are for validation, the next ones for training. The subsets are thus
    disjoint, stratified, and nested as ``per_class`` grows.
    """
    per_class, fraction, n_val = cfg["per_class"], cfg["fraction"], int(cfg["val_per_class"])
    if per_class is not None and fraction is not None:
        raise DataError("dataset.per_class and dataset.fraction are both set: set one of them to null")
    if fraction is not None and not 0 < fraction <= 1:
        raise DataError(f"dataset.fraction={fraction} is outside (0, 1]: pick a share of the training pool")
    generator = torch.Generator().manual_seed(int(cfg["data_seed"]))
    val, train = [], []
    for label, name in enumerate(classes):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        rest = len(members) - n_val
        if per_class is not None:
            n_train = int(per_class)
        else:
            n_train = rest if fraction is None else max(1, round(fraction * rest))
        if n_train < 1 or n_val + n_train > len(members):
            raise DataError(f"class {name!r} has {len(members)} training images but needs {n_val} (val_per_class)"
                            f" + {max(n_train, 1)} (training): lower dataset.per_class or dataset.val_per_class")
        val.append(members[:n_val])
        train.append(members[n_val:n_val + n_train])
    return torch.cat(val).sort().values, torch.cat(train).sort().values


def _whole(images: torch.Tensor, labels: torch.Tensor) -> ImageTensors:
    return ImageTensors(images, labels, torch.arange(len(labels)))


def _image_folder(cfg: dict, size: int, data_dir: Path) -> tuple:
    """Training pool and test split of ``data_dir/{train,val}``, decoded or loaded from the cache."""
    cache_dir = Path(cfg["cache_dir"] or "cache")
    train, test = (load_split(data_dir / split, cfg["name"], size, cache_dir, cfg["skip_bad_images"])
                   for split in ("train", "val"))
    if train.classes != test.classes:
        raise DataError(f"the class folders of {data_dir}/train and {data_dir}/val differ: make them the same")
    info = {"data_dir": str(data_dir.resolve()),
            "cache_files": [str(split.cache_file.resolve()) for split in (train, test)],
            "skipped_images": train.skipped + test.skipped}
    return _whole(train.images, train.labels), _whole(test.images, test.labels), train.classes, info


def _has_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "val").is_dir()


def _imagenette(cfg: dict, size: int) -> tuple:
    root = resolve_data_root(cfg["root"])
    found = [d for d in [*sorted(root.glob("imagenette2*")), root] if _has_splits(d)]
    if not found and cfg["download"]:
        try:  # torchvision verifies the archive's checksum; one archive holds both splits
            torchvision.datasets.Imagenette(root, split="train", size="full", download=True)
        except (OSError, RuntimeError) as err:  # network errors are OSErrors
            raise DataError(f"downloading Imagenette into {root} failed ({err}): check the network, or "
                            f"extract {IMAGENETTE_URL} there yourself") from err
        found = [root / "imagenette2"]
    if not found:
        raise DataError(f"no Imagenette in {root} (looked for {root}/imagenette2*/train and val): set dataset.root "
                        f"or SGDROP_DATA_ROOT to a folder containing imagenette2*/ (from {IMAGENETTE_URL}), "
                        "or pass --set dataset.download=true")
    return _image_folder(cfg, size, found[0])


def _imagenet(cfg: dict, size: int) -> tuple:
    data_dir = resolve_data_root(cfg["root"]) / "imagenet"
    if not _has_splits(data_dir):
        raise DataError(f"no ImageNet in {data_dir}/train and val (it cannot be downloaded automatically): put "
                        "ILSVRC-2012 there in ImageFolder layout (val/ sorted into class folders), and set "
                        "dataset.root or SGDROP_DATA_ROOT to the folder above imagenet/")
    return _image_folder(cfg, size, data_dir)


def _folder(cfg: dict, size: int) -> tuple:
    data_dir = resolve_data_root(cfg["root"])
    if not _has_splits(data_dir):
        raise DataError(f"no {data_dir}/train and {data_dir}/val folders: set dataset.root or SGDROP_DATA_ROOT "
                        "to a folder holding train/CLASS/IMAGE and val/CLASS/IMAGE")
    return _image_folder(cfg, size, data_dir)


def _cifar10(cfg: dict, size: int) -> tuple:
    root = resolve_data_root(cfg["root"])
    try:
        splits = [torchvision.datasets.CIFAR10(root, train=train, download=cfg["download"]) for train in (True, False)]
    except (OSError, RuntimeError) as err:
        raise DataError(f"no CIFAR-10 in {root} ({err}): set dataset.root or SGDROP_DATA_ROOT to a folder "
                        "containing cifar-10-batches-py/, or pass --set dataset.download=true") from err

    def to_tensors(split: torchvision.datasets.CIFAR10) -> ImageTensors:
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2)  # N x 32 x 32 x 3 -> N x 3 x 32 x 32
        if size != images.shape[-1]:
            images = F.resize(images, [size, size], antialias=True)
        return _whole(images.contiguous(), torch.tensor(split.targets, dtype=torch.int64))

    return to_tensors(splits[0]), to_tensors(splits[1]), splits[0].classes, {"data_dir": str(root.resolve())}


def _synthetic(cfg: dict, size: int) -> tuple:
    n_classes = int(cfg["num_classes"])
    # One generator per split, both from data_seed, so that the test images do not depend on the pool size.
    seeds = torch.randint(2**62, (2,), generator=torch.Generator().manual_seed(int(cfg["data_seed"])))
    pool, test = (_synthetic_split(n_classes, int(cfg[key]), size, int(seed))
                  for key, seed in zip(("synthetic_pool_per_class", "synthetic_test_per_class"), seeds))
    classes = [f"tilt{round(90 * (k // 2) / _tilt_steps(n_classes))}_{'fine' if k % 2 else 'coarse'}"
               for k in range(n_classes)]
    return pool, test, classes, {"data_dir": None}


def _synthetic_split(n_classes: int, per_class: int, size: int, seed: int) -> ImageTensors:
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return _whole(synthetic_images(labels, n_classes, size, torch.Generator().manual_seed(seed)), labels)


def synthetic_images(labels: torch.Tensor, num_classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Procedural uint8 images N x 3 x size x size: a grating in a Gaussian blob on a plain background.

    Only the grating tells the class: its tilt from vertical (jittered) and whether its stripes are
    coarse or fine. The tilt's sign is random, so that a horizontal flip (``augment``) keeps the class;
    position, phase, colours and pixel noise are random too, so that no single pixel or colour gives
    the class away while a small CNN learns it within a few epochs.
    """
    n = len(labels)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, 1, 1, generator=generator)

    # Tilt in units of 90 degrees: class pairs (coarse, fine) share one of ceil(num_classes / 2) levels.
    tilt = ((labels // 2).view(n, 1, 1) + uniform(-0.15, 0.15)) / _tilt_steps(num_classes)
    angle = math.pi / 2 * tilt * (torch.randint(0, 2, (n, 1, 1), generator=generator) * 2 - 1)
    fine = (labels % 2).view(n, 1, 1)
    cycles = torch.where(fine == 1, uniform(3.0, 4.0), uniform(1.5, 2.0))  # per half image width
    phase = uniform(0, 2 * math.pi)
    centre_x, centre_y, radius = uniform(-0.4, 0.4), uniform(-0.4, 0.4), uniform(0.35, 0.6)
    axis = torch.linspace(-1, 1, size)
    y, x = axis.view(1, size, 1), axis.view(1, 1, size)
    grating = torch.cos(math.pi * cycles * (x * angle.cos() + y * angle.sin()) + phase)
    blob = torch.exp(-((x - centre_x) ** 2 + (y - centre_y) ** 2) / (2 * radius**2))
    tint = uniform(0.1, 0.4, 3)  # per-channel contrast of the grating: mostly luminance, some colour
    images = uniform(0.25, 0.75, 3) + tint * (blob * grating).unsqueeze(1)
    images = images + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _tilt_steps(num_classes: int) -> int:
    """Number of steps between the synthetic classes' smallest (0) and largest (90 degrees) tilts."""
    return max(math.ceil(num_classes / 2) - 1, 1)


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Float32 ``(images / 255 - mean) / std`` of a uint8 or float [0, 255] batch N x 3 x H x W."""
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random-resized crop back to the input size, then random horizontal flip, of a whole batch.

    Each image of the N x C x H x W batch (uint8 or float, any device) gets one box of area share in
    ``CROP_SCALE`` and aspect ratio in ``CROP_RATIO`` (a side that would not fit is clipped to the image),
    and one ``roi_align`` call crops and bilinearly resizes all of them. Returns float32 in [0, 255] on
    the input's device. The random numbers come from ``generator`` on its own device (default: torch's
    global generator of the input's device), so a seeded generator gives the same augmentation.
    """
    n, _, height, width = images.shape
    device = images.device if generator is None else generator.device
    u = torch.rand(n, 5, generator=generator, device=device).to(images.device)  # area, ratio, left, top, flip
    area = (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[:, 0]) * height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_low + (log_high - log_low) * u[:, 1])
    crop_w, crop_h = (area * ratio).sqrt().clamp(max=width), (area / ratio).sqrt().clamp(max=height)
    left, top = (width - crop_w) * u[:, 2], (height - crop_h) * u[:, 3]
    image_index = torch.arange(n, dtype=torch.float32, device=images.device)
    boxes = torch.stack([image_index, left, top, left + crop_w, top + crop_h], dim=1)
    # aligned=True puts pixel centres at half-integers, so the whole-image box is the identity;
    # crops are never larger than the output, hence one bilinear sample per output pixel suffices.
    out = roi_align(images.float(), boxes, (height, width), sampling_ratio=1, aligned=True)
    flip = (u[:, 4] < 0.5).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)  # a selection, not a boolean index: no host-device sync
