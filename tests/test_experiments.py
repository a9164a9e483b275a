"""The experiment layer: grid expansion, run folders, skipping, validation before launch, the plan,
the submitit path and run_all.sh's argument checks. Nothing here trains except the `slow` test."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import common  # noqa: E402

from sgdrop.config import config_hash, load_config  # noqa: E402

# The training experiments (06 is the overhead benchmark, with its own command line).
SCRIPTS = sorted(p for p in (ROOT / "experiments").glob("0[0-9]_*.py") if not p.name.startswith("06_"))
PROFILES = ["smoke", "mini", "paper"]

TINY = {  # one very small synthetic run
    "dataset.name": "synthetic", "dataset.image_size": 32, "dataset.num_classes": 2,
    "dataset.synthetic_pool_per_class": 12, "dataset.synthetic_test_per_class": 4, "dataset.per_class": 8,
    "dataset.val_per_class": 2, "model.width": 0.125, "train.epochs": 1, "train.warmup_epochs": 0,
    "train.batch_size": 8, "train.device": "cpu", "train.num_threads": 1, "eval.attr_subset": 4,
    "eval.examples": 2, "eval.coverage_thresholds": [0.5],
}


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_profiles(tmp_path: Path, profiles: dict, monkeypatch) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(profiles))
    monkeypatch.setattr(common, "PROFILES_PATH", path)


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything is launched; record what would have been."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"launched {args}")

    monkeypatch.setattr(common.subprocess, "run", refuse)
    return calls


def tiny_profile(**experiment) -> dict:
    return {"t": {"seeds": [0], "set": dict(TINY), "estimate": {"run_s": 5},
                  "experiments": {"02_main_accuracy": experiment}}}


GRID = common.Grid(axes={"method": {"vanilla": {"method.name": "vanilla"},
                                    "sgdrop": {"method.name": "sgdrop", "method.rho": 0.05}}})


def test_expansion_is_stable_and_folders_follow_the_config(tmp_path):
    profile = tiny_profile(seeds=[0, 1])["t"]
    a = common.expand("02_main_accuracy", GRID, "t", profile, tmp_path)
    b = common.expand("02_main_accuracy", GRID, "t", profile, tmp_path)
    assert [r.folder for r in a] == [r.folder for r in b]
    assert len(a) == 4 and len({r.folder for r in a}) == 4
    for run in a:
        cfg = load_config(None, run.overrides)
        assert run.folder == tmp_path / "02_main_accuracy" / "t" / f"{common.readable_name(cfg)}-{config_hash(cfg)}"
        assert cfg["run"]["experiment"] == "02_main_accuracy" and cfg["run"]["profile"] == "t"
    assert a[0].name.startswith("vanilla_vgg11") and "_s0-" in a[0].name
    assert "sgdrop-rho0.05" in a[2].name
    # a different config is a different folder; the run.* tags are not part of the hash
    other = common.expand("02_main_accuracy", GRID, "t", {**profile, "set": {**TINY, "train.epochs": 2}}, tmp_path)
    assert {r.folder.name for r in other}.isdisjoint({r.folder.name for r in a})
    assert a[0].name.rsplit("-", 1)[1] == config_hash(load_config(None, [*a[0].overrides, "run.experiment=x"]))


def test_profile_select_and_sweep_narrow_the_grid(tmp_path):
    profile = tiny_profile(select={"method": ["sgdrop"]}, sweep={"method.rho": [0.01, 0.1]})["t"]
    runs = common.expand("02_main_accuracy", GRID, "t", profile, tmp_path)
    assert [load_config(None, r.overrides)["method"]["rho"] for r in runs] == [0.01, 0.1]
    with pytest.raises(common.GridError, match="axis 'method' has no value 'nosuch'"):
        common.expand("02_main_accuracy", GRID, "t", tiny_profile(select={"method": ["nosuch"]})["t"], tmp_path)


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    write_profiles(tmp_path, tiny_profile(), monkeypatch)
    results = tmp_path / "runs"
    runs = common.expand("02_main_accuracy", GRID, "t", common.get_profile("t"), results)
    runs[0].folder.mkdir(parents=True)
    (runs[0].folder / "result.json").write_text("{}")
    launched = []
    monkeypatch.setattr(common.subprocess, "run",
                        lambda cmd, **kw: launched.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert common.main("02_main_accuracy", GRID, ["--profile", "t", "--results", str(results)]) == 0
    assert len(launched) == 1 and launched[0][launched[0].index("--out") + 1] == str(runs[1].folder)
    assert launched[0][:3] == [sys.executable, "-m", "sgdrop.train"]
    # everything done: nothing launched
    (runs[1].folder).mkdir(parents=True)
    (runs[1].folder / "result.json").write_text("{}")
    launched.clear()
    assert common.main("02_main_accuracy", GRID, ["--profile", "t", "--results", str(results)]) == 0
    assert launched == []


def test_nproc_launches_torchrun(tmp_path):
    run = common.expand("02_main_accuracy", GRID, "t", tiny_profile()["t"], tmp_path)[0]
    cmd = common.command(run, 2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:7] == ["-m", "sgdrop.train"]


def test_identical_run_of_another_experiment_is_copied(tmp_path, monkeypatch, no_launch):
    profiles = tiny_profile()
    profiles["t"]["experiments"]["05_architectures"] = {}
    write_profiles(tmp_path, profiles, monkeypatch)
    results = tmp_path / "runs"
    source = common.expand("02_main_accuracy", GRID, "t", common.get_profile("t"), results)
    for run in source:
        run.folder.mkdir(parents=True)
        cfg = load_config(None, run.overrides)
        (run.folder / "result.json").write_text(json.dumps({"config": cfg, "metrics": {"test_acc": 0.5}}))
    assert common.main("05_architectures", GRID, ["--profile", "t", "--results", str(results)]) == 0
    copied = json.loads((results / "05_architectures" / "t" / source[0].name / "result.json").read_text())
    assert copied["config"]["run"]["experiment"] == "05_architectures"
    assert copied["reused_from"] == str(source[0].folder)


def test_bad_override_fails_before_any_launch(tmp_path, monkeypatch, capsys, no_launch):
    profiles = tiny_profile(axes={"method": {"ok": {"method.name": "vanilla"},
                                             "bad": {"method.name": "vanilla", "train.epochz": 3}}})
    write_profiles(tmp_path, profiles, monkeypatch)
    assert common.main("02_main_accuracy", GRID, ["--profile", "t", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "train.epochz" in err
    assert "did you mean 'train.epochs'" in err
    assert no_launch == [] and not (tmp_path / "r").exists()
    # an out-of-range value is caught the same way
    write_profiles(tmp_path, tiny_profile(set={"method.rho": 2.0}), monkeypatch)
    assert common.main("02_main_accuracy", GRID, ["--profile", "t", "--results", str(tmp_path / "r")]) == 2
    assert "method.rho" in capsys.readouterr().err
    assert common.main("02_main_accuracy", GRID, ["--profile", "nosuch"]) == 2
    assert "unknown profile 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_dry_run_prints_a_plan_and_launches_nothing(script, profile, tmp_path, capsys, no_launch):
    module = load_script(script)
    results = tmp_path / "runs"
    assert common.main(script.stem, module.GRID, ["--profile", profile, "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[{script.stem}] profile {profile}:" in out and "to run" in out and "estimated" in out
    assert str(results / script.stem / profile) in out
    assert ("GPU-hours" in out) == (profile == "paper")
    assert no_launch == [] and not results.exists()


def test_mini_profile_has_three_seeds_for_the_main_table(tmp_path):
    runs = common.expand("02_main_accuracy", load_script(ROOT / "experiments/02_main_accuracy.py").GRID, "mini",
                         common.get_profile("mini"), tmp_path)
    seeds = {load_config(None, r.overrides)["train"]["seed"] for r in runs}
    assert len(seeds) >= 3


def test_paper_profile_adds_imagenet_only_when_asked(tmp_path, monkeypatch):
    grid = load_script(ROOT / "experiments/02_main_accuracy.py").GRID
    monkeypatch.delenv("SGDROP_IMAGENET_ROOT", raising=False)
    without = common.expand("02_main_accuracy", grid, "paper", common.get_profile("paper"), tmp_path)
    monkeypatch.setenv("SGDROP_IMAGENET_ROOT", str(tmp_path / "in"))
    with_in = common.expand("02_main_accuracy", grid, "paper", common.get_profile("paper"), tmp_path)
    assert len(with_in) == 2 * len(without)
    imagenet = [load_config(None, r.overrides) for r in with_in if "_imagenet-" in r.name]
    assert imagenet and all(c["dataset"]["root"] == str(tmp_path / "in") for c in imagenet)


def test_script_cli_dry_run(tmp_path):
    """The real command line of one script (the others share common.main)."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/03_rho_ablation.py"), "--profile", "smoke",
                           "--results", str(tmp_path / "runs"), "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[03_rho_ablation] profile smoke: 2 runs" in proc.stdout and not (tmp_path / "runs").exists()


def test_run_all_rejects_unknown_profile_and_option():
    for args, expected in ((["--profile", "nosuch"], "unknown profile 'nosuch'"), (["--bogus"], "unknown option")):
        proc = subprocess.run([str(ROOT / "run_all.sh"), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr


@pytest.mark.slow
def test_submitit_local_executor_runs_one_tiny_run(tmp_path, monkeypatch):
    write_profiles(tmp_path, tiny_profile(select={"method": ["sgdrop"]}), monkeypatch)
    results = tmp_path / "runs"
    assert common.main("02_main_accuracy", GRID,
                       ["--profile", "t", "--results", str(results), "--launcher", "submitit-local"]) == 0
    (folder,) = (results / "02_main_accuracy" / "t").iterdir()
    result = json.loads((folder / "result.json").read_text())
    assert result["config"]["method"]["name"] == "sgdrop" and result["config"]["run"]["experiment"] == "02_main_accuracy"
    assert list((results / "submitit").rglob("*_log.out"))  # went through submitit
