"""Figures of the reproduction (PNG and PDF).

    python -m analysis.figures [--results results/] [--out figures/] [--list] [--only NAME]

Each figure is a function in ``FIGURES``: ``Inputs`` (the loaded runs) in, a matplotlib Figure out,
or ``Skip`` raised with the reason when its inputs are absent. Where several profiles ran, a figure
uses the most faithful one (paper > mini > smoke) and says which, with the number of runs, under
its title. Error bars are standard errors over seeds; single seeds are drawn as points.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on the machines that run this

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sgdrop.io import atomic_path  # noqa: E402

from . import results as R  # noqa: E402
from .results import EXPERIMENTS  # noqa: E402
from .tables import overfocus_frame  # noqa: E402

PAPER_OVERHEAD = 1.33  # arXiv:2409.17370: about 33% more training time
COVERAGE_THRESHOLD = 0.5


class Skip(Exception):
    """A figure whose inputs are absent: reported in one line, not an error."""


@dataclass
class Inputs:
    """Everything a figure may draw from, loaded once."""

    results: list[dict]
    overhead: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.frame = R.to_frame(self.results)


# ------------------------------------------------------------------------------------------ helpers
def _runs(inp: Inputs, experiment: str) -> tuple[pd.DataFrame, str]:
    """Runs of ``experiment`` in its most faithful profile, or Skip."""
    df = inp.frame
    df = df[df["experiment"] == experiment] if not df.empty else df
    if df.empty:
        raise Skip(f"no {experiment} results")
    profile = R.best_profile(df)
    return df[df["profile"] == profile].copy(), profile


def _setting(df: pd.DataFrame) -> pd.Series:
    """"imagenette 64px, 100/class, vgg11": a readable name for each run's setting."""
    per_class = df["per_class"].map(lambda v: "all" if pd.isna(v) else f"{int(v)}/class")
    return df["dataset"].astype(str) + " " + df["image_size"].astype(str) + "px, " + per_class + ", " + df["arch"]


def _method_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df.sort_values(["method_rank", "p", "rho", "method_label"],
                                             na_position="first")["method_label"]))


def _title(fig: plt.Figure, title: str, df: pd.DataFrame, profile: str | None, extra: str = "") -> None:
    """Title, and below it the profile, number of runs and the setting(s) the figure comes from."""
    settings = sorted(set(_setting(df))) if not df.empty and "dataset" in df else []
    where = settings[0] if len(settings) == 1 else f"{len(settings)} settings"
    sub = f"profile={profile}, n={len(df)} runs, {where}" + (f"\n{extra}" if extra else "")
    fig.suptitle(f"{title}\n{sub}", fontsize=10)


def _bars(ax: plt.Axes, df: pd.DataFrame, x: str, y: str, ylabel: str, order: list[str] | None = None,
          hue: str | None = None) -> None:
    """Mean bars with standard-error whiskers, every seed as a point on top."""
    sns.barplot(data=df, x=x, y=y, hue=hue, order=order, errorbar="se", capsize=0.15, alpha=0.6, ax=ax,
                legend=hue is not None)
    sns.stripplot(data=df, x=x, y=y, hue=hue, order=order, dodge=hue is not None, color="black" if hue is None
                  else None, size=4, ax=ax, legend=False)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def _hue_setting(df: pd.DataFrame) -> str | None:
    """Colour bars by setting only when there is more than one."""
    return "setting" if df["setting"].nunique() > 1 else None


def _vanilla_reference(inp: Inputs, profile: str, df: pd.DataFrame, experiments: list[str]) -> pd.DataFrame:
    """Vanilla runs of ``experiments`` in ``profile`` and in the settings of ``df``: a reference line."""
    f = inp.frame
    vanilla = f[(f["method"] == "vanilla") & (f["profile"] == profile) & f["experiment"].isin(experiments)]
    return vanilla[_setting(vanilla).isin(set(_setting(df)))] if not vanilla.empty else vanilla


def _threshold_text(df: pd.DataFrame) -> str:
    ts = sorted(set(df["attr_threshold"].dropna()))
    return "Grad-CAM ≥ " + "/".join(f"{t:g}" for t in ts) if ts else "Grad-CAM threshold unknown"


