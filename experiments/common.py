"""What every experiment script shares: profiles, grid expansion, run folders, the plan, and the launch.

An experiment script is a grid and one call::

    GRID = Grid(set={"method.name": "sgdrop"}, sweep={"method.rho": [0.001, 0.01, 0.1]})
    sys.exit(common.main("03_rho_ablation", GRID))

A grid has fixed overrides (``set``), named axes (``axes``: axis -> {label: overrides}) and plain
sweeps over one config key (``sweep``: key -> values). The profile (``experiments/profiles.yaml``)
sets the scale: overrides for every run, seeds, and per experiment it may add overrides, keep only
some labels of an axis (``select``), replace a sweep's values, or add axes. The runs are the product
of all axes, sweeps and seeds, each a list of ``KEY=VALUE`` overrides for ``python -m sgdrop.train``.

A run's folder is ``RESULTS/<experiment>/<profile>/<readable name>-<config hash>``: the same config
always lands in the same folder, so a rerun skips finished runs (``result.json`` exists) and the
engine resumes interrupted ones from their checkpoint.

Every config of the grid is validated (``sgdrop.config.load_config``) before anything is launched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from sgdrop.config import ConfigError, config_hash, load_config, to_yaml
from sgdrop.io import write_json, write_text
from sgdrop.methods import method_label

PROFILES_PATH = Path(__file__).with_name("profiles.yaml")
DEFAULT_PROFILE = "mini"
LAUNCHERS = ("local", "slurm", "submitit-local")
REQUIRES = "requires_env"  # axis-value key: keep the value only when this environment variable is set


class GridError(ValueError):
    """A profile or grid that cannot be expanded; the message is one line."""


# ---------------------------------------------------------------------------------------------- grid

@dataclass
class Grid:
    """An experiment's default grid; the profile may narrow or extend it (see the module docstring)."""

    set: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    experiment: str
    profile: str
    overrides: tuple[str, ...]  # KEY=VALUE strings for sgdrop.train --set
    name: str  # <readable>-<config hash>
    folder: Path
    estimate_s: float  # expected seconds on one device (a run on nproc devices takes about estimate_s / nproc)
    nproc: int  # processes (GPUs) of one run

    @property
    def wall_s(self) -> float:
        return self.estimate_s / self.nproc

    @property
    def done(self) -> bool:
        return (self.folder / "result.json").exists()

    @property
    def started(self) -> bool:
        return (self.folder / "checkpoint.pt").exists()


def load_profiles(path: Path | None = None) -> dict[str, dict]:
    path = path or PROFILES_PATH
    with open(path, encoding="utf-8") as handle:
        profiles = yaml.safe_load(handle)
    if not isinstance(profiles, dict):
        raise GridError(f"{path} must map profile names to profiles")
    return profiles


def get_profile(name: str, path: Path | None = None) -> dict:
    profiles = load_profiles(path)
    if name not in profiles:
        raise GridError(f"unknown profile '{name}' (choose one of {', '.join(profiles)})")
    return profiles[name]


def _value(value: Any) -> str:
    """A Python value as the YAML text `--set KEY=VALUE` reads back to the same value."""
    if isinstance(value, str):
        value = os.path.expandvars(value)  # e.g. dataset.root: ${SGDROP_IMAGENET_ROOT}
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _overrides(mapping: dict[str, Any]) -> list[str]:
    return [f"{key}={_value(value)}" for key, value in mapping.items()]


def _label(key: str, value: Any) -> str:
    return f"{key.rsplit('.', 1)[-1]}={value}"


