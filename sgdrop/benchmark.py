"""Timing helpers for `experiments/06_overhead.py`: interleaved, warmed-up, median-of-repeats timing.

Several functions timed in one process are run round-robin (A B C A B C ...), so a slow spell of a
shared machine hits all of them alike; each is warmed up first. On CUDA a call is timed with CUDA
events around it (the stream is synchronised once per call), on the CPU with `time.perf_counter`.
"""

from __future__ import annotations

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
                     warmup: int) -> dict[str, list[float]]:
    """Per name, the seconds of each of `repeats` calls, run round-robin after `warmup` untimed rounds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """Median and inter-quartile range (seconds) of a list of timings."""
    if len(times) < 2:
        return {"median_s": times[0], "iqr_s": 0.0}
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median_s": statistics.median(times), "iqr_s": q3 - q1}
