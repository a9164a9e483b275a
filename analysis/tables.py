"""Tables of the reproduction, as Markdown, CSV and LaTeX (booktabs).

    python -m analysis.tables [--results results/] [--out results/tables/]

Each ``table_*`` function is pure: run frame (``results.to_frame``) in, numeric DataFrame out, one
row per setting x method, every metric as a ``<metric>_mean`` / ``<metric>_se`` pair (standard error
of the mean over seeds, std(ddof=1)/sqrt(n); empty for n=1), plus ``n``, ``n_expected`` and ``note``.
The CSV is that frame; Markdown and LaTeX show ``mean ± se`` strings (``format_table``).

Missing runs are marked, never hidden: the seeds expected of a row are the union of the seeds seen in
its experiment and profile, and the methods expected of a setting are those seen in any setting of
the same experiment and profile. A row short of seeds says so ("n=1 of 2 seeds ...") and says when
runs of its experiment are still in progress (folders with checkpoint.pt but no result.json).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sgdrop.io import write_text

from . import results as R
from .results import EXPERIMENTS, SETTING

GROUP = ["experiment", *SETTING, "method", "method_label"]
DASH = "—"


@dataclass
class Table:
    """A built table: numeric ``data`` (CSV), how to show it, and notes printed under it."""

    name: str
    title: str
    description: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)


# How each metric is shown: header, scale, decimals. Accuracies and coverages in percent.
METRICS = {
    "test_acc": ("Test acc. (%)", 100, 1),
    "val_acc": ("Val. acc. (%)", 100, 1),
    "train_acc": ("Train acc. (%)", 100, 1),
    "gen_gap": ("Train-test gap (points)", 100, 1),
    "delta_test_acc": ("Δ test acc. vs vanilla (points)", 100, 1),
    "attr_area_ratio": ("Attr. area ratio", 1, 3),
    "attr_vs_vanilla": ("Attr. area × vanilla", 1, 2),
    "attr_initial": ("Attr. ratio, epoch 0", 1, 3),
    "attr_final": ("Attr. ratio, final", 1, 3),
    "attr_final_over_initial": ("Final / initial", 1, 3),
    "cov_last": ("Last conv layer (%)", 100, 1),
    "cov_all": ("All conv layers (%)", 100, 1),
    "cov_last_vs_vanilla": ("Last layer × vanilla", 1, 2),
    "wall_s": ("Wall time (s)", 1, 0),
    "median_step_s": ("Median step (ms)", 1000, 1),
    "ratio_to_vanilla": ("× vanilla", 1, 2),
    "ratio_iqr": ("IQR of × vanilla", 1, 2),
}
KEY_HEADERS = {"profile": "Profile", "dataset": "Data set", "image_size": "Px", "per_class": "Per class",
               "arch": "Arch.", "method_label": "Method", "rho": "ρ", "saliency": "Saliency",
               "threshold": "t", "aggregate": "Aggregate", "attr_threshold": "Attr. t",
               "n_runs": "n", "device": "Device", "batch_size": "Batch"}


# ----------------------------------------------------------------------------------------- grouping
def _disambiguate(df: pd.DataFrame) -> pd.DataFrame:
    """Append the differing hyper-parameter to labels that two configurations share in one setting,
    so that e.g. two dropout rates both labelled "dropout" are never averaged together."""
    df = df.copy()
    hyper = [c for c in R.HYPER if c in df]
    keys = ["experiment", *SETTING, "method_label"]
    for _, idx in df.groupby(keys, dropna=False).groups.items():
        g = df.loc[idx, hyper].astype(str)
        varying = [c for c in hyper if g[c].nunique() > 1]
        if varying:
            df.loc[idx, "method_label"] = df.loc[idx, "method_label"] + " [" + df.loc[idx, varying].astype(str).apply(
                lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1) + "]"
    return df


def _in_progress_counts(incomplete: pd.DataFrame | None) -> dict[str, int]:
    if incomplete is None or incomplete.empty:
        return {}
    return incomplete["experiment"].value_counts().to_dict()


def group_stats(df: pd.DataFrame, metrics: list[str], keys: list[str] = GROUP,
                incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and standard error of ``metrics`` over seeds per ``keys``, on the full grid of expected
    rows (settings x method labels of each experiment and profile), with ``n``, ``n_expected``,
    ``missing_seeds`` and a ``note`` for every row short of runs."""
    if df.empty:
        return pd.DataFrame()
    df = _disambiguate(df)
    agg = {}
    for m in metrics:
        agg[f"{m}_mean"] = (m, "mean")
        agg[f"{m}_se"] = (m, "sem")
    stats = df.groupby(keys, dropna=False, sort=False).agg(
        **agg, n=("seed", "size"), seeds=("seed", lambda s: sorted(set(s.dropna())))).reset_index()

    # Expected rows: every setting of an experiment/profile crossed with every label seen there.
    ctx = ["experiment", "profile"]
    settings = df[[k for k in keys if k not in ("method", "method_label")]].drop_duplicates()
    labels = df.groupby([*ctx, "method", "method_label"], dropna=False, sort=False).agg(
        p=("p", "first"), rho=("rho", "first"), saliency=("saliency", "first"),
        attribution=("attribution", "first"), method_rank=("method_rank", "first")).reset_index()
    grid = settings.merge(labels, on=ctx) if "method" in keys else settings
    stats = grid.merge(stats, on=keys, how="left")
    expected = df.groupby(ctx, dropna=False)["seed"].agg(lambda s: sorted(set(s.dropna()))).rename("expected_seeds")
    stats = stats.merge(expected.reset_index(), on=ctx, how="left")
    stats["n"] = stats["n"].fillna(0).astype(int)
    stats["seeds"] = stats["seeds"].apply(lambda s: s if isinstance(s, list) else [])
    stats["n_expected"] = stats["expected_seeds"].apply(len)
    stats["missing_seeds"] = [sorted(set(e) - set(s)) for e, s in zip(stats["expected_seeds"], stats["seeds"])]
    running = _in_progress_counts(incomplete)
    stats["note"] = [_note(r, running.get(r["experiment"], 0)) for _, r in stats.iterrows()]
    return _sort(stats.drop(columns=["seeds", "expected_seeds"]))


