"""Run configuration: default.yaml, overridden by a YAML file, overridden by ``KEY=VALUE`` strings.

A run is one nested dict whose keys are exactly those of ``default.yaml``. ``load_config`` merges the
three layers and ``validate`` checks the result against the defaults (which keys exist and their types)
and against ``RULES`` (allowed values), so that a typo fails at start-up with a one-line message instead
of hours into training.

    python -m sgdrop.config --config my.yaml --set train.epochs=3   # print the resolved config
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

DEFAULTS_PATH = Path(__file__).with_name("default.yaml")


class ConfigError(ValueError):
    """A problem with a run configuration; the message is one line naming the key and the fix."""


# ----------------------------------------------------------------------------------------------------
# Value rules. Types come from the default values; these add what a default cannot say.
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A number between ``lo`` and ``hi``; ``None`` means unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, x: float) -> bool:
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    """A string from ``choices``, or one matching ``pattern`` (shown as ``pattern_name``, e.g. cuda:N)."""

    choices: tuple[str, ...]
    pattern: str | None = None
    pattern_name: str = ""

    def ok(self, x: str) -> bool:
        return x in self.choices or (self.pattern is not None and re.fullmatch(self.pattern, x) is not None)

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices + ((self.pattern_name,) if self.pattern_name else ()))


def between(lo: float, hi: float, ends: str = "()") -> Range:
    """Interval written as in maths: ``between(0, 1, "[)")`` is 0 <= x < 1."""
    return Range(lo, hi, lo_open=ends[0] == "(", hi_open=ends[1] == ")")


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(lo=0), Range(lo=1), Range(lo=0, lo_open=True)
UNIT_OPEN = between(0, 1, "()")  # shares that are meaningless at 0 and at 1
UNIT_RATE = between(0, 1, "[)")  # drop/decay rates: 0 disables, 1 would drop or freeze everything
UNIT_SHARE = between(0, 1, "(]")  # shares of a set that may take all of it

# Allowed values per dotted key. A rule on a list key applies to every entry; null always passes here
# (whether null is allowed at all is a matter of type, see NULLABLE_TYPES).
RULES: dict[str, Range | OneOf] = {
    "dataset.name": OneOf(("imagenette", "cifar10", "imagenet", "folder", "synthetic")),
    "dataset.image_size": Range(lo=16),
    "dataset.per_class": AT_LEAST_1,
    "dataset.fraction": UNIT_SHARE,
    "dataset.val_per_class": AT_LEAST_0,
    "dataset.num_classes": AT_LEAST_1,
    "dataset.synthetic_pool_per_class": AT_LEAST_1,
    "dataset.synthetic_test_per_class": AT_LEAST_1,
    "model.arch": OneOf(("vgg11", "vgg16", "resnet18", "resnet50", "convnext_tiny")),
    "model.width": POSITIVE,
    "model.head_dropout": UNIT_RATE,
    "method.name": OneOf(("vanilla", "dropout", "spatial_dropout", "random", "rsc", "dropblock", "sgdrop")),
    "method.rho": UNIT_OPEN,
    "method.p": UNIT_RATE,
    "method.ema_decay": UNIT_RATE,
    "method.attribution": OneOf(("ema", "online")),
    "method.saliency": OneOf(("grad_x_activation", "gradient", "gradcam")),
    "method.block_size": AT_LEAST_1,
    "method.batch_fraction": UNIT_SHARE,
    "train.epochs": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.lr": POSITIVE,
    "train.optimizer": OneOf(("sgd", "adamw")),
    "train.momentum": UNIT_RATE,
    "train.weight_decay": AT_LEAST_0,
    "train.label_smoothing": UNIT_RATE,
    "train.warmup_epochs": AT_LEAST_0,
    "train.device": OneOf(("auto", "cpu", "cuda"), pattern=r"cuda:\d+", pattern_name="cuda:N"),
    "train.num_threads": AT_LEAST_1,
    "eval.attr_threshold": UNIT_OPEN,
    "eval.coverage_thresholds": UNIT_OPEN,
    "eval.attr_subset": AT_LEAST_0,
    "eval.examples": AT_LEAST_0,
    "eval.batch_size": AT_LEAST_1,
    "eval.history_subset": AT_LEAST_1,
}

# Keys that may be null: (type when not null). Required for every key whose default is null, since its
# type cannot be read from the default; per_class is here because null means "all images".
NULLABLE_TYPES: dict[str, type] = {
    "run.experiment": str,
    "run.profile": str,
    "dataset.root": str,
    "dataset.per_class": int,
    "dataset.fraction": float,
    "dataset.cache_dir": str,
    "train.num_threads": int,
    "eval.history_subset": int,
}

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}

# YAML 1.1 (PyYAML) reads 1e-3 as a string because it lacks a dot; accept it where a number is expected.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


# ----------------------------------------------------------------------------------------------------
# Dict helpers
# ----------------------------------------------------------------------------------------------------


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"train.epochs": 30, ...}`` in the same key order. Empty sub-dicts vanish."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """Inverse of ``flatten``. A key that is both a value and a section (``a`` and ``a.b``) is an error."""
    nested: dict = {}
    for dotted, value in flat.items():
        *sections, leaf = dotted.split(".")
        node = nested
        for i, section in enumerate(sections):
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{'.'.join(sections[: i + 1])}' is both a value and a section")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"config key '{dotted}' is both a value and a section")
        node[leaf] = value
    return nested


@functools.lru_cache(maxsize=1)
def _defaults_flat() -> dict[str, Any]:
    """default.yaml, flattened; parsed once (callers get copies)."""
    return flatten(_read_yaml_mapping(DEFAULTS_PATH))


def defaults() -> dict:
    """A fresh copy of the default configuration (not validated; see ``load_config()``)."""
    return unflatten(copy.deepcopy(_defaults_flat()))


def _show(value: Any) -> str:
    """A value as a user would write it: strings quoted, None/True as null/true."""
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, default=str)


def _ignored(key: str, ignore_prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p) for p in ignore_prefixes)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _expected_type(key: str) -> tuple[type, bool]:
    """(base type, nullable) of a known key: from NULLABLE_TYPES, else from its default value."""
    if key in NULLABLE_TYPES:
        return NULLABLE_TYPES[key], True
    default = _defaults_flat()[key]
    if default is None:  # a programming error in this file, not a user error
        raise AssertionError(f"default of '{key}' is null: add it to NULLABLE_TYPES")
    return type(default), False


def _coerce(key: str, value: Any, kind: type, nullable: bool) -> Any:
    """Check ``value`` has type ``kind`` (promoting int -> float); return it, maybe converted."""
    if value is None and nullable:
        return None
    if kind is list:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, list):  # entries take the type of the default's first entry
            default = _defaults_flat()[key]
            if not default:
                return value
            return [_coerce(f"{key}[{i}]", v, type(default[0]), False) for i, v in enumerate(value)]
    elif kind is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value  # bool is a subclass of int, but `epochs: true` is surely a mistake
    wanted = _TYPE_NAMES.get(kind, kind.__name__) + (" or null" if nullable else "")
    raise ConfigError(f"config key '{key}' expects {wanted}, got {_show(value)}")


def _check_rule(key: str, value: Any) -> None:
    """Apply RULES[key] to a value (or to every entry of a list)."""
    rule = RULES.get(key)
    if rule is None or value is None:
        return
    values = value if isinstance(value, list) else [value]
    if not all(rule.ok(v) for v in values):
        what = "have every entry" if isinstance(value, list) else "be"
        raise ConfigError(f"config key '{key}' must {what} {rule.describe()}, got {_show(value)}")


def _check_keys(flat: dict[str, Any]) -> None:
    """Reject unknown keys (suggesting the closest valid one), sections given a value, and missing keys."""
    known = _defaults_flat()
    sections = {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}
    for key in flat:
        if key in known:
            continue
        if key in sections:
            raise ConfigError(f"config key '{key}' is a section and expects a mapping of its keys, "
                              f"got {_show(flat[key])}")
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "valid sections: " + ", ".join(sorted(
            {k.split(".")[0] for k in known}))
        raise ConfigError(f"unknown config key '{key}' ({hint})")
    missing = [k for k in known if k not in flat]
    if missing:
        raise ConfigError(f"config key '{missing[0]}' is missing (start from load_config(), which fills "
                          f"in default.yaml)")


def _check_combinations(flat: dict[str, Any]) -> None:
    """Rules that involve two keys."""
    if flat["dataset.per_class"] is not None and flat["dataset.fraction"] is not None:
        raise ConfigError("config keys 'dataset.per_class' and 'dataset.fraction' are alternatives, both are "
                          "set; set dataset.per_class=null to use dataset.fraction")


def _validate_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """Validate a complete flat config; return a new flat dict with ints promoted to floats."""
    _check_keys(flat)
    checked = {}
    for key in _defaults_flat():  # default.yaml order, so printed configs read like the defaults
        checked[key] = _coerce(key, flat[key], *_expected_type(key))
        _check_rule(key, checked[key])
    _check_combinations(checked)
    return checked


def validate(cfg: dict) -> dict:
    """Check a complete nested config; return a validated copy (ints promoted where floats are expected).

    Raises ConfigError (one line) for unknown or missing keys, wrong types and out-of-range values.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(cfg).__name__}")
    return unflatten(_validate_flat(flatten(copy.deepcopy(cfg))))


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def _read_yaml_mapping(path: str | Path) -> dict:
    """Load a YAML file that must hold a mapping (an empty file counts as an empty mapping)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping such as 'train: {{epochs: 5}}', "
                          f"got a {type(data).__name__}")
    return data


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML parse error, squeezed onto one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ``("train.lr", 0.1)``; the value is read as YAML (3, 0.5, true, null, [1, 2]).

    For string-typed keys the raw text is kept (unless it reads as null) so that a tag such as
    ``run.experiment=01`` stays "01" instead of becoming the integer 1.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must have the form KEY=VALUE, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {_one_line(exc)}") from None
    if key in _defaults_flat() and _expected_type(key)[0] is str and value is not None and not isinstance(value, str):
        value = raw.strip()
    return key, value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """default.yaml <- the YAML file at ``path`` (optional) <- ``KEY=VALUE`` overrides, validated."""
    if isinstance(overrides, str):  # a lone string would otherwise be split into characters
        overrides = [overrides]
    flat = copy.deepcopy(_defaults_flat())
    if path is not None:
        flat.update(flatten(_read_yaml_mapping(path)))
    for text in overrides:
        key, value = parse_override(text)
        flat.update(flatten({key: value}))  # a mapping value sets several keys under `key`
    return unflatten(_validate_flat(flat))


# ----------------------------------------------------------------------------------------------------
# Comparing, naming and printing configs
# ----------------------------------------------------------------------------------------------------


def config_diff(a: dict, b: dict, ignore_prefixes: Sequence[str] = ("run.",)) -> list[str]:
    """Differences between two configs as ``"train.epochs: 30 -> 5"`` lines, sorted by key."""
    fa, fb = flatten(a), flatten(b)
    missing = object()
    lines = []
    for key in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if _ignored(key, ignore_prefixes) or va == vb:
            continue
        show = lambda v: "<missing>" if v is missing else _show(v)  # noqa: E731
        lines.append(f"{key}: {show(va)} -> {show(vb)}")
    return lines


def config_hash(cfg: dict, ignore_prefixes: Sequence[str] = ("run.",)) -> str:
    """Short stable hex id of a config (10 chars of sha1 over canonical JSON), ignoring run.* keys.

    Hash validated configs: 1 and 1.0 hash differently, and validate() makes them the same.
    """
    flat = {k: v for k, v in flatten(cfg).items() if not _ignored(k, ignore_prefixes)}
    canonical = json.dumps(flat, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:10]


class _Dumper(yaml.SafeDumper):
    """Block-style sections with inline lists, so a printed config reads like default.yaml."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def to_yaml(cfg: dict) -> str:
    """YAML text of a config (loadable by ``load_config``), keys in their given order."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Print the resolved config as YAML, or the one-line error (exit status 2)."""
    parser = argparse.ArgumentParser(prog="python -m sgdrop.config", description=main.__doc__)
    parser.add_argument("--config", help="YAML file overriding default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set train.epochs=3 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_yaml(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
