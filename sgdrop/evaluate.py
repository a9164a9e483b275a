"""Recompute the final metrics of a run from its checkpoint: `python -m sgdrop.evaluate DIR`.

Prints the metrics as JSON; `--write` also stores them in DIR/result.json (atomically), e.g. after
the metric code changed. `--set eval.KEY=VALUE` changes evaluation settings only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import ConfigError, defaults, flatten, parse_override, unflatten, validate
from .data import DataError, build_datasets
from .io import write_json
from .train import RunError, build_model, final_metrics, select_device


def evaluate_run(run_dir: Path, overrides: list[str] = (), device_name: str = "auto") -> dict:
    checkpoint_path = run_dir / "checkpoint.pt"
    if not checkpoint_path.exists():
        raise RunError(f"no checkpoint.pt in {run_dir}; train the run first (python -m sgdrop.train ... --out {run_dir})")
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    flat = {**flatten(defaults()), **flatten(state["config"])}
    for item in overrides:
        key, value = parse_override(item)
        if not key.startswith("eval."):
            raise ConfigError(f"only eval.* settings may change at evaluation, got {key!r}")
        flat[key] = value
    cfg = validate(unflatten(flat))
    device = select_device(device_name, 0)
    data = build_datasets(cfg["dataset"])
    model = build_model(cfg, len(data.classes), device)
    model.load_state_dict(state["model"])
    model.eval()
    return final_metrics(model, data, cfg, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgdrop.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", action="store_true", help="update DIR/result.json with the new metrics")
    args = parser.parse_args(argv)
    try:
        found = evaluate_run(args.run_dir, args.set, args.device)
    except (ConfigError, DataError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(found, indent=2))
    result_path = args.run_dir / "result.json"
    if args.write and result_path.exists():
        result = json.loads(result_path.read_text())
        result["metrics"].update(found)
        write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