def expand(experiment: str, grid: Grid, profile_name: str, profile: dict,
           results: Path | str = "results/runs") -> list[Run]:
    """The runs of ``experiment`` under ``profile``, validated, in a stable order."""
    spec = (profile.get("experiments") or {}).get(experiment)
    if spec is None:
        raise GridError(f"profile '{profile_name}' has no entry for experiment '{experiment}' in {PROFILES_PATH.name}")
    unknown = set(spec) - {"set", "select", "sweep", "axes", "seeds", "estimate_s", "nproc"}
    if unknown:
        raise GridError(f"profile '{profile_name}', experiment '{experiment}': unknown key(s) {sorted(unknown)} "
                        "(allowed: set, select, sweep, axes, seeds, estimate_s, nproc)")

    axes = {name: dict(values) for name, values in grid.axes.items()}
    axes.update({name: dict(values) for name, values in (spec.get("axes") or {}).items()})
    for axis, keep in (spec.get("select") or {}).items():
        if axis not in axes:
            raise GridError(f"profile '{profile_name}', experiment '{experiment}': select names axis '{axis}', "
                            f"which does not exist (axes: {', '.join(axes) or 'none'})")
        missing = [label for label in keep if label not in axes[axis]]
        if missing:
            raise GridError(f"profile '{profile_name}', experiment '{experiment}': axis '{axis}' has no "
                            f"value {missing[0]!r} (values: {', '.join(axes[axis])})")
        axes[axis] = {label: axes[axis][label] for label in keep}
    for axis in axes:  # values that need something the user must provide (e.g. ImageNet)
        axes[axis] = {label: values for label, values in axes[axis].items()
                      if not values.get(REQUIRES) or os.environ.get(values[REQUIRES])}
    sweep = {**grid.sweep, **(spec.get("sweep") or {})}
    seeds = spec.get("seeds", profile.get("seeds", [0]))
    choices = [[(label, values) for label, values in axis.items()] for axis in axes.values()]
    choices += [[(_label(key, v), {key: v}) for v in values] for key, values in sweep.items()]
    choices += [[(f"seed={s}", {"train.seed": s}) for s in seeds]]

    fixed = {**(profile.get("set") or {}), **grid.set, **(spec.get("set") or {})}
    nproc = int(spec.get("nproc", profile.get("nproc", 1)))
    runs, seen = [], {}
    for combo in itertools.product(*choices):
        values = dict(fixed)
        for _, part in combo:
            values.update({k: v for k, v in part.items() if k != REQUIRES})
        values.update({"run.experiment": experiment, "run.profile": profile_name})
        overrides = tuple(_overrides(values))
        point = ", ".join(label for label, _ in combo)
        try:
            cfg = load_config(None, overrides)
        except ConfigError as error:
            raise GridError(f"profile '{profile_name}', experiment '{experiment}', run ({point}): {error}") from None
        digest = config_hash(cfg)
        if digest in seen:
            raise GridError(f"profile '{profile_name}', experiment '{experiment}': runs ({seen[digest]}) and "
                            f"({point}) have the same config; drop one from the grid")
        seen[digest] = point
        name = f"{readable_name(cfg)}-{digest}"
        runs.append(Run(experiment, profile_name, overrides, name,
                        Path(results) / experiment / profile_name / name,
                        estimate_seconds(cfg, profile, spec), nproc))
    return runs


def readable_name(cfg: dict) -> str:
    """``sgdrop-rho0.05_vgg11_64px_pc100_s0``: method label, arch, data size, seed (a file-safe slug)."""
    data, model, method = cfg["dataset"], cfg["model"], cfg["method"]
    size = "all" if data["per_class"] is None and data["fraction"] is None else (
        f"pc{data['per_class']}" if data["per_class"] is not None else f"f{data['fraction']}")
    data_name = "" if data["name"] == "imagenette" else f"{data['name']}_"
    parts = [method_label(method["name"], method), model["arch"] + (
        f"w{model['width']:g}" if model["arch"].startswith("vgg") and model["width"] != 1 else ""),
        f"{data_name}{data['image_size']}px_{size}", f"s{cfg['train']['seed']}"]
    slug = "_".join(re.sub(r"[^A-Za-z0-9.=]+", "-", p).replace("=", "").strip("-") for p in parts)
    return slug


def estimate_seconds(cfg: dict, profile: dict, spec: dict) -> float:
    """Expected seconds of one run: the profile's per-run estimate (or the experiment's), times the
    factors of ``estimate.factor`` whose key is the run's arch or method name (or a ``KEY=VALUE``)."""
    estimate = profile.get("estimate") or {}
    seconds = float(spec.get("estimate_s", estimate.get("run_s", 0.0)))
    flat = {"model.arch": cfg["model"]["arch"], "method.name": cfg["method"]["name"],
            "method.attribution": cfg["method"]["attribution"], "dataset.name": cfg["dataset"]["name"],
            "dataset.per_class": cfg["dataset"]["per_class"], "train.epochs": cfg["train"]["epochs"]}
    for key, factor in (estimate.get("factor") or {}).items():
        if key in (cfg["model"]["arch"], cfg["method"]["name"]) or \
                ("=" in key and str(flat.get(key.split("=")[0])) == key.split("=", 1)[1]):
            seconds *= float(factor)
    return seconds


def identical_finished(run: Run) -> Path | None:
    """The folder of a finished run of another experiment with the same config (same name and hash)."""
    for other in sorted(run.folder.parent.parent.parent.glob(f"*/{run.profile}/{run.name}/result.json")):
        if other.parent != run.folder:
            return other.parent
    return None