# ------------------------------------------------------------------------------------------ figures
def fig_overfocus_dynamics(inp: Inputs) -> plt.Figure:
    """Attribution area ratio and train-test gap per epoch (paper Fig. 1)."""
    h = R.history_frame(inp.results)
    if h.empty:
        raise Skip("no training history")
    h = h[h["experiment"] == EXPERIMENTS["overfocus"]]
    if h.empty or h["attr_area_ratio"].notna().sum() == 0:
        raise Skip(f"no {EXPERIMENTS['overfocus']} runs with per-epoch attribution ratio")
    profile = R.best_profile(h)
    h = h[h["profile"] == profile].copy()
    h = h.sort_values(["per_class", "epoch"], na_position="last")  # legend in data-size order, "all" last
    h["data"] = h["per_class"].map(lambda v: "all" if pd.isna(v) else f"{int(v)}")
    runs = inp.frame[inp.frame["run_dir"].isin(set(h["run_dir"]))]
    style = "arch" if h["arch"].nunique() > 1 else None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    sns.lineplot(data=h.dropna(subset=["attr_area_ratio"]), x="epoch", y="attr_area_ratio", hue="data", style=style,
                 errorbar="se", marker="o", ax=axes[0])
    axes[0].set(xlabel="epoch (0 = before training)", ylabel=f"attribution area ratio ({_threshold_text(h)})",
                ylim=(0, None), title="Share of the image the attribution covers")
    sns.lineplot(data=h.dropna(subset=["gen_gap"]), x="epoch", y="gen_gap", hue="data", style=style,
                 errorbar="se", marker="o", ax=axes[1])
    axes[1].set(xlabel="epoch", ylabel="generalisation gap (train acc − test acc, fraction)",
                title="Generalisation gap")
    for ax in axes:
        ax.legend(title="train images / class")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _title(fig, "Overfocusing dynamics: attribution area and generalisation gap per epoch (cf. paper Fig. 1)", runs, profile,
           extra="lines: mean ± se over seeds; settings differ in training images per class")
    return fig


def fig_overfocus_vs_data(inp: Inputs) -> plt.Figure:
    """Final attribution ratio and gap against the number of training images per class."""
    df = overfocus_frame(inp.results)
    if df.empty:
        raise Skip(f"no {EXPERIMENTS['overfocus']} runs with per-epoch attribution ratio")
    profile = R.best_profile(df)
    df = df[(df["profile"] == profile) & df["per_class"].notna()]
    if df["per_class"].nunique() < 2:
        raise Skip("fewer than two values of dataset.per_class in 01_overfocus_dynamics")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, y, label in ((axes[0], "attr_final", f"final attribution area ratio ({_threshold_text(df)})"),
                         (axes[1], "gen_gap", "final gap (train acc − test acc, fraction)")):
        sns.lineplot(data=df, x="per_class", y=y, hue="arch", errorbar="se", marker="o", ax=ax)
        sns.scatterplot(data=df, x="per_class", y=y, color="black", s=15, ax=ax, legend=False)
        ax.set(xscale="log", xlabel="training images per class (log scale)", ylabel=label)
    axes[0].set_title("Overfocusing vs amount of data")
    axes[1].set_title("Generalisation gap vs amount of data")
    _title(fig, "Less data, more overfocusing?", df, profile)
    return fig


def _overlay_runs(inp: Inputs) -> tuple[list[tuple[str, dict]], pd.DataFrame, str]:
    """Seed-0 runs of vanilla, the best-validated dropout and SGDrop (default settings) with examples."""
    df, profile = _runs(inp, EXPERIMENTS["main"])
    df = df[df["run_dir"].isin({r["run_dir"] for r in inp.results if "examples_path" in r})]
    if df.empty:
        raise Skip("no 02_main_accuracy run saved examples.npz")
    setting = _setting(df)
    df = df[setting == setting.value_counts().index[0]]
    df = df[df["seed"] == df["seed"].min()]
    by_dir = {r["run_dir"]: r for r in inp.results}
    chosen = []
    for method, prefer in (("vanilla", "vanilla"), ("dropout", None), ("sgdrop", "sgdrop")):
        m = df[df["method"] == method]
        if m.empty:
            continue
        if prefer is not None and (m["method_label"] == prefer).any():
            m = m[m["method_label"] == prefer]
        row = m.sort_values("val_acc", ascending=False).iloc[0]  # dropout: the best-validated p
        chosen.append((row["method_label"], by_dir[row["run_dir"]]))
    if len(chosen) < 2:
        raise Skip("examples.npz found for fewer than two of vanilla, dropout, sgdrop")
    return chosen, df, profile


