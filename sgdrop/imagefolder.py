"""Listing, decoding and caching of one image-folder split (``SPLIT/CLASS/IMAGE`` files).

A split is decoded once, at one size, into a single uint8 tensor that is cached with ``torch.save``;
training subsets are index selections into it, so every method and seed sees the very same pixels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from .io import torch_save

# Part of the cache key: bump it when decode_image changes, so that no cache keeps the old pixels.
DECODER_VERSION = 1
# What PIL raises for a missing, truncated or malformed image file.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(Exception):
    """A data problem the user can fix; the message is one line naming the problem and the fix."""


@dataclass
class DecodedSplit:
    """A whole split decoded at one size."""

    images: torch.Tensor  # uint8, N x 3 x S x S, files in listing order minus the skipped ones
    labels: torch.Tensor  # int64, N
    classes: list[str]  # class folder names; label i is classes[i]
    cache_file: Path
    skipped: list[str]  # "relative/path (reason)" of each unreadable image left out


def list_images(split_dir: Path) -> tuple[list[str], list[Path], list[int]]:
    """Sorted class folders of ``split_dir`` and the sorted image files of each, with their labels."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {split_dir}: expected the layout {split_dir}/CLASS/IMAGE")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not found:
            raise DataError(f"class folder {split_dir / name} holds no image ({' '.join(IMG_EXTENSIONS)}): "
                            "add its images or delete the folder")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def decode_image(path: Path, size: int) -> torch.Tensor:
    """RGB uint8 3 x size x size: shorter side resized to ``size`` (antialiased), then centre-cropped."""
    with Image.open(path) as image:
        # Like PIL's thumbnail(): let libjpeg decode at a reduced scale that stays >= 2x the target (fast
        # for large JPEGs); the antialiased resize below then makes the result match a full decode.
        image.draft("RGB", (2 * size, 2 * size))
        image = image.convert("RGB")  # also loads the pixels, so truncation is caught here
    image = F.center_crop(F.resize(image, size, antialias=True), size)
    return F.pil_to_tensor(image)


def load_split(split_dir: Path, name: str, size: int, cache_dir: Path, skip_bad: bool) -> DecodedSplit:
    """Decode every image of ``split_dir`` at ``size``, or load them from the cache."""
    classes, files, labels = list_images(split_dir)
    cache_file = cache_dir / f"{name}-{split_dir.name}-{size}px-{_listing_hash(split_dir, files, size)}.pt"
    payload = _read_cache(cache_file, len(files), size)
    if payload is None:
        payload = _decode_all(split_dir, files, labels, size, desc=f"decoding {name} {split_dir.name}")
        _write_cache(cache_file, payload)
    for problem in payload["skipped"]:
        if not skip_bad:
            raise DataError(f"cannot read image {split_dir / problem}: replace or delete it, or set "
                            f"dataset.skip_bad_images=true to skip it ({len(payload['skipped'])} unreadable)")
        warnings.warn(f"skipping unreadable image {split_dir / problem}", stacklevel=2)
    return DecodedSplit(payload["images"], payload["labels"], classes, cache_file, payload["skipped"])


def _listing_hash(split_dir: Path, files: list[Path], size: int) -> str:
    """Short hash of the relative paths and byte sizes of ``files``, the size and the decoder version."""
    digest = hashlib.sha256(f"decoder {DECODER_VERSION}, size {size}".encode())
    for path in files:
        digest.update(f"\n{path.relative_to(split_dir).as_posix()} {path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def _decode_all(split_dir: Path, files: list[Path], labels: list[int], size: int, desc: str) -> dict:
    """Decode ``files`` on a thread pool (PIL releases the GIL while decoding and resizing).

    An unreadable image is recorded, not raised, so that the caller decides between failing and
    skipping, and so that the work on the other images is cached either way.
    """
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)  # filled in place: no second copy
    readable = torch.ones(len(files), dtype=torch.bool)
    skipped = []
    pool = ThreadPoolExecutor(os.cpu_count())
    try:
        results = tqdm(pool.map(lambda path: _try_decode(path, size), files), desc, len(files), unit="img")
        for i, ((image, error), path) in enumerate(zip(results, files)):
            if error is None:
                images[i] = image
            else:
                readable[i] = False
                skipped.append(f"{path.relative_to(split_dir).as_posix()} ({error})")
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not decode what is still queued
    labels = torch.tensor(labels, dtype=torch.int64)
    if skipped:
        images, labels = images[readable], labels[readable]
    return {"images": images, "labels": labels, "skipped": skipped}


def _try_decode(path: Path, size: int) -> tuple[torch.Tensor | None, str | None]:
    """``(image, None)``, or ``(None, reason)`` when PIL cannot read the file."""
    try:
        return decode_image(path, size), None
    except BAD_IMAGE_ERRORS as err:
        return None, f"{type(err).__name__}: {err}".splitlines()[0]


def _read_cache(cache_file: Path, n_files: int, size: int) -> dict | None:
    """The cached payload, or None when absent or damaged (it is then rebuilt)."""
    if not cache_file.exists():
        return None
    try:
        payload = torch.load(cache_file, weights_only=True)
        n_kept = n_files - len(payload["skipped"])
        if payload["images"].shape != (n_kept, 3, size, size) or payload["labels"].shape != (n_kept,):
            raise ValueError("unexpected tensor shapes")
        return payload
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the fix is to rebuild it
        warnings.warn(f"cache file {cache_file} is unreadable ({type(err).__name__}); rebuilding it", stacklevel=3)
        return None


def _write_cache(cache_file: Path, payload: dict) -> None:
    """Save ``payload`` atomically: a run killed mid-write leaves no half-written cache behind."""
    try:
        torch_save(payload, cache_file)
    except OSError as err:
        raise DataError(f"cannot write the image cache in {cache_file.parent} ({err}): "
                        "set dataset.cache_dir to a writable folder") from err
