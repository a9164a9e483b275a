"""Reliability: interruption at bad moments, bad input, safe loading (issue: Reliability).

Each bad-input case must give a one-line error naming the problem and the fix, a non-zero exit,
and leave no result file behind."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sgdrop import train

ROOT = Path(__file__).resolve().parent.parent
TINY = ["dataset.name=synthetic", "dataset.image_size=32", "dataset.per_class=20", "dataset.val_per_class=5",
        "dataset.synthetic_test_per_class=10", "model.width=0.125", "train.batch_size=25", "train.epochs=3",
        "train.num_threads=1", "train.deterministic=true", "method.name=sgdrop", "eval.examples=2"]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def fails_cleanly(out: Path, capsys, *overrides, match: str) -> str:
    """Run the engine in-process; assert exit 2, one stderr line matching `match`, no result file."""
    code = train.main(["--out", str(out), *sets(*TINY, *overrides)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not (out / "result.json").exists()
    return err[0]


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,match", [
    ("method.rh=0.1", r"unknown config key 'method.rh' \(did you mean 'method.rho'\?\)"),
    ("train.epochs=three", r"'train.epochs' expects an integer"),
    ("method.rho=1.5", r"'method.rho' must be in \(0, 1\), got 1.5"),
    ("method.rho=0", r"'method.rho' must be in \(0, 1\)"),
    ("method.p=1.0", r"'method.p' must be in \[0, 1\)"),
    ("model.arch=vgg12", r"'model.arch' must be one of vgg11, vgg16"),
])
def test_bad_config_is_rejected_before_any_work(tmp_path, capsys, override, match):
    fails_cleanly(tmp_path / "run", capsys, override, match=match)
    assert not (tmp_path / "run").exists(), "nothing is written for a config error"


def test_missing_data_root_says_how_to_get_imagenette(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SGDROP_DATA_ROOT", raising=False)
    line = fails_cleanly(tmp_path / "run", capsys, "dataset.name=imagenette", f"dataset.root={tmp_path / 'nowhere'}",
                         match="no Imagenette")
    assert "SGDROP_DATA_ROOT" in line and "download" in line


def make_folder_dataset(root: Path, broken: str | None = None, empty_class: bool = False) -> None:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            if empty_class and split == "train" and cls == "b":
                continue
            for i in range(12):
                Image.new("RGB", (40, 40), (i * 20, 100 if cls == "a" else 200, 50)).save(folder / f"{i}.jpg")
    if broken:
        (root / "train" / "a" / broken).write_bytes(b"\xff\xd8\xff\xe0 this is not a whole jpeg")


def folder_overrides(root: Path, tmp_path: Path) -> list[str]:
    return ["dataset.name=folder", f"dataset.root={root}", "dataset.per_class=5", "dataset.val_per_class=2",
            f"dataset.cache_dir={tmp_path / 'cache'}"]


def test_empty_class_folder_is_named(tmp_path, capsys):
    make_folder_dataset(tmp_path / "data", empty_class=True)
    fails_cleanly(tmp_path / "run", capsys, *folder_overrides(tmp_path / "data", tmp_path),
                  match=r"class folder .*train/b holds no image")


def test_truncated_image_is_named_or_skipped_when_asked(tmp_path, capsys):
    make_folder_dataset(tmp_path / "data", broken="broken.jpg")
    line = fails_cleanly(tmp_path / "run", capsys, *folder_overrides(tmp_path / "data", tmp_path),
                         match=r"cannot read image .*broken.jpg")
    assert "skip_bad_images" in line
    with pytest.warns(UserWarning, match="broken.jpg"):
        code = train.main(["--out", str(tmp_path / "run2"),
                           *sets(*TINY, *folder_overrides(tmp_path / "data", tmp_path), "dataset.skip_bad_images=true",
                                 "train.epochs=1")])
    assert code == 0 and (tmp_path / "run2" / "result.json").exists()


def test_nan_loss_stops_with_epoch_and_step(tmp_path, capsys):
    fails_cleanly(tmp_path / "run", capsys, "train.lr=1e30", "train.warmup_epochs=0",
                  match=r"loss became NaN/inf at epoch 1, step \d+")


def test_cli_exit_code_and_single_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sgdrop.train", "--out", str(tmp_path / "r"), "--set", "method.rho=2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")


# --- interruption ----------------------------------------------------------------------------------

KILL_ON_WRITE = """
import os, signal, sys
import sgdrop.io as io
target, nth = sys.argv[1], int(sys.argv[2])
real_replace, seen = os.replace, [0]
def replace(src, dst):
    if str(dst).endswith(target):
        seen[0] += 1
        if seen[0] == nth:  # the temporary file is fully written; die before the rename
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
io.os.replace = replace
from sgdrop.train import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert train.main(["--out", str(out), *sets(*TINY)]) == 0
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("target,nth", [("checkpoint.pt", 2), ("result.json", 1)])
def test_killed_while_writing_then_rerun_completes_identically(tmp_path, uninterrupted, target, nth):
    out = tmp_path / "run"
    args = ["--out", str(out), *sets(*TINY)]
    killed = subprocess.run([sys.executable, "-c", KILL_ON_WRITE, target, str(nth), *args], capture_output=True,
                            timeout=600)
    assert killed.returncode == -9
    assert not (out / "result.json").exists()
    if (out / "checkpoint.pt").exists():  # what is there is a complete earlier checkpoint, never a torn one
        import torch
        torch.load(out / "checkpoint.pt", weights_only=True)
    assert train.main(args) == 0
    resumed = json.loads((out / "result.json").read_text())
    assert resumed["metrics"]["test_acc"] == uninterrupted["metrics"]["test_acc"]
    assert resumed["metrics"]["attr_area_ratio"] == uninterrupted["metrics"]["attr_area_ratio"]
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in uninterrupted["history"]]
    assert not list(out.glob(".*.tmp")), "stale temporary files are cleaned on resume"


# --- safe loading ----------------------------------------------------------------------------------

def python_sources():
    return [p for folder in ("sgdrop", "experiments", "analysis") for p in (ROOT / folder).rglob("*.py")]


def test_every_torch_load_is_weights_only():
    for path in python_sources():
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_yaml_is_only_safe_loaded_and_no_shell_is_built():
    for path in python_sources():
        text = path.read_text()
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert "shell=True" not in text and "os.system(" not in text, path


@pytest.mark.slow
def test_run_all_killed_midway_then_rerun_has_every_run_once(tmp_path):
    import os
    import signal
    import time

    env = {**os.environ, "SGDROP_RESULTS": str(tmp_path / "results"), "SGDROP_FIGURES": str(tmp_path / "figures")}
    cmd = [str(ROOT / "run_all.sh"), "--profile", "smoke", "--only", "02"]
    runs = tmp_path / "results" / "runs" / "02_main_accuracy" / "smoke"
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(runs.glob("*/result.json")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let the next run start, so it is killed mid-way
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert len(list(runs.glob("*/result.json"))) < 7, "killed before the end"

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    folders = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(folders) == 7 and all((p / "result.json").exists() for p in folders)
    labels = [json.loads((p / "result.json").read_text())["method_label"] for p in folders]
    assert len(set(labels)) == len(labels), "every run exactly once"
    table = (tmp_path / "results" / "tables" / "accuracy.md").read_text(encoding="utf-8")
    assert "in progress" not in table and "not run" not in table
    assert (tmp_path / "figures" / "accuracy.png").exists()
