"""Reported vs reproduced: one row per claim of the paper, with a verdict computed from the runs.

    python -m analysis.compare [--results results/] [--out RESULTS/tables] [--claims analysis/reported.yaml]

The claims, their reported values and the verdict rules live in ``reported.yaml`` (data, not code).
A claim's ``measure`` (a function in ``MEASURES``) turns the runs into named quantities ("value",
"lower" = value - se, ...); ``verdict`` applies the yaml's conditions to them. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from . import results as R
from sgdrop.io import write_text

from .tables import DASH, group_stats, overfocus_frame, select_tuned

CLAIMS_FILE = Path(__file__).with_name("reported.yaml")
VERDICTS = ("holds", "holds in direction only", "does not hold", "not run yet")
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass
class Measured:
    """What a measure found: quantities for the rule, their text with spread, and where they come from."""

    values: dict[str, float]
    text: str
    source: str
    caveat: str = ""


def load_claims(path: str | Path = CLAIMS_FILE) -> list[dict]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))["claims"]


# ------------------------------------------------------------------------------------- selecting runs
def _pick(df: pd.DataFrame, experiment: str, prefer: dict | None, need: list[str],
          largest: str | None = None) -> tuple[pd.DataFrame, str]:
    """Runs of ``experiment`` in one setting that has every method in ``need``: the most faithful
    profile, the ``prefer``-red config values when they ran (else a proxy caveat), the largest value
    of column ``largest`` if given (NaN, e.g. per_class = all images, counts as largest), then the
    setting with most runs. Returns (runs, caveat); empty runs when nothing fits."""
    df = df[df["experiment"] == experiment] if not df.empty else df
    if df.empty:
        return df, ""
    df = df.assign(_setting=df[R.SETTING].astype(str).agg(" ".join, axis=1))
    ok = df.groupby("_setting")["method"].agg(lambda m: set(need) <= set(m))
    df = df[df["_setting"].isin(ok[ok].index)]
    if df.empty:
        return df, ""
    df = df[df["profile"] == R.best_profile(df)]
    caveats = []
    for key, want in (prefer or {}).items():
        if (df[key] == want).any():
            df = df[df[key] == want]
        else:
            caveats.append(f"{'/'.join(sorted(map(str, df[key].unique())))} proxy; {key}={want} not run")
    if largest is not None:
        df = df[df[largest].isna()] if df[largest].isna().any() else df[df[largest] == df[largest].max()]
    df = df[df["_setting"] == df["_setting"].value_counts().index[0]]
    return df.drop(columns="_setting"), "; ".join(caveats)


def _source(df: pd.DataFrame, labels: tuple[str, ...] = ()) -> str:
    """Profile, setting and number of runs behind a reproduced value (only ``labels``' runs if given)."""
    df = df[df["method_label"].isin(labels)] if labels else df
    row = df.iloc[0]
    per_class = "all" if pd.isna(row["per_class"]) else int(row["per_class"])
    return (f"profile {row['profile']}, {row['dataset']} {row['image_size']}px {per_class}/class, {row['arch']}; "
            f"{len(df)} run{'s' if len(df) != 1 else ''}")


def _stats(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    return group_stats(df, metrics).set_index("method_label")


def _label_of(stats: pd.DataFrame, method: str) -> str | None:
    """The row of a method's default configuration (label == method name) or its first variant."""
    rows = stats[stats["method"] == method]
    if rows.empty:
        return None
    return method if method in rows.index else rows.index[0]


def _diff(a: pd.Series, b: pd.Series, metric: str, scale: float = 1.0) -> tuple[float, float]:
    """Difference of two independent means, with the standard error of the difference."""
    value = (a[f"{metric}_mean"] - b[f"{metric}_mean"]) * scale
    se = math.hypot(a[f"{metric}_se"], b[f"{metric}_se"]) * scale
    return value, se


def _ratio(a: pd.Series, b: pd.Series, metric: str) -> tuple[float, float]:
    """Ratio of two means, standard error by the delta method."""
    ma, mb = a[f"{metric}_mean"], b[f"{metric}_mean"]
    value = ma / mb
    return value, value * math.hypot(a[f"{metric}_se"] / ma, b[f"{metric}_se"] / mb)


def _n(stats: pd.DataFrame, *labels: str) -> str:
    return ", ".join(f"{lab} n={int(stats.loc[lab, 'n'])}" for lab in labels)


# ------------------------------------------------------------------------------------------- measures
def _treatment_vs_baseline(df, p, metrics: list[str]):
    """(runs, caveat, per-label stats of ``metrics``, treatment label, baseline label) of the claim's
    two methods, or None when neither ran."""
    runs, caveat = _pick(df, p["experiment"], p.get("prefer"), [p["treatment"], p["baseline"]])
    if runs.empty:
        return None
    s = _stats(runs, metrics)
    return runs, caveat, s, _label_of(s, p["treatment"]), _label_of(s, p["baseline"])


def accuracy_gain(df, results, overhead, p) -> Measured | None:
    found = _treatment_vs_baseline(df, p, ["test_acc"])
    if found is None:
        return None
    runs, caveat, s, t, b = found
    value, se = _diff(s.loc[t], s.loc[b], "test_acc", 100)
    text = (f"{value:+.1f} ± {se:.1f} points ({s.loc[t, 'test_acc_mean']:.1%} vs "
            f"{s.loc[b, 'test_acc_mean']:.1%}; {_n(s, t, b)})")
    return Measured({"value": value, "se": se, "lower": value - se}, text, _source(runs, (t, b)), caveat)


def attribution_ratio(df, results, overhead, p) -> Measured | None:
    found = _treatment_vs_baseline(df, p, ["attr_area_ratio"])
    if found is None:
        return None
    runs, caveat, s, t, b = found
    value, se = _ratio(s.loc[t], s.loc[b], "attr_area_ratio")
    thr = "/".join(f"{x:g}" for x in sorted(runs["attr_threshold"].dropna().unique()))
    text = (f"{value:.2f}x ± {se:.2f} ({s.loc[t, 'attr_area_ratio_mean']:.3f} vs "
            f"{s.loc[b, 'attr_area_ratio_mean']:.3f} at Grad-CAM >= {thr}; {_n(s, t, b)})")
    return Measured({"value": value, "se": se}, text, _source(runs, (t, b)), caveat)


def coverage_ratio(df, results, overhead, p) -> Measured | None:
    runs, caveat = _pick(df, p["experiment"], p.get("prefer"), [p["treatment"], p["baseline"]])
    t_key, agg = f"t{float(p['threshold'])}", p["aggregate"]
    last, every = f"cov_last_{agg}_{t_key}", f"cov_all_{agg}_{t_key}"
    if runs.empty or last not in runs or runs[last].isna().all():
        return None
    other = "union" if agg == "mean" else "mean"
    cols = [last, every] + [c for c in (f"cov_last_{other}_{t_key}",) if c in runs]
    s = _stats(runs, cols)
    t, b = _label_of(s, p["treatment"]), _label_of(s, p["baseline"])
    value, se = _ratio(s.loc[t], s.loc[b], last)
    rel = abs(s.loc[t, f"{every}_mean"] / s.loc[b, f"{every}_mean"] - 1)
    text = (f"last layer {s.loc[b, f'{last}_mean']:.1%} -> {s.loc[t, f'{last}_mean']:.1%} ({value:.2f}x ± {se:.2f}); "
            f"all layers {s.loc[b, f'{every}_mean']:.1%} -> {s.loc[t, f'{every}_mean']:.1%} ({rel:.0%} apart); "
            f"t={float(p['threshold']):g}, {agg} over inputs")
    if len(cols) == 3:
        text += (f" (union: {s.loc[b, f'{cols[2]}_mean']:.1%} -> {s.loc[t, f'{cols[2]}_mean']:.1%})"
                 if agg == "mean" else "")
    return Measured({"value": value, "se": se, "all_layer_rel_diff": rel}, f"{text}; {_n(s, t, b)}",
                    _source(runs, (t, b)), caveat)


def vs_tuned(df, results, overhead, p) -> Measured | None:
    """Treatment against the rival family with its drop rate tuned on the validation split."""
    runs, caveat = _pick(df, p["experiment"], p.get("prefer"), [p["treatment"], p["rival"]])
    if runs.empty:
        return None
    s = select_tuned(group_stats(runs, ["test_acc", "val_acc"])).set_index("method_label")
    t, r = _label_of(s, p["treatment"]), _label_of(s, p["rival"])
    value, se = _diff(s.loc[t], s.loc[r], "test_acc", 100)
    rho = s.loc[t, "rho"]
    text = (f"{value:+.1f} ± {se:.1f} points ({t}{f' rho={rho:g}' if pd.notna(rho) else ''} "
            f"{s.loc[t, 'test_acc_mean']:.1%} vs {r} {s.loc[r, 'test_acc_mean']:.1%}, "
            f"{s.loc[r, 'selection'] or 'single p'}; {_n(s, t, r)})")
    return Measured({"value": value, "se": se, "lower": value - se}, text, _source(runs, (t, r)), caveat)


def overhead_ratio(df, results, overhead, p) -> Measured | None:
    found = [(o, o["methods"][p["method"]]["ratio_to_vanilla"]) for o in overhead if p["method"] in o["methods"]]
    if not found:
        return None
    preferred = [f for f in found if f[0].get("config", {}).get("device") == p.get("prefer_device")]
    caveat = "" if preferred or not p.get("prefer_device") else f"device={p['prefer_device']} not run"
    chosen, value = (preferred or found)[0]
    cfg = chosen.get("config", {})
    values = [v for _, v in found]
    spread = f" (range {min(values):.2f}-{max(values):.2f} over {len(values)} benchmarks)" if len(values) > 1 else ""
    text = f"{value:.2f}x{spread}"
    source = (f"{Path(chosen['path']).name}: {cfg.get('arch')} {cfg.get('image_size')}px, batch {cfg.get('batch_size')}, "
              f"{cfg.get('device')}")
    return Measured({"value": value}, text, source, caveat)


def overfocus(df, results, overhead, p) -> Measured | None:
    """Final / initial attribution ratio and final gap, at the largest amount of data that ran."""
    runs = overfocus_frame(results)
    if runs.empty:
        return None
    runs, caveat = _pick(runs, p["experiment"], p.get("prefer"), [], largest="per_class")
    if runs.empty:
        return None
    s = _stats(runs, ["attr_initial", "attr_final", "attr_final_over_initial", "gen_gap"]).iloc[0]
    value, gap = s["attr_final_over_initial_mean"], s["gen_gap_mean"]
    gap_se = DASH if pd.isna(s["gen_gap_se"]) else f"{s['gen_gap_se']:.2f}"
    text = (f"{s['attr_initial_mean']:.3f} -> {s['attr_final_mean']:.3f} (x{value:.3f}) by epoch "
            f"{int(runs['last_epoch'].max())}; gap {gap:.2f} ± {gap_se} (n={int(s['n'])})")
    return Measured({"value": value, "gap": gap}, text, _source(runs), caveat)


MEASURES = {f.__name__: f for f in (accuracy_gain, attribution_ratio, coverage_ratio, vs_tuned, overhead_ratio,
                                    overfocus)}


# -------------------------------------------------------------------------------------------- verdict
def _holds(conditions: list[dict], values: dict[str, float]) -> bool:
    def ok(c):
        x = values.get(c["of"], math.nan)
        return x is not None and not pd.isna(x) and OPS[c["op"]](x, c["value"])
    return all(ok(c) for c in conditions)


def verdict(rule: dict, measured: Measured | None) -> str:
    """One of VERDICTS, from the yaml rule and the measured quantities."""
    if measured is None:
        return "not run yet"
    if _holds(rule["holds"], measured.values):
        return "holds"
    if _holds(rule.get("direction", []), measured.values):
        return "holds in direction only"
    return "does not hold"


def rule_text(rule: dict) -> str:
    def conj(cs):
        return " and ".join(f"{c['of']} {c['op']} {c['value']:g}" for c in cs)
    text = f"holds if {conj(rule['holds'])}"
    if rule.get("direction"):
        text += f"; direction only if {conj(rule['direction'])}"
    return text


def compare(results: list[dict], overhead: list[dict], claims: list[dict]) -> pd.DataFrame:
    """One row per claim: reported, reproduced (with spread), where from, verdict, rule. Pure."""
    df = R.to_frame(results)
    rows = []
    for c in claims:
        m = MEASURES[c["measure"]](df, results, overhead, c.get("params", {}))
        reproduced = DASH if m is None else (f"{m.text} [{m.caveat}]" if m.caveat else m.text)
        rows.append({"id": c["id"], "claim": c["claim"], "reported": c["reported"], "reproduced": reproduced,
                     "from": DASH if m is None else m.source, "verdict": verdict(c["verdict"], m),
                     "rule": rule_text(c["verdict"]), "units": c.get("units", ""), "source": c["source"],
                     "value": math.nan if m is None else m.values.get("value", math.nan)})
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    shown = table[["id", "claim", "reported", "reproduced", "from", "verdict"]]
    lines = ["# Reported vs reproduced", "",
             "Paper: arXiv:2409.17370. Verdicts are computed by analysis/compare.py from the runs, with the "
             "rules of analysis/reported.yaml; spreads are ± one standard error over seeds.", "",
             shown.to_markdown(index=False, disable_numparse=True), "", "Rules and units:", ""]
    lines += [f"- {r.id}: {r.rule}. value = {r.units}. Source: {r.source}." for r in table.itertuples()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="folder searched for result.json (default results/)")
    ap.add_argument("--out", default=None, help="output folder (default RESULTS/tables)")
    ap.add_argument("--claims", default=str(CLAIMS_FILE), help="claims and verdict rules (yaml)")
    args = ap.parse_args(argv)
    root = Path(args.results)
    out = Path(args.out) if args.out else root / "tables"
    table = compare(R.load_results(root), R.load_overhead(root), load_claims(args.claims))
    write_text(out / "reported_vs_reproduced.md", to_markdown(table))
    write_text(out / "reported_vs_reproduced.csv", table.to_csv(index=False, lineterminator="\n"))
    for r in table.itertuples():
        print(f"{r.id}: {r.verdict}")
    print(f"wrote {out / 'reported_vs_reproduced.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