def fig_gradcam_overlays(inp: Inputs, max_images: int = 6) -> plt.Figure:
    """The same test images, Grad-CAM of vanilla, dropout and SGDrop overlaid (jet)."""
    chosen, df, profile = _overlay_runs(inp)
    examples = [(label, run, np.load(run["examples_path"])) for label, run in chosen]
    n = min(max_images, *(len(e["images"]) for _, _, e in examples))
    cols = 1 + len(examples)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.8), squeeze=False, constrained_layout=True)
    images = examples[0][2]["images"][:n].transpose(0, 2, 3, 1)
    labels = examples[0][2]["labels"][:n]
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_ylabel(f"class {int(labels[i])}", fontsize=8)
        for j, (label, run, ex) in enumerate(examples, start=1):
            ax = axes[i, j]
            ax.imshow(images[i])
            ax.imshow(ex["cams"][i].astype(np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ok = int(ex["pred"][i]) == int(labels[i])
            ax.text(0.03, 0.03, f"pred {int(ex['pred'][i])} {'✓' if ok else '✗'}", transform=ax.transAxes,
                    fontsize=7, color="white", bbox={"facecolor": "green" if ok else "red", "alpha": 0.6, "pad": 1})
            if i == 0:
                attr = R.get(run, "metrics.attr_area_ratio")
                ax.set_title(f"{label}\nattr. ratio {attr:.2f}" if attr is not None else label, fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    used = df[df["run_dir"].isin({run["run_dir"] for _, run, _ in examples})]
    _title(fig, "Grad-CAM (true class), jet overlay in [0, 1]", used, profile,
           extra=f"seed {int(used['seed'].min())}")
    return fig


def fig_coverage_per_layer(inp: Inputs, threshold: float = COVERAGE_THRESHOLD) -> plt.Figure:
    """Neuron coverage of each conv layer per method (mean over inputs and union over the set)."""
    df, profile = _runs(inp, EXPERIMENTS["main"])
    cov = R.coverage_frame([r for r in inp.results if r["run_dir"] in set(df["run_dir"])])
    if cov.empty:
        raise Skip("no neuron coverage in 02_main_accuracy results")
    t = min(cov["threshold"].unique(), key=lambda v: abs(v - threshold))  # nearest measured threshold
    cov = cov[cov["threshold"] == t]
    order = _method_order(df)
    layers = cov.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, constrained_layout=True)
    for ax, agg, what in ((axes[0], "mean", "mean over test inputs"), (axes[1], "union", "union over the test set")):
        sns.lineplot(data=cov[cov["aggregate"] == agg], x="layer_index", y="coverage", hue="method_label",
                     hue_order=order, errorbar="se", marker="o", ax=ax)
        ax.set(xlabel="conv layer (input → output)", ylabel=f"neuron coverage at t={t:g} (fraction)",
               title=f"Coverage, {what}", ylim=(0, 1.02))
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.legend(title="method", fontsize=8)
    _title(fig, "Neuron coverage per conv layer (channel means, min-max scaled per input)", df, profile)
    return fig


def _main_bars(inp: Inputs, y: str, scale: float, ylabel: str, title: str, extra: str = "") -> plt.Figure:
    df, profile = _runs(inp, EXPERIMENTS["main"])
    df = df.assign(setting=_setting(df), value=df[y] * scale).dropna(subset=["value"])
    if df.empty:
        raise Skip(f"no {y} in 02_main_accuracy results")
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * df["method_label"].nunique() + 2), 4.2), constrained_layout=True)
    _bars(ax, df, "method_label", "value", ylabel, order=_method_order(df), hue=_hue_setting(df))
    _title(fig, title, df, profile, extra)
    return fig


def fig_accuracy(inp: Inputs) -> plt.Figure:
    """Test accuracy per method (02), mean ± se over seeds, seeds as points."""
    return _main_bars(inp, "test_acc", 100, "test accuracy (%)", "Top-1 test accuracy",
                      extra="bars: mean ± se over seeds; points: seeds")


def fig_attribution_area(inp: Inputs) -> plt.Figure:
    """Attribution area ratio per method (02)."""
    df, _ = _runs(inp, EXPERIMENTS["main"])
    return _main_bars(inp, "attr_area_ratio", 1, f"attribution area ratio ({_threshold_text(df)})",
                      "How much of the image the Grad-CAM covers", extra="bars: mean ± se; points: seeds")


