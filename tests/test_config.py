"""Tests of sgdrop.config: merging, override parsing, validation messages, diff/hash and the CLI."""

import subprocess
import sys

import pytest
import yaml

from sgdrop.config import (DEFAULTS_PATH, NULLABLE_TYPES, RULES, ConfigError, config_diff, config_hash,
                           defaults, flatten, load_config, main, to_yaml, unflatten, validate)


def error_of(**kwargs) -> str:
    """The ConfigError message load_config raises for these arguments (and check it is one line)."""
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def set_(*overrides) -> str:
    return error_of(overrides=list(overrides))


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults_validate_and_ship_with_package():
    assert DEFAULTS_PATH.name == "default.yaml" and DEFAULTS_PATH.is_file()
    cfg = load_config()
    assert cfg == validate(defaults())
    assert cfg["train"]["epochs"] == 30 and cfg["method"]["name"] == "vanilla"


def test_tables_name_only_real_keys():
    keys = flatten(defaults())
    assert set(RULES) <= set(keys)
    assert set(NULLABLE_TYPES) <= set(keys)
    assert all(k in NULLABLE_TYPES for k, v in keys.items() if v is None)


# -------------------------------------------------------------------------------------- merging, parsing


def test_file_then_overrides_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 5\n  batch_size: 16\nmethod: {name: sgdrop}\n")
    cfg = load_config(path, ["train.epochs=3"])
    assert cfg["train"]["epochs"] == 3  # override beats file
    assert cfg["train"]["batch_size"] == 16  # file beats default
    assert cfg["train"]["lr"] == 0.05  # default kept
    assert cfg["method"]["name"] == "sgdrop"
    assert load_config(str(path))["train"]["epochs"] == 5  # str path works too


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config(path) == load_config()


def test_override_values_are_parsed_as_yaml():
    cfg = load_config(overrides=[
        "train.epochs=3", "method.rho=0.5", "train.augment=false", "dataset.per_class=null",
        "eval.coverage_thresholds=[0.25, 0.5]", "train.device=cuda:1", "dataset.root=/data/x",
    ])
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["method"]["rho"] == 0.5
    assert cfg["train"]["augment"] is False
    assert cfg["dataset"]["per_class"] is None
    assert cfg["eval"]["coverage_thresholds"] == [0.25, 0.5]
    assert cfg["train"]["device"] == "cuda:1"
    assert cfg["dataset"]["root"] == "/data/x"


def test_override_keeps_strings_for_string_keys_and_reads_scientific_floats():
    cfg = load_config(overrides=["run.experiment=01", "train.lr=1e-3", "run.profile=null"])
    assert cfg["run"]["experiment"] == "01"  # not the integer 1
    assert cfg["train"]["lr"] == 0.001  # PyYAML alone reads 1e-3 as a string
    assert cfg["run"]["profile"] is None


