"""Find finished runs and flatten them into one pandas row per run.

A run is complete when its folder holds ``result.json`` (the engine writes it last, atomically); a
folder with ``checkpoint.pt`` and no ``result.json`` is a run in progress (or one that died). The
overhead benchmark writes a different kind of JSON (``"kind": "overhead"``), loaded separately.

Everything downstream (tables, figures, compare) works from ``load_results`` + ``to_frame``, so the
column names below are the analysis' whole view of a run.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

SCHEMA_VERSION = 1

# Experiment tags of the reproduction (run.experiment in the config).
EXPERIMENTS = {
    "overfocus": "01_overfocus_dynamics",
    "main": "02_main_accuracy",
    "rho": "03_rho_ablation",
    "attribution": "04_attribution_methods",
    "architectures": "05_architectures",
    "overhead": "06_overhead",
    "ema": "07_ema_decay",
}

# Profiles from the most to the least faithful: figures and compare use the best one present.
PROFILE_ORDER = ["paper", "mini", "smoke"]

# What identifies "the same experimental setting" across methods and seeds.
SETTING = ["profile", "dataset", "image_size", "per_class", "arch"]

# Order in which method families are listed (baselines first, the paper's method last).
METHOD_ORDER = ["vanilla", "dropout", "spatial_dropout", "dropblock", "rsc", "random", "sgdrop"]

# Hyper-parameters that may tell two runs with the same display label apart.
HYPER = ["method", "p", "rho", "attribution", "saliency", "ema_decay", "ema_warmup", "rescale"]

UNTAGGED = "(untagged)"


def get(d: Any, dotted: str, default: Any = None) -> Any:
    """``get(r, "config.model.arch")``: nested lookup that tolerates missing keys (old or partial schemas)."""
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None (with a warning) when it is unreadable or truncated."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"skipping unreadable {path}: {err}", stacklevel=3)
        return None
    if not isinstance(data, dict):
        warnings.warn(f"skipping {path}: not a JSON object", stacklevel=3)
        return None
    return data


def load_results(root: str | Path = "results") -> list[dict]:
    """Every complete run under ``root`` (any depth), each a result dict plus ``run_dir`` (and
    ``examples_path`` when the run saved Grad-CAM examples).

    Files that fail to parse, or lack ``config``/``metrics.test_acc``, are skipped with a warning:
    a half-written or foreign file must never enter an average.
    """
    runs = []
    for path in sorted(Path(root).rglob("result.json")):
        data = _read_json(path)
        if data is None:
            continue
        if not isinstance(data.get("config"), dict) or get(data, "metrics.test_acc") is None:
            warnings.warn(f"skipping {path}: no config or metrics.test_acc (partial result?)", stacklevel=2)
            continue
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            warnings.warn(f"{path}: schema_version {data['schema_version']} is newer than {SCHEMA_VERSION}",
                          stacklevel=2)
        run = dict(data, run_dir=str(path.parent))
        examples = path.parent / "examples.npz"
        if examples.exists():
            run["examples_path"] = str(examples)
        runs.append(run)
    return runs


def load_overhead(root: str | Path = "results") -> list[dict]:
    """Every overhead benchmark JSON under ``root`` (``overhead/*.json`` or ``overhead*.json``)."""
    root = Path(root)
    paths = {p for p in root.rglob("*.json") if p.parent.name == "overhead" or p.name.startswith("overhead")}
    out = []
    for path in sorted(paths):
        data = _read_json(path)
        if data is not None and data.get("kind") == "overhead" and isinstance(data.get("methods"), dict):
            out.append(dict(data, path=str(path)))
    return out


def find_incomplete(root: str | Path = "results") -> list[Path]:
    """Run folders holding ``checkpoint.pt`` but no ``result.json`` (in progress, or died)."""
    return sorted(p.parent for p in Path(root).rglob("checkpoint.pt") if not (p.parent / "result.json").exists())


def _experiment_of(run_dir: Path, root: Path) -> str:
    """Experiment of an unfinished run: from a config file beside the checkpoint if the engine left
    one, else from the first folder name that looks like an experiment tag (``02_main_accuracy``)."""
    for name in ("config.json", "config.yaml", "resolved_config.yaml"):
        cfg_path = run_dir / name
        if cfg_path.exists():
            try:
                import yaml  # JSON is YAML too

                cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
                tag = get(cfg, "run.experiment") or get(cfg, "config.run.experiment")
                if tag:
                    return str(tag)
            except Exception:  # an unreadable sidecar only costs us the attribution  # noqa: BLE001
                pass
    try:
        parts = run_dir.relative_to(root).parts
    except ValueError:
        parts = run_dir.parts
    known = set(EXPERIMENTS.values())
    for part in parts:
        if part in known or re.match(r"^\d\d_[a-z]", part):
            return part
    return UNTAGGED


def incomplete_frame(root: str | Path = "results") -> pd.DataFrame:
    """``find_incomplete`` as a frame with the experiment each unfinished run belongs to."""
    root = Path(root)
    # Paths relative to the results folder: tables name them, and must not depend on where it lives.
    rows = [{"run_dir": d.relative_to(root).as_posix(), "experiment": _experiment_of(d, root)}
            for d in find_incomplete(root)]
    return pd.DataFrame(rows, columns=["run_dir", "experiment"])


def _threshold_keys(run: dict) -> list[str]:
    return sorted(get(run, "metrics.coverage.last_layer", {}) or {}, key=float)


def _coverage_columns(run: dict) -> dict:
    """``cov_{last,all}_{mean,union}_t{threshold}`` for every threshold the run measured."""
    cols = {}
    for scope, key in (("last", "last_layer"), ("all", "all_layers")):
        for t, vals in (get(run, f"metrics.coverage.{key}", {}) or {}).items():
            for agg in ("mean", "union"):
                cols[f"cov_{scope}_{agg}_t{t}"] = get(vals, agg)
    return cols


def _num(x: Any) -> float:
    """A float, NaN for None: keeps numeric columns numeric when a metric is missing."""
    return math.nan if x is None else float(x)


def run_row(run: dict) -> dict:
    """One flat row describing a run: its setting, method, seed and headline metrics."""
    c = run["config"]
    m = run.get("metrics", {})
    shape = m.get("feature_shape")
    train_acc, test_acc = _num(m.get("train_acc")), _num(m.get("test_acc"))
    row = {
        "experiment": get(c, "run.experiment") or UNTAGGED,
        "profile": get(c, "run.profile") or "(none)",
        "dataset": get(c, "dataset.name"),
        "image_size": get(c, "dataset.image_size"),
        "per_class": _num(get(c, "dataset.per_class")),  # NaN = all images
        "arch": get(c, "model.arch"),
        "width": _num(get(c, "model.width")),
        "method": get(c, "method.name"),
        "method_label": run.get("method_label") or get(c, "method.name"),
        "p": _num(get(c, "method.p")),
        "rho": _num(get(c, "method.rho")),
        "attribution": get(c, "method.attribution"),
        "saliency": get(c, "method.saliency"),
        "ema_decay": _num(get(c, "method.ema_decay")),
        "ema_warmup": get(c, "method.ema_warmup"),
        "rescale": get(c, "method.rescale"),
        "epochs": get(c, "train.epochs"),
        "seed": get(c, "train.seed"),
        "test_acc": test_acc,
        "val_acc": _num(m.get("val_acc")),
        "train_acc": train_acc,
        "gen_gap": train_acc - test_acc,
        "attr_area_ratio": _num(m.get("attr_area_ratio")),
        "attr_threshold": _num(m.get("attr_threshold", get(c, "eval.attr_threshold"))),
        "feature_shape": "x".join(map(str, shape)) if shape else None,
        "coverage_output": get(m, "coverage.layer_output"),
        "coverage_inputs": get(m, "coverage.num_inputs"),
        **_coverage_columns(run),
        "wall_s": _num(get(run, "timing.wall_s")),
        "mean_step_s": _num(get(run, "timing.mean_step_s")),
        "images_per_s": _num(get(run, "timing.images_per_s")),
        "device": get(run, "env.device"),
        "git_commit": get(run, "env.git_commit"),
        "run_dir": run.get("run_dir"),
    }
    # Non-sweep methods carry default p/rho in their config; blank them so they never split groups.
    if row["method"] not in ("dropout", "spatial_dropout", "dropblock", "rsc"):
        row["p"] = math.nan
    if row["method"] not in ("sgdrop", "random"):
        row["rho"] = math.nan
    if row["method"] != "sgdrop":
        row.update(attribution=None, saliency=None, ema_decay=math.nan, ema_warmup=None, rescale=None)
    elif row["attribution"] == "online":  # no EMA copy: its settings do not describe the run
        row.update(ema_decay=math.nan, ema_warmup=None)
    return row


def to_frame(results: Iterable[dict]) -> pd.DataFrame:
    """One row per run (see ``run_row``), methods in a stable reading order."""
    rows = [run_row(r) for r in results]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["experiment", *SETTING, "method", "method_label", "seed", "test_acc"])
    df["method_rank"] = df["method"].map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    return df.sort_values(["experiment", *SETTING, "method_rank", "p", "rho", "method_label", "seed"],
                          na_position="first", kind="stable").reset_index(drop=True)


def history_frame(results: Iterable[dict]) -> pd.DataFrame:
    """Per-epoch history, long: one row per run x epoch, with the run's setting and the
    generalisation gap (train_acc - test_acc) of that epoch."""
    frames = []
    for run in results:
        hist = run.get("history") or []
        if not hist:
            continue
        h = pd.DataFrame(hist)
        meta = run_row(run)
        for key in ["experiment", *SETTING, "method", "method_label", "seed", "attr_threshold", "run_dir"]:
            h[key] = meta[key]
        frames.append(h)
    if not frames:
        return pd.DataFrame(columns=["epoch", "attr_area_ratio", "gen_gap"])
    h = pd.concat(frames, ignore_index=True)
    for col in ("train_acc", "test_acc", "val_acc", "attr_area_ratio"):
        h[col] = pd.to_numeric(h[col] if col in h else math.nan, errors="coerce")
    h["gen_gap"] = h["train_acc"] - h["test_acc"]
    return h


def coverage_frame(results: Iterable[dict]) -> pd.DataFrame:
    """Neuron coverage per conv layer, long: run x threshold x layer x aggregate (mean/union)."""
    rows = []
    for run in results:
        cov = get(run, "metrics.coverage")
        if not cov:
            continue
        meta = run_row(run)
        layers = cov.get("layers", [])
        for t, aggs in (cov.get("per_layer") or {}).items():
            for agg, values in aggs.items():
                for i, v in enumerate(values):
                    rows.append({
                        **{k: meta[k] for k in ["experiment", *SETTING, "method", "method_label", "seed"]},
                        "threshold": float(t), "aggregate": agg, "layer_index": i,
                        "layer": layers[i] if i < len(layers) else str(i), "coverage": _num(v),
                        "layer_output": cov.get("layer_output"),
                    })
    return pd.DataFrame(rows)


def best_profile(df: pd.DataFrame) -> str | None:
    """The most faithful profile present (paper > mini > smoke > anything else)."""
    if df.empty or "profile" not in df:
        return None
    present = list(dict.fromkeys(df["profile"]))
    ranked = sorted(present, key=lambda p: PROFILE_ORDER.index(p) if p in PROFILE_ORDER else len(PROFILE_ORDER))
    return ranked[0]