def copy_identical(run: Run, source: Path) -> None:
    """Record ``source``'s result as ``run``'s: the same config (run.* aside) trained once serves both
    experiments. The copy says where it came from (``reused_from``)."""
    result = json.loads((source / "result.json").read_text())
    result["config"]["run"]["experiment"] = run.experiment
    result["reused_from"] = str(source)
    run.folder.mkdir(parents=True, exist_ok=True)
    write_text(run.folder / "config.yaml", to_yaml(result["config"]))
    if (source / "examples.npz").exists():
        shutil.copyfile(source / "examples.npz", run.folder / "examples.npz")
    write_json(run.folder / "result.json", result)  # last: its presence means complete


# ---------------------------------------------------------------------------------------------- plan

def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def print_plan(experiment: str, profile_name: str, profile: dict, runs: list[Run], list_runs: bool) -> None:
    todo = [r for r in runs if not r.done]
    reusable = [r for r in todo if not r.started and identical_finished(r)]
    todo = [r for r in todo if r not in reusable]
    started = sum(r.started for r in todo)
    est = sum(r.wall_s for r in todo)
    where = profile.get("estimate", {}).get("machine", "the profile's target machine")
    copied = f", {len(reusable)} copied from identical finished runs of other experiments" if reusable else ""
    print(f"[{experiment}] profile {profile_name}: {len(runs)} runs, {len(runs) - len(todo) - len(reusable)} done"
          f"{copied}, {len(todo)} to run ({started} to resume); estimated {duration(est)} on {where}", flush=True)
    if profile.get("gpu_hours"):
        gpu_h = sum(r.estimate_s for r in todo) / 3600  # device-seconds: the same on 1 or N GPUs
        total = sum(r.estimate_s for r in runs) / 3600
        print(f"[{experiment}] GPU-hours: {gpu_h:.1f} to run ({total:.1f} for the whole grid; "
              f"per-run estimates from {PROFILES_PATH.name})", flush=True)
    if list_runs:
        for r in runs:
            state = "done" if r.done else "resume" if r.started else "copy" if r in reusable else "new"
            print(f"  {state:6s} {r.folder}  (~{duration(r.wall_s)})", flush=True)


# ---------------------------------------------------------------------------------------------- launch

def command(run: Run, nproc: int) -> list[str]:
    """The engine's command line for ``run`` (an argument list, never a shell string)."""
    sets = [arg for override in run.overrides for arg in ("--set", override)]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        launcher = [sys.executable]
    return [*launcher, "-m", "sgdrop.train", *sets, "--out", str(run.folder)]


class Progress:
    """``run i/N`` with elapsed time and an estimate of the time left (measured once a run has finished,
    the profile's estimate before)."""

    def __init__(self, experiment: str, runs: list[Run]):
        self.experiment, self.runs, self.start = experiment, runs, time.monotonic()
        self.measured: list[tuple[float, float]] = []  # (seconds taken, estimate)

    def left(self, i: int) -> float:
        remaining = sum(r.wall_s for r in self.runs[i:])
        if self.measured:  # scale the estimates by how the finished runs compared with theirs
            taken, estimated = map(sum, zip(*self.measured))
            remaining *= taken / max(estimated, 1e-9)
        return remaining

    def begin(self, i: int) -> None:
        elapsed = time.monotonic() - self.start
        print(f"[{self.experiment}] run {i + 1}/{len(self.runs)}: {self.runs[i].name} | elapsed {duration(elapsed)}"
              f" | ~{duration(self.left(i))} left", file=sys.stderr, flush=True)

    def end(self, i: int, seconds: float) -> None:
        self.measured.append((seconds, self.runs[i].wall_s or seconds))


def launch_local(runs: list[Run], nproc: int, experiment: str) -> list[str]:
    """Run one after the other; return the folders of failed runs. A first run that fails with exit
    status 2 (bad input: the engine printed a one-line error) stops everything, since the rest would fail
    the same way."""
    failed = []
    progress = Progress(experiment, runs)
    for i, run in enumerate(runs):
        progress.begin(i)
        start = time.monotonic()
        status = subprocess.run(command(run, nproc)).returncode  # same cwd: relative --results agree
        progress.end(i, time.monotonic() - start)
        if status != 0:
            print(f"[{experiment}] run {i + 1}/{len(runs)} failed (exit {status}): {run.folder}",
                  file=sys.stderr, flush=True)
            if status == 2 and not failed and i == 0:
                raise SystemExit(2)
            failed.append(str(run.folder))
    return failed


