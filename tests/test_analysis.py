"""Golden and behaviour tests of analysis/ (tables, figures, reported-vs-reproduced).

Fixtures: ``tests/fixtures/results/`` holds hand-made runs (written by
``tests/fixtures/make_fixtures.py``): 02_main_accuracy with vanilla, dropout p=0.2/0.5 and sgdrop x
seeds 0-1 (dropout p=0.2 seed 1 is "in progress": a fake checkpoint.pt, no result.json), 01 with
per-epoch history at two data sizes, 03 with two rho, one overhead benchmark, and examples.npz for
the Grad-CAM overlay. ``tests/fixtures/expected_tables/`` holds the Markdown and CSV tables they give.

After an intended change of the tables, regenerate the expected files and review the diff:

    UPDATE_GOLDEN=1 python -m pytest tests/test_analysis.py     # or: python tests/test_analysis.py
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # analysis/ is a top-level folder, not part of the installed package
    sys.path.insert(0, str(REPO))

from analysis import compare, figures, tables  # noqa: E402
from analysis import results as R  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "results"
EXPECTED = REPO / "tests" / "fixtures" / "expected_tables"


def build_golden(out: Path) -> None:
    """Every table of the fixtures (Markdown + CSV; LaTeX is checked for shape, not text)."""
    tables.main(["--results", str(FIXTURES), "--out", str(out)])
    compare.main(["--results", str(FIXTURES), "--out", str(out)])


def update_golden() -> None:
    shutil.rmtree(EXPECTED, ignore_errors=True)
    EXPECTED.mkdir(parents=True)
    tmp = EXPECTED.parent / ".golden_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_golden(tmp)
    for f in tmp.iterdir():
        if f.suffix in (".md", ".csv"):
            shutil.copy(f, EXPECTED / f.name)
    shutil.rmtree(tmp)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    if os.environ.get("UPDATE_GOLDEN"):
        update_golden()
    out = tmp_path_factory.mktemp("tables")
    build_golden(out)
    return out


# --------------------------------------------------------------------------------------------- tables
def test_golden_tables(built):
    expected = sorted(p.name for p in EXPECTED.iterdir())
    got = sorted(p.name for p in built.iterdir() if p.suffix in (".md", ".csv"))
    assert got == expected
    for name in expected:
        assert (built / name).read_text() == (EXPECTED / name).read_text(), f"{name} differs from the golden file"


def test_latex_is_booktabs(built):
    tex = (built / "accuracy.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"$\pm$" in tex and "02\\_main\\_accuracy" in tex


def test_absent_experiments_write_no_table(built):
    assert not (built / "architectures.md").exists()
    assert not (built / "attribution_methods.md").exists()


def test_partial_results_are_marked(built):
    full = (built / "accuracy_full.md").read_text()
    row = next(line for line in full.splitlines() if "dropout p=0.2" in line)
    assert "1/2" in row and "n=1 of 2 seeds (seed 1 missing)" in row and "in progress" in row
    assert "± —" in row  # no standard error from one seed, and none invented
    assert "02_main_accuracy/dropout_p0.2_s1" in full


def test_missing_method_row_is_marked():
    runs = [r for r in R.load_results(FIXTURES) if r["config"]["run"]["experiment"] == "02_main_accuracy"]
    other = copy.deepcopy([r for r in runs if r["method_label"] == "vanilla"])
    for r in other:  # a second architecture where only vanilla ran
        r["config"]["model"]["arch"] = "vgg16"
    t = tables.table_accuracy_full(R.to_frame(runs + other))
    sg16 = t[(t["arch"] == "vgg16") & (t["method_label"] == "sgdrop")].iloc[0]
    assert sg16["n"] == 0 and sg16["note"] == "not run" and math.isnan(sg16["test_acc_mean"])


def test_p_is_tuned_on_validation_not_test():
    runs = copy.deepcopy([r for r in R.load_results(FIXTURES) if r["method_label"].startswith("dropout")])
    for r in runs:  # p=0.2: better test, worse validation accuracy
        if r["method_label"] == "dropout p=0.2":
            r["metrics"].update(test_acc=0.9, val_acc=0.1)
    t = tables.table_accuracy(R.to_frame(runs))
    assert list(t["method_label"]) == ["dropout p=0.5"]
    assert t["selection"].iloc[0] == "p=0.5 tuned on val (of 0.2, 0.5)"


def test_same_label_different_p_never_averaged():
    runs = copy.deepcopy([r for r in R.load_results(FIXTURES) if r["method_label"].startswith("dropout")])
    for r in runs:
        r["method_label"] = "dropout"
    t = tables.table_accuracy_full(R.to_frame(runs))
    assert sorted(t["method_label"]) == ["dropout [p=0.2]", "dropout [p=0.5]"]


# -------------------------------------------------------------------------------------------- results
def test_unreadable_and_partial_json_are_skipped(tmp_path):
    shutil.copytree(FIXTURES / "02_main_accuracy" / "vanilla_s0", tmp_path / "good")
    (tmp_path / "half").mkdir()
    text = (FIXTURES / "02_main_accuracy" / "vanilla_s1" / "result.json").read_text()
    (tmp_path / "half" / "result.json").write_text(text[: len(text) // 2])  # half-written
    (tmp_path / "nometrics").mkdir()
    (tmp_path / "nometrics" / "result.json").write_text(json.dumps({"config": {}}))
    with pytest.warns(UserWarning, match="skipping"):
        runs = R.load_results(tmp_path)
    assert [Path(r["run_dir"]).name for r in runs] == ["good"]


def test_find_incomplete():
    assert [p.name for p in R.find_incomplete(FIXTURES)] == ["dropout_p0.2_s1"]
    inc = R.incomplete_frame(FIXTURES)
    assert inc.to_dict("records") == [{"run_dir": "02_main_accuracy/dropout_p0.2_s1", "experiment": "02_main_accuracy"}]


def test_frame_columns():
    df = R.to_frame(R.load_results(FIXTURES))
    for col in ["experiment", "profile", "dataset", "image_size", "per_class", "arch", "width", "method",
                "method_label", "rho", "p", "attribution", "saliency", "seed", "test_acc", "val_acc", "train_acc",
                "attr_area_ratio", "cov_last_mean_t0.5", "cov_all_union_t0.75", "wall_s", "ema_decay", "ema_warmup"]:
        assert col in df, col
    assert len(df) == 14 and len(R.load_overhead(FIXTURES)) == 1
    online = df[df["attribution"] == "online"]
    assert len(online) == 1 and online["ema_decay"].isna().all(), "the online mode has no EMA settings"


# -------------------------------------------------------------------------------------------- compare
def _verdicts(root: Path) -> dict[str, str]:
    t = compare.compare(R.load_results(root), R.load_overhead(root), compare.load_claims())
    return dict(zip(t["id"], t["verdict"]))


def test_compare_verdicts_on_fixtures(built):
    assert _verdicts(FIXTURES) == {"R1": "holds", "R2": "holds in direction only", "R3": "holds",
                                   "R4": "holds in direction only", "R5": "holds", "R6": "holds"}
    md = (built / "reported_vs_reproduced.md").read_text()
    assert "imagenette proxy; dataset=imagenet not run" in md


def test_compare_not_run_yet(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "r", ignore=shutil.ignore_patterns("overhead"))
    assert _verdicts(tmp_path / "r")["R5"] == "not run yet"
    (tmp_path / "empty").mkdir()
    assert set(_verdicts(tmp_path / "empty").values()) == {"not run yet"}


def test_verdict_rules_are_the_yaml_thresholds():
    rule = {c["id"]: c["verdict"] for c in compare.load_claims()}
    m = compare.Measured
    assert compare.verdict(rule["R5"], m({"value": 1.6}, "", "")) == "does not hold"
    assert compare.verdict(rule["R5"], m({"value": 1.1}, "", "")) == "holds in direction only"
    assert compare.verdict(rule["R5"], m({"value": 1.33}, "", "")) == "holds"
    assert compare.verdict(rule["R1"], m({"value": 25.0, "lower": math.nan}, "", "")) == "holds in direction only"
    assert compare.verdict(rule["R1"], m({"value": -2.0, "lower": -3.0}, "", "")) == "does not hold"
    assert compare.verdict(rule["R1"], None) == "not run yet"


# -------------------------------------------------------------------------------------------- figures
def test_figures_list_cli():
    out = subprocess.run([sys.executable, "-m", "analysis.figures", "--list"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names == list(figures.FIGURES)
    for required in ["overfocus_dynamics", "overfocus_vs_data", "gradcam_overlays", "coverage_per_layer", "accuracy",
                     "attribution_area", "rho_ablation", "attribution_methods", "architectures", "overhead"]:
        assert required in names


def test_only_accuracy_writes_png(tmp_path, capsys):
    assert figures.main(["--results", str(FIXTURES), "--out", str(tmp_path), "--only", "accuracy"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.pdf", "accuracy.png"]
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_figure_exits_2(tmp_path, capsys):
    assert figures.main(["--results", str(FIXTURES), "--out", str(tmp_path), "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown figure 'nope'" in err and "accuracy" in err and len(err.strip().splitlines()) == 1


def test_everything_builds_quickly_from_fixtures(tmp_path, capsys):
    start = time.perf_counter()
    tables.main(["--results", str(FIXTURES), "--out", str(tmp_path / "tables")])
    assert figures.main(["--results", str(FIXTURES), "--out", str(tmp_path / "figures")]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "attribution_methods: skipped (no 04_attribution_methods results)" in out
    assert "architectures: skipped (no 05_architectures results)" in out
    made = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert made == set(figures.FIGURES) - {"attribution_methods", "architectures"}
    assert elapsed < 60, f"analysis of the fixtures took {elapsed:.1f}s"


def test_figures_with_no_results_skip(tmp_path, capsys):
    assert figures.main(["--results", str(tmp_path), "--out", str(tmp_path / "f")]) == 0
    assert capsys.readouterr().out.count("skipped") == len(figures.FIGURES)


if __name__ == "__main__":
    update_golden()
    print(f"regenerated {EXPECTED}")


def test_readme_blocks_are_filled_from_generated_tables(tmp_path):
    from analysis.readme import splice
    (tmp_path / "accuracy.md").write_text("# Title\n\n| a |\n|---|\n| 1 |\n", encoding="utf-8")
    text = "intro\n<!-- table:accuracy -->\nold\n<!-- /table -->\n<!-- table:nosuch -->\nkeep\n<!-- /table -->\n"
    filled, missing = splice(text, tmp_path)
    assert "| 1 |" in filled and "old" not in filled and "keep" in filled
    assert missing == ["nosuch"]
