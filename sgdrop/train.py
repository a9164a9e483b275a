"""One training run: `python -m sgdrop.train --config FILE [--set KEY=VALUE ...] --out DIR`.

Reads top to bottom: build data, build model and method, loop over epochs (train, evaluate,
checkpoint), evaluate the final metrics, write `DIR/result.json`. Running the same command again
resumes from `DIR/checkpoint.pt`; a run whose `result.json` exists is complete and not retrained.
Under `torchrun --nproc_per_node N -m sgdrop.train ...` the same code trains with DDP.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import distributed, metrics, models
from .config import ConfigError, config_diff, load_config, to_yaml
from .data import DataError, ImageSplits, ImageTensors, augment, build_datasets, normalize
from .io import atomic_path, environment, remove_stale_temporaries, torch_save, write_json, write_text
from .methods import build_method, method_label

SCHEMA_VERSION = 1


class RunError(RuntimeError):
    """A run that cannot go on (diverged loss, checkpoint of another config): one-line message."""


# --------------------------------------------------------------------------------------------- setup

def select_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("train.device asks for CUDA but no GPU is visible; use --set train.device=cpu")
    return torch.device(name)


def seed_everything(train_cfg: dict, rank: int) -> None:
    torch.manual_seed(train_cfg["seed"] * 1000 + rank)
    if train_cfg["num_threads"]:
        torch.set_num_threads(train_cfg["num_threads"])
    if train_cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_model(cfg: dict, num_classes: int, device: torch.device) -> nn.Module:
    model_cfg = cfg["model"]
    try:
        encoder, head = models.build(model_cfg["arch"], num_classes, model_cfg["width"],
                                     batch_norm=model_cfg["batch_norm"], small_input=model_cfg["small_input"],
                                     head_dropout=model_cfg["head_dropout"], pretrained=model_cfg["pretrained"])
    except FileNotFoundError as error:
        raise RunError(str(error)) from None
    model = build_method(cfg["method"]["name"], encoder, head, **cfg["method"]).to(device)
    return speed_up(model, cfg["train"]["channels_last"], cfg["train"]["compile"])


def speed_up(model: nn.Module, channels_last: bool, compile: bool) -> nn.Module:
    """The engine's speed settings (also used by experiments/06_overhead.py, so it times the same model)."""
    if channels_last:
        # Faster on cuDNN and on the CPU alike (oneDNN: vanilla VGG11 step 134 -> 112 ms at 64 px,
        # experiments/06_overhead.py --channels-last); the weights' layout makes the convolutions run
        # channels-last whatever the input's layout.
        model = model.to(memory_format=torch.channels_last)
    if compile:
        # In place (nn.Module.compile), so state_dict keys, checkpoints and the EMA copy are unchanged.
        # Off by default: no gain on the 2-core CPU (experiments/06_overhead.py --compile); on GPUs
        # it has not been measured yet.
        model.encoder.compile()
        model.head.compile()
    return model


def build_optimizer(model: nn.Module, train_cfg: dict, steps_per_epoch: int):
    """SGD (Nesterov) or AdamW; per-step linear warm-up then cosine decay to zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(params, lr=train_cfg["lr"], momentum=train_cfg["momentum"],
                                    weight_decay=train_cfg["weight_decay"], nesterov=train_cfg["momentum"] > 0)
    else:
        optimizer = torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    warmup = train_cfg["warmup_epochs"] * steps_per_epoch
    total = max(1, train_cfg["epochs"] * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
    return optimizer, scheduler


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------- data

def eval_batches(split: ImageTensors, data: ImageSplits, batch_size: int, device: torch.device,
                 limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised (x, y) batches of `split`, or of a fixed subset of `limit` of its images.

    Splits are sorted by class, so the subset is evenly spaced over the split (hence balanced over
    classes), not its first `limit` images, and it is the same at every epoch and in every run."""
    n = len(split.labels)
    index = torch.arange(n) if limit is None or limit >= n else torch.linspace(0, n - 1, limit).round().long()
    for chunk in index.split(batch_size):
        x = split.images[chunk].to(device, non_blocking=True)
        y = split.labels[chunk].to(device, non_blocking=True)
        yield to_model_input(normalize(x, data.mean, data.std), device), y


