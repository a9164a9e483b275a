"""The training engine end to end on synthetic data: learning, results, resume, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sgdrop import train

# A run that takes a few seconds on 2 CPU cores and learns the synthetic classes.
TINY = ["dataset.name=synthetic", "dataset.image_size=32", "dataset.per_class=40", "dataset.val_per_class=10",
        "dataset.synthetic_test_per_class=20", "model.width=0.125", "train.batch_size=25", "train.lr=0.1",
        "train.num_threads=1", "eval.examples=4", "eval.attr_subset=20"]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def run_cli(out, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "sgdrop.train", "--out", str(out), *sets(*TINY, *extra)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sgdrop"
    assert train.main(["--out", str(out), *sets(*TINY, "train.epochs=8", "method.name=sgdrop",
                                                 "eval.attr_every_epoch=true")]) == 0
    return out


def test_synthetic_run_learns_above_chance(finished_run):
    result = json.loads((finished_run / "result.json").read_text())
    assert result["metrics"]["test_acc"] > 0.3, "10 classes: chance is 0.1"
    assert result["history"][-1]["train_acc"] > result["history"][0]["train_acc"]


def test_result_is_self_describing(finished_run):
    result = json.loads((finished_run / "result.json").read_text())
    assert result["config"]["method"]["name"] == "sgdrop" and result["method_label"] == "sgdrop"
    for key in ("test_acc", "val_acc", "train_acc", "attr_area_ratio", "coverage", "feature_shape"):
        assert key in result["metrics"]
    assert 0.0 <= result["metrics"]["test_acc"] <= 1.0
    assert [row["epoch"] for row in result["history"]] == list(range(9))
    for row in result["history"]:
        assert {"epoch", "train_loss", "train_acc", "val_acc", "test_acc", "attr_area_ratio"} <= set(row)
    assert {"wall_s", "mean_step_s", "images_per_s"} <= set(result["timing"])
    for key in ("python", "torch", "torchvision", "device", "cpu_count", "git_commit", "git_dirty"):
        assert key in result["env"]
    examples = __import__("numpy").load(finished_run / "examples.npz")
    assert examples["images"].shape[0] == 4 and examples["cams"].shape == (4, 32, 32)


def test_completed_run_is_not_retrained(finished_run):
    before = (finished_run / "result.json").stat().st_mtime_ns
    assert train.main(["--out", str(finished_run), *sets(*TINY, "train.epochs=8", "method.name=sgdrop")]) == 0
    assert (finished_run / "result.json").stat().st_mtime_ns == before


def test_checkpoint_loads_with_weights_only(finished_run):
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 8 and "ema.module.encoder.0.weight" in state["model"]


def test_checkpoint_of_another_config_is_refused(finished_run, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(finished_run, out)
    (out / "result.json").unlink()
    assert train.main(["--out", str(out), *sets(*TINY, "train.epochs=8", "method.name=sgdrop", "method.rho=0.05")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.rho: 0.01 -> 0.05" in err[0]
    assert not (out / "result.json").exists()


def test_evaluate_recomputes_metrics(finished_run):
    from sgdrop.evaluate import evaluate_run
    found = evaluate_run(finished_run, device_name="cpu")
    stored = json.loads((finished_run / "result.json").read_text())["metrics"]
    assert found["test_acc"] == pytest.approx(stored["test_acc"])
    assert found["attr_area_ratio"] == pytest.approx(stored["attr_area_ratio"], abs=1e-6)


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_result(tmp_path):
    extra = ["train.epochs=4", "method.name=sgdrop", "train.deterministic=true"]
    reference = tmp_path / "reference"
    assert run_cli(reference, *extra).returncode == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sgdrop.train", "--out", str(killed), *sets(*TINY, *extra)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:  # killed after epoch 1 or 2
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "result.json").exists(), "killed before the end: no result"
    assert run_cli(killed, *extra).returncode == 0

    a = json.loads((reference / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    assert a["metrics"]["test_acc"] == b["metrics"]["test_acc"]
    assert a["metrics"]["attr_area_ratio"] == b["metrics"]["attr_area_ratio"]
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    wa = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sgdrop.train", "--out", str(out), *sets(*TINY, "train.epochs=2", "train.batch_size=26", "method.name=sgdrop")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["env"]["world_size"] == 2
    assert len(result["history"]) == 3
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "only rank 0 writes, and atomically"


IMAGENETTE = Path(os.environ.get("SGDROP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.imagenette
@pytest.mark.skipif(not any(IMAGENETTE.glob("imagenette2*/train")),
                    reason=f"Imagenette not found under {IMAGENETTE} (set SGDROP_DATA_ROOT to test on real data)")
def test_one_epoch_on_real_imagenette(tmp_path):
    out = tmp_path / "real"
    code = train.main(["--out", str(out), *sets(
        "dataset.name=imagenette", f"dataset.root={IMAGENETTE}", "dataset.image_size=32", "dataset.per_class=5",
        "dataset.val_per_class=2", "model.width=0.125",  # default ./cache: decoded once, reused by later runs
        "train.epochs=1", "train.batch_size=25", "method.name=sgdrop", "eval.examples=2", "eval.history_subset=100")])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["images"] == {"train": 50, "val": 20, "test": 3925}
    assert result["metrics"]["feature_shape"] == [64, 2, 2]
    assert 0 <= result["metrics"]["attr_area_ratio"] <= 1


def test_history_subset_is_spread_over_classes():
    from sgdrop.data import ImageSplits, ImageTensors
    labels = torch.arange(10).repeat_interleave(30)  # sorted by class, as the splits are
    split = ImageTensors(torch.zeros(300, 3, 4, 4, dtype=torch.uint8), labels, torch.arange(300))
    data = ImageSplits(split, split, split, [str(c) for c in range(10)], (0.5,) * 3, (0.5,) * 3, {})
    seen = torch.cat([y for _, y in train.eval_batches(split, data, 16, torch.device("cpu"), limit=50)])
    assert len(seen) == 50 and torch.bincount(seen).tolist() == [5] * 10


def test_compile_option_compiles_in_place_and_keeps_state_dict_keys():
    from sgdrop.config import defaults
    cfg = defaults()
    cfg["model"].update(width=0.125, small_input=True)
    cfg["method"]["name"] = "sgdrop"
    plain = train.build_model(cfg, 4, torch.device("cpu"))
    cfg["train"]["compile"] = True
    compiled = train.build_model(cfg, 4, torch.device("cpu"))
    assert plain.encoder._compiled_call_impl is None  # nn.Module.compile() sets it; nothing runs here
    assert compiled.encoder._compiled_call_impl is not None and compiled.head._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_git_state_ignores_outputs_but_not_code(tmp_path):
    from sgdrop.io import git_state
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "results").mkdir()
    for name in ("code.py", "results/r.json", "README.md"):
        (tmp_path / name).write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / "results" / "r.json").write_text("b\n")
    (tmp_path / "README.md").write_text("b\n")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("b\n")
    assert git_state(tmp_path)["git_dirty"] is True
