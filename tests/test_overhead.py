"""experiments/06_overhead.py end to end on the smoke profile (no timing assertions: timed tests flake;
the numbers belong in the benchmark's own output)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgdrop.benchmark import paired_ratio, summarize, time_interleaved

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "06_overhead.py"
METHODS = {"vanilla", "dropout", "spatial_dropout", "random", "rsc", "dropblock", "sgdrop (ema)", "sgdrop (online)"}


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    results = tmp_path_factory.mktemp("results") / "runs"
    done = run_script("--profile", "smoke", "--results", str(results))
    assert done.returncode == 0, done.stderr
    path = results.parent / "overhead" / "overhead-smoke-vgg11-cpu.json"
    return json.loads(path.read_text()), done.stdout


def test_smoke_profile_times_every_method(smoke_result):
    result, _ = smoke_result
    assert result["kind"] == "overhead"
    assert set(result["methods"]) == METHODS
    assert result["methods"]["vanilla"]["ratio_to_vanilla"] == 1.0
    for row in result["methods"].values():
        assert row["median_step_s"] > 0 and row["iqr_s"] >= 0 and row["ratio_to_vanilla"] > 0
    config = result["config"]
    assert {"arch", "width", "image_size", "batch_size", "device", "dtype", "repeats", "profile"} <= set(config)
    assert config["profile"] == "smoke" and config["device"] == "cpu" and config["dtype"] == "float32"
    assert {"torch", "device_name", "torch_threads"} <= set(result["env"])


def test_breakdown_shares_are_fractions(smoke_result):
    breakdown = smoke_result[0]["sgdrop_breakdown"]
    shares = {"ema_forward_share", "attribution_share", "mask_share", "ema_update_share"}
    assert shares <= set(breakdown)
    for key in shares:
        assert 0.0 <= breakdown[key] <= 1.0, (key, breakdown[key])


def test_prints_a_markdown_table(smoke_result):
    stdout = smoke_result[1]
    assert "| method | median step (ms)" in stdout
    assert "| sgdrop (online) |" in stdout


def test_dry_run_launches_nothing(tmp_path):
    done = run_script("--profile", "mini", "--dry-run", "--results", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert "would time" in done.stdout and "sgdrop (ema)" in done.stdout
    assert not any(tmp_path.rglob("*")), "a dry run writes nothing"


def test_time_interleaved_runs_each_function_once_per_round_in_shuffled_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = time_interleaved(fns, __import__("torch").device("cpu"), repeats=6, warmup=1)
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert len(rounds) == 7 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds[1:]}) > 1, "the order changes between rounds"
    assert [len(t) for t in times.values()] == [6] * 4
    assert paired_ratio([2.0, 3.0, 10.0], [1.0, 2.0, 4.0]) == {"ratio": 2.0, "ratio_iqr": 0.5}
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median_s": 3.0, "iqr_s": 2.0}
    assert summarize([0.5]) == {"median_s": 0.5, "iqr_s": 0.0}