def _note(row: pd.Series, running: int) -> str:
    """"n=1 of 2 seeds (seed 1 missing); 1 run of this experiment in progress", or "" when complete."""
    parts = []
    if row["n"] == 0:
        parts.append("not run")
    elif row["missing_seeds"]:
        missing = ", ".join(str(int(s)) for s in row["missing_seeds"])
        parts.append(f"n={row['n']} of {row['n_expected']} seeds (seed {missing} missing)")
    elif row["n"] > row["n_expected"]:
        parts.append(f"{row['n']} runs for {row['n_expected']} seeds (repeated seeds averaged)")
    if parts and running:
        parts.append(f"{running} run{'s' if running > 1 else ''} of this experiment in progress")
    return "; ".join(parts)


def _sort(t: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ["experiment", *SETTING, "method_rank", "p", "rho", "method_label", "threshold", "aggregate"]
            if c in t]
    return t.sort_values(cols, na_position="first", kind="stable").reset_index(drop=True)


def _of(df: pd.DataFrame, experiment: str) -> pd.DataFrame:
    return df[df["experiment"] == experiment] if not df.empty else df


def _vs_vanilla(t: pd.DataFrame, metric: str, out: str, how: str) -> pd.DataFrame:
    """Add ``out``: ``metric`` relative to the vanilla row of the same setting, as a difference
    (se of the difference of two independent means) or a ratio of means (se by the delta method)."""
    keys = ["experiment", *SETTING]
    base = t[t["method"] == "vanilla"][[*keys, f"{metric}_mean", f"{metric}_se"]].drop_duplicates(keys)
    base = base.rename(columns={f"{metric}_mean": "_bm", f"{metric}_se": "_bs"})
    t = t.merge(base, on=keys, how="left")
    m, s = t[f"{metric}_mean"], t[f"{metric}_se"]
    if how == "diff":
        t[f"{out}_mean"] = m - t["_bm"]
        t[f"{out}_se"] = (s ** 2 + t["_bs"] ** 2) ** 0.5
    else:
        t[f"{out}_mean"] = m / t["_bm"]
        t[f"{out}_se"] = t[f"{out}_mean"] * ((s / m) ** 2 + (t["_bs"] / t["_bm"]) ** 2) ** 0.5
    vanilla = t["method"] == "vanilla"
    t.loc[vanilla, [f"{out}_mean", f"{out}_se"]] = math.nan  # a baseline against itself says nothing
    return t.drop(columns=["_bm", "_bs"])