def launch_submitit(runs: list[Run], nproc: int, experiment: str, profile: dict, results: Path,
                    cluster: str | None) -> list[str]:
    """One submitit job per run (batch submission), then wait for all; ``cluster`` None = auto (Slurm),
    "local"/"debug" = submitit's local executors (used by the tests)."""
    import submitit  # only the cluster path needs it

    executor = submitit.AutoExecutor(folder=results / "submitit" / experiment / runs[0].profile / "%j",
                                     cluster=cluster)
    slurm = dict(profile.get("slurm") or {})
    partition = os.environ.get("SGDROP_SLURM_PARTITION") or slurm.pop("partition", None)
    longest = max(r.wall_s for r in runs)
    params = {"name": f"sgdrop-{experiment}", "tasks_per_node": 1, "nodes": 1,
              "timeout_min": int(slurm.pop("timeout_min", max(10, 2 * longest / 60))),
              "gpus_per_node": nproc if cluster is None else 0, **slurm}
    if cluster is not None:  # the local executor knows no cpus/mem/partition keys
        params = {k: params[k] for k in ("timeout_min", "gpus_per_node", "tasks_per_node") if k in params}
    elif partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    env = dict(os.environ)
    with executor.batch():
        jobs = [executor.submit(submitit.helpers.CommandFunction(command(r, nproc), cwd=Path.cwd(), env=env,
                                                                 verbose=False)) for r in runs]
    print(f"[{experiment}] submitted {len(jobs)} jobs ({', '.join(str(j.job_id) for j in jobs[:5])}"
          f"{', ...' if len(jobs) > 5 else ''}); logs in {executor.folder}", file=sys.stderr, flush=True)
    failed, start = [], time.monotonic()
    for i, (run, job) in enumerate(zip(runs, jobs)):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - a failed job is reported and the others awaited
            failed.append(str(run.folder))
            last = str(error).strip().splitlines()[-1:] or [""]
            print(f"[{experiment}] job {job.job_id} failed: {run.folder}: {last[0]}", file=sys.stderr, flush=True)
        print(f"[{experiment}] run {i + 1}/{len(runs)} finished | elapsed {duration(time.monotonic() - start)}",
              file=sys.stderr, flush=True)
    return failed


# ----------------------------------------------------------------------------------------------- CLI

def parse_args(argv: Sequence[str] | None, experiment: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"experiments/{experiment}.py",
                                     description=f"Run the grid of {experiment} through sgdrop.train.")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help="smoke | mini | paper (experiments/profiles.yaml)")
    parser.add_argument("--results", default="results/runs", help="folder of the run folders (default results/runs)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and every run folder; launch nothing")
    parser.add_argument("--launcher", default="local", choices=LAUNCHERS,
                        help="local: one run after the other here; slurm: submitit jobs; submitit-local: "
                             "submitit's local executor (testing)")
    parser.add_argument("--nproc", type=int, default=None,
                        help="processes per run (torchrun); default: the profile's nproc, else 1")
    return parser.parse_args(argv)


def main(experiment: str, grid: Grid, argv: Sequence[str] | None = None) -> int:
    """Expand, validate, print the plan, skip what is done, launch the rest. Exit 2 on bad input,
    1 when some runs failed (rerunning the same command resumes them)."""
    args = parse_args(argv, experiment)
    try:
        if args.nproc is not None and args.nproc < 1:
            raise GridError(f"--nproc must be >= 1, got {args.nproc}")
        profile = get_profile(args.profile)
        runs = expand(experiment, grid, args.profile, profile, args.results)
    except GridError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.nproc is not None:
        runs = [Run(r.experiment, r.profile, r.overrides, r.name, r.folder, r.estimate_s, args.nproc) for r in runs]
    print_plan(experiment, args.profile, profile, runs, list_runs=args.dry_run)
    todo = [r for r in runs if not r.done]
    if args.dry_run or not todo:
        return 0
    for run in list(todo):
        source = None if run.started else identical_finished(run)
        if source is not None:
            copy_identical(run, source)
            todo.remove(run)
            print(f"[{experiment}] {run.name}: copied from {source} (same config)", file=sys.stderr)
    if not todo:
        print(f"[{experiment}] all {len(runs)} runs complete", file=sys.stderr)
        return 0
    nproc = todo[0].nproc
    try:
        if args.launcher == "local":
            failed = launch_local(todo, nproc, experiment)
        else:
            cluster = None if args.launcher == "slurm" else "local"
            failed = launch_submitit(todo, nproc, experiment, profile, Path(args.results), cluster)
    except KeyboardInterrupt:
        print(f"\n[{experiment}] interrupted; rerun the same command to continue (finished runs are kept, "
              "the interrupted one resumes from its last epoch)", file=sys.stderr)
        return 130
    if failed:
        print(f"[{experiment}] {len(failed)} of {len(todo)} runs failed; rerun the same command to resume them",
              file=sys.stderr)
        return 1
    print(f"[{experiment}] all {len(runs)} runs complete", file=sys.stderr)
    return 0