def test_int_promoted_to_float_for_float_keys():
    cfg = load_config(overrides=["train.lr=1", "model.width=1", "eval.coverage_thresholds=[0.5]"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert isinstance(cfg["model"]["width"], float)
    raw = defaults()
    raw["train"]["weight_decay"] = 0
    assert isinstance(validate(raw)["train"]["weight_decay"], float)


def test_validate_does_not_mutate_its_input():
    raw = defaults()
    raw["train"]["lr"] = 1
    validate(raw)
    assert isinstance(raw["train"]["lr"], int)


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_key_suggests_closest():
    assert set_("method.rh=0.1") == "unknown config key 'method.rh' (did you mean 'method.rho'?)"
    assert "did you mean 'train.epochs'?" in set_("trian.epochs=3")


def test_unknown_nested_section(tmp_path):
    message = set_("optim.lr=0.1")
    assert "unknown config key 'optim.lr'" in message
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  schedule:\n    kind: cosine\n")
    assert "unknown config key 'train.schedule.kind'" in error_of(path=path)
    assert "is a section" in set_("train=3")


def test_unknown_key_in_validate():
    raw = defaults()
    raw["model"]["archh"] = "vgg11"
    with pytest.raises(ConfigError, match=r"did you mean 'model.arch'\?"):
        validate(raw)


def test_missing_key_in_validate():
    raw = defaults()
    del raw["train"]["epochs"]
    with pytest.raises(ConfigError, match="'train.epochs' is missing"):
        validate(raw)


def test_wrong_type():
    assert set_("train.epochs=three") == "config key 'train.epochs' expects an integer, got 'three'"
    assert "expects an integer, got 2.5" in set_("train.batch_size=2.5")
    assert "expects true or false" in set_("train.augment=yes please")
    assert "expects a number" in set_("train.lr=fast")
    assert "expects a list" in set_("eval.coverage_thresholds=0.5")
    assert "expects an integer or null" in set_("dataset.per_class=all")


def test_bool_is_not_an_int():
    assert set_("train.epochs=true") == "config key 'train.epochs' expects an integer, got true"
    assert "expects a number" in set_("train.lr=true")


@pytest.mark.parametrize("rho", ["0", "1", "1.5"])
def test_rho_out_of_range(rho):
    assert set_(f"method.rho={rho}") == f"config key 'method.rho' must be in (0, 1), got {float(rho)}"


def test_other_ranges():
    assert "'method.p' must be in [0, 1), got 1.0" in set_("method.p=1.0")
    assert load_config(overrides=["method.p=0"])["method"]["p"] == 0.0
    assert "must be >= 16" in set_("dataset.image_size=8")
    assert "must be >= 1" in set_("train.epochs=0")
    assert "must be > 0" in set_("train.lr=0")
    assert "every entry in (0, 1)" in set_("eval.coverage_thresholds=[0.5, 1]")
    assert load_config(overrides=["dataset.val_per_class=0"])["dataset"]["val_per_class"] == 0
    assert load_config(overrides=["method.batch_fraction=1"])["method"]["batch_fraction"] == 1.0


def test_bad_arch_lists_valid_ones():
    message = set_("model.arch=vgg19")
    assert "'model.arch'" in message and "'vgg19'" in message
    for arch in ("vgg11", "vgg16", "resnet18", "resnet50", "convnext_tiny"):
        assert arch in message


def test_bad_method_and_device():
    assert "must be one of vanilla, dropout" in set_("method.name=cutout")
    assert "cuda:N" in set_("train.device=gpu")


def test_per_class_and_fraction_are_exclusive():
    assert "set dataset.per_class=null" in set_("dataset.fraction=0.5")
    cfg = load_config(overrides=["dataset.per_class=null", "dataset.fraction=0.5"])
    assert cfg["dataset"]["fraction"] == 0.5


def test_missing_file(tmp_path):
    message = error_of(path=tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "does not exist" in message


def test_non_mapping_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "must hold a mapping" in error_of(path=path)


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [1, 2\n")
    assert "not valid YAML" in error_of(path=path)


def test_override_without_equals():
    message = set_("train.epochs")
    assert "KEY=VALUE" in message and "'train.epochs'" in message
    assert "KEY=VALUE" in set_("=3")


# --------------------------------------------------------------------------------- flatten, diff, hash


def test_flatten_unflatten_round_trip():
    cfg = load_config()
    flat = flatten(cfg)
    assert flat["train.epochs"] == 30 and flat["eval.coverage_thresholds"] == [0.25, 0.5, 0.75]
    assert unflatten(flat) == cfg
    with pytest.raises(ConfigError):
        unflatten({"a": 1, "a.b": 2})


def test_config_diff():
    a = load_config()
    b = load_config(overrides=["train.epochs=5", "method.name=sgdrop", "run.experiment=x"])
    assert config_diff(a, b) == ["method.name: 'vanilla' -> 'sgdrop'", "train.epochs: 30 -> 5"]
    assert "run.experiment: null -> 'x'" in config_diff(a, b, ignore_prefixes=())
    assert config_diff(a, a) == []
    partial = unflatten({k: v for k, v in flatten(a).items() if k != "train.seed"})
    assert config_diff(partial, a) == ["train.seed: <missing> -> 0"]


def test_config_hash_stable_and_ignores_run():
    cfg = load_config()
    digest = config_hash(cfg)
    assert len(digest) == 10 and int(digest, 16) >= 0
    reordered = {section: dict(reversed(list(values.items()))) for section, values in reversed(cfg.items())}
    assert config_hash(reordered) == digest
    assert config_hash(load_config(overrides=["run.experiment=x", "run.profile=smoke"])) == digest
    assert config_hash(load_config(overrides=["train.epochs=5"])) != digest
    assert config_hash(load_config(overrides=["train.lr=1"])) == config_hash(load_config(overrides=["train.lr=1.0"]))


def test_to_yaml_round_trips(tmp_path):
    cfg = load_config(overrides=["run.experiment=01", "eval.coverage_thresholds=[0.5]"])
    text = to_yaml(cfg)
    assert "coverage_thresholds: [0.5]" in text
    assert yaml.safe_load(text) == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_config(path) == cfg


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sgdrop.config", *args], capture_output=True, text=True)


def test_cli_prints_resolved_config(capsys):
    assert main(["--set", "train.epochs=3"]) == 0  # in-process: a subprocess pays for importing torch
    assert yaml.safe_load(capsys.readouterr().out)["train"]["epochs"] == 3


def test_cli_error_is_one_line_and_exit_2():
    result = run_cli("--set", "method.rh=0.1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "error: unknown config key 'method.rh' (did you mean 'method.rho'?)"