def to_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def train_batches(data: ImageSplits, batch_size: int, epoch: int, cfg: dict,
                  dist: distributed.Info) -> list[torch.Tensor]:
    """This rank's index batches for `epoch`. The order depends only on (seed, epoch), so a resumed
    run sees exactly the batches an uninterrupted one would."""
    sampler = torch.utils.data.DistributedSampler(range(len(data.train.labels)), num_replicas=dist.world_size,
                                                  rank=dist.rank, shuffle=True, seed=cfg["train"]["seed"])
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler))
    batches = list(indices.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm cannot train on a single image
        batches.pop()
    return batches


# ------------------------------------------------------------------------------------------ training

def train_one_epoch(model, ddp_model, optimizer, scheduler, data, cfg, epoch, dist, device) -> dict[str, float]:
    """One pass over this rank's training batches; returns loss, running accuracy and step timing."""
    train_cfg = cfg["train"]
    per_rank_batch = train_cfg["batch_size"] // dist.world_size
    augment_rng = torch.Generator(device=device).manual_seed(train_cfg["seed"] * 100_003 + epoch * 7919 + dist.rank)
    use_amp = device.type == "cuda" and train_cfg["amp"]
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, data_time, window = 0, 0.0, []
    batches = train_batches(data, per_rank_batch, epoch, cfg, dist)
    bar = tqdm(batches, desc=f"epoch {epoch}/{train_cfg['epochs']}", leave=False, disable=not dist.is_main or None,
               unit="batch", dynamic_ncols=True)
    loop_start = time.perf_counter()
    for step, index in enumerate(bar, start=1):
        fetch_start = time.perf_counter()
        x, y = data.train.images[index], data.train.labels[index]
        if device.type == "cuda":  # page-locked, so the copy below overlaps the previous step's kernels
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if train_cfg["augment"]:
            x = augment(x, augment_rng)
        x = to_model_input(normalize(x, data.mean, data.std), device)
        data_time += time.perf_counter() - fetch_start
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = ddp_model(x, y)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=train_cfg["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        model.after_step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        window.append(loss.detach())
        if step % 10 == 0 or step == len(batches):  # sync with the device only every few steps
            check_finite(window, epoch, step)
            window = []
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / max(time.perf_counter() - loop_start, 1e-9):.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # Step time is the loop's wall time (after the device has finished) less the batch preparation, so
    # that asynchronous CUDA launches are not mistaken for finished steps.
    step_time = time.perf_counter() - loop_start - data_time
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)]))
    return {"train_loss": (totals[0] / totals[2]).item(), "train_acc_running": (totals[1] / totals[2]).item(),
            "steps": len(batches), "step_s": step_time, "data_s": data_time, "images": seen}


def check_finite(losses: list[torch.Tensor], epoch: int, last_step: int) -> None:
    """Stop the run, naming the epoch and step, as soon as the loss stops being finite."""
    finite = torch.isfinite(torch.stack(losses)).tolist()
    if not all(finite):
        step = last_step - len(finite) + 1 + finite.index(False)
        raise RunError(f"loss became NaN/inf at epoch {epoch}, step {step}; lower train.lr or check the data "
                       f"(no result written)")


# ---------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def epoch_metrics(model: nn.Module, data: ImageSplits, cfg: dict, device: torch.device) -> dict[str, float]:
    """Clean accuracies for the history (and the attribution ratio on a fixed test subset when asked)."""
    eval_cfg = cfg["eval"]
    bs, limit = eval_cfg["batch_size"], eval_cfg["history_subset"]
    row = {"train_acc": metrics.accuracy(model.encoder, model.head, eval_batches(data.train, data, bs, device, limit)),
           "val_acc": metrics.accuracy(model.encoder, model.head, eval_batches(data.val, data, bs, device))
           if len(data.val.labels) else None,
           "test_acc": metrics.accuracy(model.encoder, model.head, eval_batches(data.test, data, bs, device, limit))}
    if eval_cfg["attr_every_epoch"] and eval_cfg["attr_subset"] > 0:
        row["attr_area_ratio"] = metrics.attribution_area_ratio(
            model.encoder, model.head, eval_batches(data.test, data, bs, device, eval_cfg["attr_subset"]),
            threshold=eval_cfg["attr_threshold"])
    return row