def fig_rho_ablation(inp: Inputs) -> plt.Figure:
    """Test accuracy and attribution ratio against rho (03), vanilla of the same profile as reference."""
    df, profile = _runs(inp, EXPERIMENTS["rho"])
    df = df[df["rho"].notna()]
    if df.empty:
        raise Skip("no rho in 03_rho_ablation results")
    vanilla = _vanilla_reference(inp, profile, df, [EXPERIMENTS["rho"], EXPERIMENTS["main"]])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, y, scale, label in ((axes[0], "test_acc", 100, "test accuracy (%)"),
                                (axes[1], "attr_area_ratio", 1, f"attribution area ratio ({_threshold_text(df)})")):
        d = df.assign(value=df[y] * scale)
        sns.lineplot(data=d, x="rho", y="value", hue="method", errorbar="se", marker="o", ax=ax)
        sns.scatterplot(data=d, x="rho", y="value", color="black", s=15, ax=ax, legend=False)
        if not vanilla.empty:
            ax.axhline(vanilla[y].mean() * scale, color="gray", ls="--", label=f"vanilla (n={len(vanilla)})")
        ax.set(xscale="log", xlabel="ρ, share of feature-map entries dropped (log scale)", ylabel=label)
        rhos = sorted(df["rho"].unique())
        ax.set_xticks(rhos, [f"{r:g}" for r in rhos])  # the measured values, not powers of ten
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
    _title(fig, "Effect of ρ", df, profile, extra="mean ± se over seeds")
    return fig


def fig_attribution_methods(inp: Inputs) -> plt.Figure:
    """Test accuracy and attribution ratio per saliency used for the mask (04), random control included."""
    df, profile = _runs(inp, EXPERIMENTS["attribution"])
    df = df.assign(setting=_setting(df))
    order = _method_order(df)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    _bars(axes[0], df.assign(value=df["test_acc"] * 100), "method_label", "value", "test accuracy (%)", order,
          _hue_setting(df))
    _bars(axes[1], df.assign(value=df["attr_area_ratio"]), "method_label", "value",
          f"attribution area ratio ({_threshold_text(df)})", order, _hue_setting(df))
    _title(fig, "Which attribution should choose the dropped features?", df, profile,
           extra="bars: mean ± se; points: seeds")
    return fig


def fig_architectures(inp: Inputs) -> plt.Figure:
    """Vanilla vs SGDrop on each architecture (05)."""
    df, profile = _runs(inp, EXPERIMENTS["architectures"])
    order = _method_order(df)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, y, scale, label in ((axes[0], "test_acc", 100, "test accuracy (%)"),
                                (axes[1], "attr_area_ratio", 1, f"attribution area ratio ({_threshold_text(df)})")):
        d = df.assign(value=df[y] * scale, method_label=pd.Categorical(df["method_label"], order))
        _bars(ax, d, "arch", "value", label, hue="method_label")
    _title(fig, "Across architectures", df, profile, extra="bars: mean ± se; points: seeds")
    return fig