# ------------------------------------------------------------------------------------------ tables
def select_tuned(t: pd.DataFrame) -> pd.DataFrame:
    """Keep, per setting and method swept over ``p``, the p with the best mean validation accuracy
    (tuned on the validation split, never on test); other methods pass through. Adds ``selection``."""
    keys = ["experiment", *SETTING, "method"]
    t = t.copy()
    t["selection"] = ""
    keep = pd.Series(True, index=t.index)
    for _, g in t[t["p"].notna()].groupby(keys, dropna=False):
        if g["p"].nunique() < 2:
            continue
        ranked = g["val_acc_mean"].dropna()
        if ranked.empty:
            continue
        best = ranked.idxmax()
        keep[g.index] = False
        keep[best] = True
        grid = ", ".join(f"{p:g}" for p in sorted(g["p"].unique()))
        t.loc[best, "selection"] = f"p={t.loc[best, 'p']:g} tuned on val (of {grid})"
    return t[keep].reset_index(drop=True)


def table_accuracy_full(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """02: test and validation accuracy of every method and drop rate."""
    t = group_stats(_of(df, EXPERIMENTS["main"]), ["test_acc", "val_acc", "train_acc"], incomplete=incomplete)
    return _vs_vanilla(t, "test_acc", "delta_test_acc", "diff") if not t.empty else t


def table_accuracy(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """02: test accuracy per setting x method, dropout-type rates tuned on the validation split."""
    t = table_accuracy_full(df, incomplete)
    return select_tuned(t) if not t.empty else t


def table_attribution(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """02: Grad-CAM attribution area ratio per method, and its ratio to vanilla."""
    t = group_stats(_of(df, EXPERIMENTS["main"]), ["attr_area_ratio"], incomplete=incomplete)
    if t.empty:
        return t
    t = _vs_vanilla(t, "attr_area_ratio", "attr_vs_vanilla", "ratio")
    thresholds = _of(df, EXPERIMENTS["main"]).groupby(GROUP, dropna=False)["attr_threshold"].first()
    t = t.merge(thresholds.reset_index(), on=GROUP, how="left")
    return t


def _coverage_long(df: pd.DataFrame) -> pd.DataFrame:
    """Runs x threshold x aggregate, with ``cov_last`` and ``cov_all`` columns."""
    rows = []
    for col in [c for c in df.columns if c.startswith("cov_last_")]:
        _, _, agg, t = col.split("_", 3)
        all_col = f"cov_all_{agg}_{t}"
        part = df.assign(threshold=float(t[1:]), aggregate=agg, cov_last=df[col],
                         cov_all=df[all_col] if all_col in df else math.nan)
        rows.append(part)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def table_coverage(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """02: neuron coverage of the last conv layer and of all conv layers, per threshold, mean over
    inputs and union over the test set, and the last-layer coverage relative to vanilla."""
    long = _coverage_long(_of(df, EXPERIMENTS["main"]))
    if long.empty:
        return long
    t = group_stats(long, ["cov_last", "cov_all"], keys=[*GROUP, "threshold", "aggregate"], incomplete=incomplete)
    t = _vs_vanilla_by(t, ["threshold", "aggregate"])
    # Methods side by side within one threshold and aggregate: that is the comparison to read.
    order = ["experiment", *SETTING, "threshold", "aggregate", "method_rank", "p", "rho", "method_label"]
    return t.sort_values(order, na_position="first", kind="stable").reset_index(drop=True)


def _vs_vanilla_by(t: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """``_vs_vanilla`` for the last-layer coverage, matched also on threshold and aggregate."""
    parts = [_vs_vanilla(g, "cov_last", "cov_last_vs_vanilla", "ratio") for _, g in t.groupby(extra, sort=False)]
    return pd.concat(parts, ignore_index=True)


def table_rho_ablation(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """03: test accuracy and attribution area ratio per rho."""
    return group_stats(_of(df, EXPERIMENTS["rho"]), ["test_acc", "attr_area_ratio"], incomplete=incomplete)


def table_attribution_methods(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """04: SGDrop with each saliency (grad x activation, gradient, Grad-CAM) and the random control."""
    t = group_stats(_of(df, EXPERIMENTS["attribution"]), ["test_acc", "attr_area_ratio"], incomplete=incomplete)
    return _vs_vanilla(t, "test_acc", "delta_test_acc", "diff") if not t.empty else t


def table_architectures(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """05: vanilla vs SGDrop on each architecture."""
    t = group_stats(_of(df, EXPERIMENTS["architectures"]), ["test_acc", "attr_area_ratio", "cov_last_mean_t0.5",
                                                            "wall_s"], incomplete=incomplete)
    if t.empty:
        return t
    t = t.rename(columns={"cov_last_mean_t0.5_mean": "cov_last_mean", "cov_last_mean_t0.5_se": "cov_last_se"})
    return _vs_vanilla(t, "test_acc", "delta_test_acc", "diff")


def table_ema_decay(df: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """07: SGDrop with each EMA decay, with and without warm-up, and the online mode."""
    return group_stats(_of(df, EXPERIMENTS["ema"]), ["test_acc", "val_acc", "train_acc", "attr_area_ratio"],
                       incomplete=incomplete)


def overfocus_frame(results: list[dict]) -> pd.DataFrame:
    """01, one row per run: attribution ratio at epoch 0 and at the last epoch that measured it
    (the same fixed test subset, so the two are comparable), and the final train-test gap."""
    h = R.history_frame(results)
    if h.empty:
        return pd.DataFrame()
    h = h[(h["experiment"] == EXPERIMENTS["overfocus"]) & h["attr_area_ratio"].notna()].sort_values("epoch")
    runs = h.groupby("run_dir", sort=False).agg(attr_initial=("attr_area_ratio", "first"),
                                                attr_final=("attr_area_ratio", "last"), last_epoch=("epoch", "last"),
                                                initial_epoch=("epoch", "first"))
    runs = runs[runs["initial_epoch"] == 0]  # without epoch 0 there is no "before training" to compare to
    df = R.to_frame(results)
    df = df[df["run_dir"].isin(runs.index)].merge(runs, left_on="run_dir", right_index=True)
    df["attr_final_over_initial"] = df["attr_final"] / df["attr_initial"]
    return df


def table_overfocus(results: list[dict], incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """01: attribution ratio before and after training, and the final generalisation gap."""
    df = overfocus_frame(results)
    if df.empty:
        return df
    return group_stats(df, ["attr_initial", "attr_final", "attr_final_over_initial", "gen_gap"],
                       incomplete=incomplete)


def table_overhead(overhead: list[dict]) -> pd.DataFrame:
    """06: median training-step time of each method, its ratio to vanilla (median of the per-round
    ratios in files that have them) and that ratio's IQR, per benchmark file."""
    rows = []
    for o in overhead:
        cfg = o.get("config", {})
        for label, m in o["methods"].items():
            rows.append({"device": cfg.get("device"), "arch": cfg.get("arch"), "image_size": cfg.get("image_size"),
                         "batch_size": cfg.get("batch_size"), "method_label": label,
                         "median_step_s_mean": m.get("median_step_s"), "ratio_to_vanilla_mean": m.get("ratio_to_vanilla"),
                         "ratio_iqr_mean": m.get("ratio_iqr"), "file": Path(o["path"]).name})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- formatting
def _fmt(mean: float, se: float | None, scale: float, digits: int, signed: bool = False) -> str:
    """"61.0 ± 1.0"; "61.0 ± —" when the se is undefined (n=1); "61.0" for single measurements (se None)."""
    if mean is None or pd.isna(mean):
        return DASH
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.{digits}f}"
    if se is None:
        return text
    return f"{text} ± {se * scale:.{digits}f}" if not pd.isna(se) else f"{text} ± {DASH}"


def _key_text(col: str, v) -> str:
    if col == "per_class":
        return "all" if pd.isna(v) else f"{int(v)}"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_table(t: pd.DataFrame, keys: list[str], metrics: list[str], counts: bool = True) -> pd.DataFrame:
    """Display frame: key columns as text, each metric as "mean ± se", n as "2/3", then notes.
    Key columns that hold one value for the whole table are left out (the caption states them)."""
    shown = [k for k in keys if k in t and (t[k].astype(str).nunique() > 1 or k in ("method_label", "threshold",
                                                                                     "aggregate", "rho", "arch"))]
    out = pd.DataFrame({KEY_HEADERS.get(k, k): [_key_text(k, v) for v in t[k]] for k in shown})
    if "selection" in t:
        out[KEY_HEADERS["method_label"]] = [f"{m} †" if s else m for m, s in zip(out[KEY_HEADERS["method_label"]],
                                                                                 t["selection"])]
    for m in metrics:
        header, scale, digits = METRICS[m]
        se = t[f"{m}_se"] if f"{m}_se" in t else [None] * len(t)
        out[header] = [_fmt(a, b, scale, digits, signed=m.startswith("delta")) for a, b in zip(t[f"{m}_mean"], se)]
    if counts and "n" in t:
        out["n"] = [f"{n}/{e}" for n, e in zip(t["n"], t["n_expected"])]
    if "selection" in t and t["selection"].any():
        out["Selection"] = t["selection"].tolist()
    if "note" in t and t["note"].astype(bool).any():
        out["Note"] = t["note"].tolist()
    return out


def constants(t: pd.DataFrame, keys: list[str]) -> str:
    """"profile=mini, dataset=imagenette, ...": the key columns that are the same in every row."""
    parts = [f"{k}={_key_text(k, t[k].iloc[0])}" for k in keys if k in t and t[k].astype(str).nunique() == 1
             and k not in ("method_label", "threshold", "aggregate", "rho", "arch")]
    return ", ".join(parts)


# -------------------------------------------------------------------------------------- the catalogue
SK = SETTING
SE_TEXT = "mean ± standard error over seeds (std/√n; — when n=1); n = runs found / seeds expected"


def build_tables(results: list[dict], overhead: list[dict] | None = None,
                 incomplete: pd.DataFrame | None = None) -> dict[str, Table]:
    """Every table the data allows, by name. Pure: the same inputs give the same tables."""
    df = R.to_frame(results)
    tables: dict[str, Table] = {}

    def add(name, title, description, data, keys, metrics, notes=(), counts=True):
        if data is None or data.empty:
            return
        caption = constants(data, keys)
        text = description + (f" Values: {SE_TEXT}." if counts else "") + (f" Setting: {caption}." if caption else "")
        tables[name] = Table(name, title, text, data, format_table(data, keys, metrics, counts), list(notes))

    running = [] if incomplete is None or incomplete.empty else [
        f"In progress (checkpoint.pt, no result.json): {d} ({e})" for d, e in
        zip(incomplete["run_dir"], incomplete["experiment"])]

    def running_of(exp):
        return [n for n in running if n.endswith(f"({exp})")]

    main = EXPERIMENTS["main"]
    acc = table_accuracy(df, incomplete)
    add("accuracy", "Test accuracy (02_main_accuracy)",
        "Top-1 test accuracy per method; Δ is the difference to vanilla in the same setting.",
        acc, [*SK, "method_label"], ["test_acc", "delta_test_acc", "val_acc"],
        ["† drop rate p tuned on the validation split: per setting, the p with the best mean validation "
         "accuracy over seeds; every p is in accuracy_full."] + running_of(main))
    add("accuracy_full", "Test accuracy, every drop rate (02_main_accuracy)",
        "Top-1 accuracy of every method and drop rate p (untuned).", table_accuracy_full(df, incomplete),
        [*SK, "method_label"], ["test_acc", "delta_test_acc", "val_acc", "train_acc"], running_of(main))
    attr = table_attribution(df, incomplete)
    thr = ", ".join(sorted({f"{x:g}" for x in attr["attr_threshold"].dropna()})) if not attr.empty else ""
    add("attribution", "Attribution area ratio (02_main_accuracy)",
        f"Share of image pixels whose max-normalised Grad-CAM (true class) is >= t, t = {thr}; "
        "× vanilla is the ratio of means to vanilla in the same setting.",
        attr, [*SK, "method_label"], ["attr_area_ratio", "attr_vs_vanilla"], running_of(main))
    add("coverage", "Neuron coverage (02_main_accuracy)",
        "Share of conv neurons (channel spatial means, min-max scaled per input and layer) above t; "
        "aggregate 'mean' averages the share over test inputs, 'union' counts a neuron covered if any input "
        "activates it; all layers pools every conv neuron.",
        table_coverage(df, incomplete), [*SK, "method_label", "threshold", "aggregate"],
        ["cov_last", "cov_all", "cov_last_vs_vanilla"], running_of(main))
    add("overfocus", "Overfocusing dynamics (01_overfocus_dynamics)",
        "Attribution area ratio on the fixed test subset before training (epoch 0) and at the last epoch, "
        "and the final generalisation gap train acc - test acc.",
        table_overfocus(results, incomplete), [*SK, "method_label"],
        ["attr_initial", "attr_final", "attr_final_over_initial", "gen_gap"], running_of(EXPERIMENTS["overfocus"]))
    add("rho_ablation", "Share of dropped features ρ (03_rho_ablation)",
        "SGDrop test accuracy and attribution area ratio per ρ.", table_rho_ablation(df, incomplete),
        [*SK, "method_label", "rho"], ["test_acc", "attr_area_ratio"], running_of(EXPERIMENTS["rho"]))
    add("attribution_methods", "Attribution method of the mask (04_attribution_methods)",
        "SGDrop with each saliency, and the random control at the same ρ.",
        table_attribution_methods(df, incomplete), [*SK, "method_label"],
        ["test_acc", "delta_test_acc", "attr_area_ratio"], running_of(EXPERIMENTS["attribution"]))
    add("architectures", "Architectures (05_architectures)", "Vanilla vs SGDrop per architecture; coverage: "
        "last conv layer, t = 0.5, mean over inputs.", table_architectures(df, incomplete),
        [*SK, "method_label"], ["test_acc", "delta_test_acc", "attr_area_ratio", "cov_last", "wall_s"],
        running_of(EXPERIMENTS["architectures"]))
    add("ema_decay", "EMA copy of the mask (07_ema_decay)",
        "SGDrop with a fixed EMA decay (no warm-up), the default (0.99 with warm-up: decay "
        "min(0.99, (1+t)/(10+t)) at step t) and the online mode (no EMA copy).",
        table_ema_decay(df, incomplete), [*SK, "method_label"], ["test_acc", "val_acc", "train_acc", "attr_area_ratio"],
        running_of(EXPERIMENTS["ema"]))
    oh = table_overhead(overhead or [])
    if not oh.empty:
        notes = [f"{Path(o['path']).name}: shares of the SGDrop (ema) step: " + ", ".join(
                     f"{piece.replace('_', ' ')} {o['sgdrop_breakdown'][f'{piece}_share']:.1%}"
                     for piece in ("ema_forward", "attribution", "mask", "ema_update")
                     if f"{piece}_share" in o["sgdrop_breakdown"]) + "; the rest is the step vanilla also takes"
                 for o in overhead if o.get("sgdrop_breakdown")]
        add("overhead", "Training-step overhead (06_overhead)",
            "Median wall-clock time of one training step, and its ratio to vanilla's (median of the ratios "
            "taken in each round, methods in a shuffled order per round).", oh,
            ["device", "arch", "image_size", "batch_size", "method_label"],
            ["median_step_s", "ratio_to_vanilla"] + (["ratio_iqr"] if oh["ratio_iqr_mean"].notna().any() else []),
            notes, counts=False)
    return tables


# ------------------------------------------------------------------------------------------- writing
def to_markdown(table: Table) -> str:
    # disable_numparse: keep our formatting ("100.0", "0.50") instead of tabulate's re-parsed numbers
    body = table.display.to_markdown(index=False, disable_numparse=True)
    lines = [f"# {table.title}", "", table.description, "", body, ""]
    if table.notes:
        lines += ["Notes:", *[f"- {n}" for n in table.notes], ""]
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex_escape(s: str) -> str:
    """LaTeX-escape one cell in a single pass, then turn the Unicode symbols we use into math."""
    s = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX[m.group()], str(s))
    return (s.replace("±", r"$\pm$").replace("—", "---").replace("ρ", r"$\rho$").replace("Δ", r"$\Delta$")
            .replace("×", r"$\times$").replace("†", r"$^\dagger$").replace("√", r"$\surd$"))


def to_latex(table: Table) -> str:
    """Booktabs table (pandas Styler), cells escaped by hand so ± and friends become math."""
    d = table.display.map(_tex_escape)
    d.columns = [_tex_escape(c) for c in d.columns]
    caption = _tex_escape(f"{table.title}. {table.description}" + "".join(f" {n}" for n in table.notes))
    return d.style.hide(axis="index").to_latex(hrules=True, caption=caption, label=f"tab:{table.name}",
                                               position="t", column_format="l" * d.shape[1])


def to_csv(table: Table) -> str:
    return table.data.drop(columns=["method_rank"], errors="ignore").to_csv(index=False, float_format="%.6g",
                                                                            lineterminator="\n")


def write_table(table: Table, out_dir: Path) -> list[Path]:
    paths = []
    for ext, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
        path = Path(out_dir) / f"{table.name}.{ext}"
        write_text(path, render(table))
        paths.append(path)
    return paths


EXPECTED = ["accuracy", "accuracy_full", "attribution", "coverage", "overfocus", "rho_ablation",
            "attribution_methods", "architectures", "overhead", "ema_decay"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="folder searched for result.json (default results/)")
    ap.add_argument("--out", default=None, help="output folder (default RESULTS/tables)")
    args = ap.parse_args(argv)
    root = Path(args.results)
    out = Path(args.out) if args.out else root / "tables"
    tables = build_tables(R.load_results(root), R.load_overhead(root), R.incomplete_frame(root))
    for name in EXPECTED:
        if name in tables:
            print(f"{name}: {', '.join(str(p) for p in write_table(tables[name], out))}")
        else:
            print(f"{name}: skipped (no matching results under {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