def final_metrics(model: nn.Module, data: ImageSplits, cfg: dict, device: torch.device) -> dict[str, Any]:
    """Test accuracy, attribution area ratio and neuron coverage on the whole test split."""
    eval_cfg = cfg["eval"]
    bs = eval_cfg["batch_size"]
    result = metrics.evaluate_all(model.encoder, model.head, lambda: eval_batches(data.test, data, bs, device),
                                  attr_threshold=eval_cfg["attr_threshold"],
                                  coverage_thresholds=eval_cfg["coverage_thresholds"], progress=True)
    with torch.no_grad():
        result["train_acc"] = metrics.accuracy(model.encoder, model.head, eval_batches(data.train, data, bs, device))
        result["val_acc"] = metrics.accuracy(model.encoder, model.head, eval_batches(data.val, data, bs, device)) \
            if len(data.val.labels) else None
        x, _ = next(eval_batches(data.test, data, 1, device))
        result["feature_shape"] = list(model.encoder(x).shape[1:])
    return result


def example_indices(data: ImageSplits, count: int, data_seed: int) -> torch.Tensor:
    """The same test images for every run with this data configuration: one per class in turn."""
    order = torch.randperm(len(data.test.labels), generator=torch.Generator().manual_seed(data_seed))
    labels = data.test.labels[order]
    rank_in_class = torch.zeros_like(labels)
    for cls in labels.unique():
        rank_in_class[labels == cls] = torch.arange(int((labels == cls).sum()))
    # Sorting by (rank within class, class) takes the first image of each class, then the second, ...
    picked = order[(rank_in_class * len(data.classes) + labels).argsort()[:count]]
    return picked.sort().values


def save_examples(model: nn.Module, data: ImageSplits, cfg: dict, device: torch.device, out: Path) -> None:
    """Grad-CAM of a fixed set of test images, for the overlay figure (examples.npz)."""
    count = cfg["eval"]["examples"]
    if count == 0:
        return
    index = example_indices(data, count, cfg["dataset"]["data_seed"])
    images, labels = data.test.images[index], data.test.labels[index]
    x = to_model_input(normalize(images.to(device), data.mean, data.std), device)
    found = metrics.gradcam_examples(model.encoder, model.head, x, labels.to(device))
    with atomic_path(out / "examples.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images.numpy(), labels=labels.numpy(),
                                test_indices=data.test.indices[index].numpy(), **found)


# ------------------------------------------------------------------------------------------ the run