def fig_ema_decay(inp: Inputs) -> plt.Figure:
    """Test accuracy and attribution ratio per EMA setting of SGDrop's mask (07), vanilla as reference."""
    df, profile = _runs(inp, EXPERIMENTS["ema"])
    df = df.assign(setting=_setting(df), method_label=df["method_label"].replace(
        {"sgdrop": "sgdrop ema=0.99 + warm-up (default)", "sgdrop no-warmup": "sgdrop ema=0.99 no-warmup"}))
    # From no copy (online) through fixed decays to the default warm-up: the order the docstring of
    # experiments/07_ema_decay.py reads in.
    rank = df.assign(online=df["attribution"] != "online", warm=df["ema_warmup"].fillna(False).astype(bool))
    order = list(dict.fromkeys(rank.sort_values(["online", "warm", "ema_decay"])["method_label"]))
    vanilla = _vanilla_reference(inp, profile, df, [EXPERIMENTS["main"]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, y, scale, label in ((axes[0], "test_acc", 100, "test accuracy (%)"),
                                (axes[1], "attr_area_ratio", 1, f"attribution area ratio ({_threshold_text(df)})")):
        _bars(ax, df.assign(value=df[y] * scale), "method_label", "value", label, order, _hue_setting(df))
        if not vanilla.empty:
            ax.axhline(vanilla[y].mean() * scale, color="gray", ls="--", label=f"vanilla, 02 (n={len(vanilla)})")
            ax.legend(fontsize=8)
    _title(fig, "Which network should pick the mask? EMA decay, warm-up, online", df, profile,
           extra="bars: mean ± se; points: seeds")
    return fig


def fig_overhead(inp: Inputs) -> plt.Figure:
    """Training-step time relative to vanilla (06), paper's ~1.33 marked."""
    if not inp.overhead:
        raise Skip("no overhead benchmark JSON")
    rows = [{"method": m, "ratio": v.get("ratio_to_vanilla"),
             "bench": f"{o['config'].get('arch')} {o['config'].get('image_size')}px bs{o['config'].get('batch_size')} "
                      f"{o['config'].get('device')}"}
            for o in inp.overhead for m, v in o["methods"].items()]
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * df["method"].nunique() + 2), 4.2), constrained_layout=True)
    sns.barplot(data=df, x="method", y="ratio", hue="bench", ax=ax)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(PAPER_OVERHEAD, color="red", ls="--", label=f"paper ≈ {PAPER_OVERHEAD:g}×")
    ax.set(xlabel="", ylabel="median training-step time / vanilla's (×)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="benchmark", fontsize=8)
    fig.suptitle(f"Training-step overhead\n{len(inp.overhead)} benchmark file(s), median step time", fontsize=10)
    return fig


FIGURES: dict[str, tuple[Callable[[Inputs], plt.Figure], str]] = {
    "overfocus_dynamics": (fig_overfocus_dynamics, "attribution area ratio and train-test gap per epoch (01; paper Fig. 1)"),
    "overfocus_vs_data": (fig_overfocus_vs_data, "final attribution ratio and gap vs training images per class (01)"),
    "gradcam_overlays": (fig_gradcam_overlays, "same test images, Grad-CAM of vanilla / dropout / SGDrop, seed 0 (02)"),
    "coverage_per_layer": (fig_coverage_per_layer, "neuron coverage per conv layer per method, t=0.5, mean and union (02)"),
    "accuracy": (fig_accuracy, "test accuracy per method, mean ± se bars and seeds as points (02)"),
    "attribution_area": (fig_attribution_area, "Grad-CAM attribution area ratio per method (02)"),
    "rho_ablation": (fig_rho_ablation, "test accuracy and attribution ratio vs rho, log x (03)"),
    "attribution_methods": (fig_attribution_methods, "SGDrop with each saliency and the random control (04)"),
    "architectures": (fig_architectures, "vanilla vs SGDrop per architecture (05)"),
    "overhead": (fig_overhead, "training-step time relative to vanilla, paper's 1.33x marked (06)"),
    "ema_decay": (fig_ema_decay, "SGDrop with each EMA decay, with and without warm-up, and online (07)"),
}


# ------------------------------------------------------------------------------------------- writing
def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, each written atomically (temporary file, then rename)."""
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(path)
    return paths


def build(names: list[str], inp: Inputs, out_dir: Path) -> dict[str, list[Path] | str]:
    """Draw and save each named figure; a skipped one maps to its reason."""
    done: dict[str, list[Path] | str] = {}
    for name in names:
        fn, _ = FIGURES[name]
        try:
            fig = fn(inp)
        except Skip as why:
            done[name] = str(why)
            continue
        try:
            done[name] = save_figure(fig, out_dir, name)
        finally:
            plt.close(fig)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="folder searched for result.json (default results/)")
    ap.add_argument("--out", default="figures", help="output folder (default figures/)")
    ap.add_argument("--list", action="store_true", help="print every figure name with a one-line description")
    ap.add_argument("--only", metavar="NAME", help="build one figure")
    args = ap.parse_args(argv)
    if args.list:
        for name, (_, text) in FIGURES.items():
            print(f"{name:20s} {text}")
        return 0
    if args.only and args.only not in FIGURES:
        print(f"unknown figure {args.only!r}; valid: {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    sns.set_theme(style="whitegrid", context="paper")
    inp = Inputs(R.load_results(args.results), R.load_overhead(args.results))
    names = [args.only] if args.only else list(FIGURES)
    for name, got in build(names, inp, Path(args.out)).items():
        if isinstance(got, str):
            print(f"{name}: skipped ({got})")
        else:
            print(f"{name}: {', '.join(str(p) for p in got)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
