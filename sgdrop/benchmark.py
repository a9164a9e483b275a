"""Timing helpers for `experiments/06_overhead.py`: interleaved, warmed-up, median-of-repeats timing.

Several functions timed in one process are run in rounds (each function once per round), so a slow
spell of a shared machine hits all of them alike; each is warmed up first. The order within a round is
shuffled (with a fixed seed): in a fixed order the first function always follows the last one's cache
state, which on a 2-core CPU biased the first one by a few percent. A ratio between two functions is
taken per round (paired) and summarised by its median, which cancels drift slower than a round. On
CUDA a call is timed with CUDA events around it (the stream is synchronised once per call), on the CPU
with `time.perf_counter`.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable

import torch


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes on `device` (its queued device work included)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                     warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Per name, the seconds of each of `repeats` calls, one call per round in a shuffled order,
    after `warmup` untimed rounds; entry i of every list comes from round i."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    order, shuffle = list(fns), random.Random(seed).shuffle
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            times[name].append(time_call(fns[name], device))
    return times


def paired_ratio(times: list[float], reference: list[float]) -> dict[str, float]:
    """Median and IQR of the per-round ratios times[i] / reference[i] (same round, same conditions)."""
    if len(times) != len(reference):
        raise ValueError(f"paired timings need equal lengths, got {len(times)} and {len(reference)}")
    ratios = [t / r for t, r in zip(times, reference)]
    summary = summarize(ratios)
    return {"ratio": summary["median_s"], "ratio_iqr": summary["iqr_s"]}


def summarize(times: list[float]) -> dict[str, float]:
    """Median and inter-quartile range of a list of timings (seconds) or ratios."""
    if len(times) < 2:
        return {"median_s": times[0], "iqr_s": 0.0}
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median_s": statistics.median(times), "iqr_s": q3 - q1}