def load_checkpoint(path: Path, cfg: dict) -> dict | None:
    """The checkpoint in the output folder, refused when it was written by a different config."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    differences = config_diff(state["config"], cfg, ignore_prefixes=("run.", "train.device", "train.num_threads"))
    if differences:
        raise RunError(f"{path} was written by a different config ({'; '.join(differences)}); "
                       f"use another --out folder or delete the checkpoint")
    return state


def run(cfg: dict, out: Path) -> dict[str, Any]:
    """Train (or resume, or skip if complete) the run described by `cfg` in folder `out`."""
    out = Path(out)
    result_path, checkpoint_path = out / "result.json", out / "checkpoint.pt"
    if result_path.exists():
        print(f"[sgdrop] {result_path} exists: run complete, nothing to do", file=sys.stderr)
        return json.loads(result_path.read_text())
    dist = distributed.init()
    device = select_device(cfg["train"]["device"], dist.local_rank)
    train_cfg = cfg["train"]
    if train_cfg["batch_size"] % dist.world_size:
        raise RunError(f"train.batch_size={train_cfg['batch_size']} is not divisible by the {dist.world_size} processes")
    seed_everything(train_cfg, dist.rank)
    checkpoint = load_checkpoint(checkpoint_path, cfg)
    if dist.is_main:
        remove_stale_temporaries(out)
    wall_start = time.perf_counter()

    with distributed.main_first(dist):  # rank 0 fills the decoded-image cache, the others then read it
        data_start = time.perf_counter()
        data = build_datasets(cfg["dataset"])
        data_s = time.perf_counter() - data_start
    model = build_model(cfg, len(data.classes), device)
    ddp_model = distributed.wrap(model, dist, device)
    steps_per_epoch = len(train_batches(data, train_cfg["batch_size"] // dist.world_size, 0, cfg, dist))
    optimizer, scheduler = build_optimizer(model, train_cfg, steps_per_epoch)
    label = method_label(cfg["method"]["name"], cfg["method"])

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng(checkpoint["rng"], device)
        history, timing, start_epoch = checkpoint["history"], checkpoint["timing"], checkpoint["epoch"] + 1
        log(dist, f"resuming {out} at epoch {start_epoch}")
    else:
        history = [{"epoch": 0, "train_loss": None, "lr": 0.0, **epoch_metrics(model, data, cfg, device)}] \
            if dist.is_main else []
        timing = {"train_s": 0.0, "batch_data_s": 0.0, "steps": 0, "images": 0, "eval_s": 0.0, "prior_wall_s": 0.0}
        start_epoch = 1
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", to_yaml(cfg))
        log(dist, f"{label} | {cfg['model']['arch']} | {cfg['dataset']['name']} "
                  f"{len(data.train.labels)} train / {len(data.val.labels)} val / {len(data.test.labels)} test "
                  f"| {device} x{dist.world_size} -> {out}")

    for epoch in range(start_epoch, train_cfg["epochs"] + 1):
        stats = train_one_epoch(model, ddp_model, optimizer, scheduler, data, cfg, epoch, dist, device)
        timing["train_s"] += stats["step_s"]
        timing["batch_data_s"] += stats["data_s"]
        timing["steps"] += stats["steps"]
        timing["images"] += stats["images"] * dist.world_size
        if dist.is_main:
            eval_start = time.perf_counter()
            row = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc_running": stats["train_acc_running"],
                   "lr": scheduler.get_last_lr()[0], **epoch_metrics(model, data, cfg, device)}
            timing["eval_s"] += time.perf_counter() - eval_start
            history.append(row)
            log(dist, summary_line(row, stats, train_cfg["epochs"]))
            now_wall = timing["prior_wall_s"] + time.perf_counter() - wall_start
            torch_save({"config": cfg, "epoch": epoch, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(device), "history": history,
                        "timing": {**timing, "prior_wall_s": now_wall}}, checkpoint_path)
        distributed.barrier(dist)

    if not dist.is_main:
        distributed.cleanup(dist)
        return {}
    result = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg,
        "method_label": label,
        "metrics": final_metrics(model, data, cfg, device),
        "history": history,
        "data": data.info,
    }
    save_examples(model, data, cfg, device, out)
    wall = timing["prior_wall_s"] + time.perf_counter() - wall_start
    # data_s: building/loading the decoded data set; batch_data_s: indexing, augmenting and normalising
    # the training batches; train_s: forward, backward and optimizer steps only.
    result["timing"] = {"wall_s": wall, "data_s": data_s, "batch_data_s": timing["batch_data_s"],
                        "train_s": timing["train_s"], "eval_s": timing["eval_s"],
                        "mean_step_s": timing["train_s"] / max(1, timing["steps"]),
                        "images_per_s": timing["images"] / max(timing["train_s"] + timing["batch_data_s"], 1e-9)}
    result["env"] = environment(device, dist.world_size)
    write_json(result_path, result)  # its presence means the run is complete
    m = result["metrics"]
    log(dist, f"done: test_acc={m['test_acc']:.4f} attr_area_ratio={m['attr_area_ratio']:.3f} "
              f"wall={wall:.0f}s -> {result_path}")
    distributed.cleanup(dist)
    return result


def summary_line(row: dict, stats: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"loss {row['train_loss']:.3f}", f"train {row['train_acc']:.3f}",
             f"val {row['val_acc']:.3f}" if row["val_acc"] is not None else "val -", f"test {row['test_acc']:.3f}"]
    if "attr_area_ratio" in row:
        parts.append(f"attr {row['attr_area_ratio']:.3f}")
    parts.append(f"{stats['images'] / max(stats['step_s'] + stats['data_s'], 1e-9):.0f} img/s")
    return " | ".join(parts)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def log(dist: distributed.Info, message: str) -> None:
    if dist.is_main:
        tqdm.write(f"[sgdrop] {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sgdrop.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML file overriding sgdrop/default.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set method.name=sgdrop (repeatable)")
    parser.add_argument("--out", required=True, help="output folder of this run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        run(cfg, Path(args.out))
    except (ConfigError, DataError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
