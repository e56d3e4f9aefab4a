"""Figure styles shared by every chapter."""

from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import tables

AGE_CMAP = "viridis"
SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def set_style() -> None:
    """The book's look: seaborn's ticks style, readable sizes, no top/right spines."""
    import seaborn as sns

    try:  # in a kernel, render figures inline whatever MPLBACKEND says (glue needs image/png)
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and getattr(shell, "kernel", None) is not None:
            shell.run_line_magic("matplotlib", "inline")
    except ImportError:  # pragma: no cover - IPython comes with the kernel
        pass
    sns.set_theme(style="ticks", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.spines.top": False,
                         "axes.spines.right": False})


def predicted_vs_true(table: pd.DataFrame, title: str = "", ax=None, entry: dict | None = None):
    """Predicted vs true donor age with the least-squares line, the identity and MAE / r in the panel.

    ``table`` is a donor table (``age``, ``predicted``); ``entry`` (a results entry) adds the CI.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.0))
    x = table["age"].to_numpy(float)
    y = table["predicted"].to_numpy(float)
    ax.scatter(x, y, s=36, color="#4C72B0", edgecolor="white", linewidth=0.6, zorder=3)
    lo, hi = min(x.min(), y.min()) - 3, max(x.max(), y.max()) + 3
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.6", lw=1, label="identity")
    if len(x) > 1 and np.std(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.array([lo, hi])
        ax.plot(grid, slope * grid + intercept, color="#C44E52", lw=1.5, label="regression")
    mae = np.mean(np.abs(y - x))
    r = np.corrcoef(x, y)[0, 1] if np.std(y) > 0 else float("nan")
    text = f"MAE {mae:.2f} y\nr = {r:.2f}\n{len(x)} donors"
    if entry is not None and "mae_ci95" in entry:
        text = f"MAE {mae:.2f} y [{entry['mae_ci95'][0]:.1f}, {entry['mae_ci95'][1]:.1f}]\nr = {r:.2f}\n{len(x)} donors"
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true age (years)", ylabel="predicted age (years)", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return ax


def loss_curves(history: pd.DataFrame, columns, ax=None, title: str = "", logy: bool = False):
    """Training curves from a per-epoch history table."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for col in columns:
        if col in history:
            ax.plot(history.index if "epoch" not in history else history["epoch"], history[col], label=col)
    ax.set(xlabel="epoch", title=title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8, frameon=False)
    return ax


def scores_table(rows: pd.DataFrame, paper_col: str | None = None):
    """A styled scores table: the best MAE of ours in bold; the paper's column greyed."""
    styler = tables.styled(rows, decimals=2, whole_numbers=False)  # headers, dashes, no index
    if "MAE" in rows:
        styler = styler.highlight_min(subset=["MAE"], props="font-weight: bold")
    if paper_col and paper_col in rows:
        styler = styler.set_properties(subset=[paper_col], **{"color": "#777777"})
    return styler.hide(axis="index")


BLOCK_COLORS = {"encoder": "#4C72B0", "mu_head": "#8172B3", "var_head": "#8172B3", "decoder": "#55A868",
                "age_head": "#C44E52", "likelihood": "#937860", "input_transform": "#999999"}


def architecture_figure(layers: pd.DataFrame, title: str = ""):
    """Draw a network from its layer table (``models.networks.layer_table``): one bar per Linear layer,
    its height the log of its width, grouped and coloured by block; the age head branches off the
    encoder's latent layer. Built from the module itself, so it cannot drift from the code.
    """
    linear = layers[layers["type"] == "Linear"].reset_index(drop=True)
    main = linear[linear["block"].isin(["encoder", "mu_head", "decoder"])]
    age = linear[linear["block"] == "age_head"]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    heights = lambda w: 0.4 + np.log10(float(w))  # noqa: E731 - the log keeps 17,658 and 20 on one page

    def bar(x, y0, width_units, label, color, note=""):
        h = heights(width_units)
        ax.add_patch(plt.Rectangle((x - 0.3, y0 - h / 2), 0.6, h, color=color, alpha=0.85))
        ax.text(x, y0 + h / 2 + 0.08, f"{int(width_units):,}", ha="center", va="bottom", fontsize=8)
        if note:
            ax.text(x, y0 - h / 2 - 0.1, note, ha="center", va="top", fontsize=7, color="0.3")

    x = 0
    first = main.iloc[0]
    bar(x, 0, first["in"], "input", BLOCK_COLORS["input_transform"], "genes")
    positions = {}
    for row in main.itertuples(index=False):
        x += 1
        note = {"encoder": "enc", "mu_head": "mu / var", "decoder": "dec"}[row.block]
        bar(x, 0, row.out, row.name, BLOCK_COLORS[row.block], note)
        positions[row.name] = x
        ax.annotate("", xy=(x - 0.32, 0), xytext=(x - 0.68, 0), arrowprops={"arrowstyle": "->", "color": "0.5"})
    last_encoder = max(v for k, v in positions.items() if k.startswith("encoder"))
    ax_x, y_age = last_encoder, -3.1
    for i, row in enumerate(age.itertuples(index=False)):
        bar(ax_x + i, y_age, row.out, row.name, BLOCK_COLORS["age_head"], "age" if i == len(age) - 1 else "")
    ax.annotate("", xy=(ax_x, y_age + heights(age.iloc[0]["out"]) / 2 + 0.05), xytext=(ax_x, -heights(main.iloc[len(main[main['block']=='encoder'])-1]["out"]) / 2),
                arrowprops={"arrowstyle": "->", "color": "#C44E52"})
    likelihood = layers.loc[layers["block"] == "likelihood", "type"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=BLOCK_COLORS[b]) for b in ("encoder", "mu_head", "decoder", "age_head")]
    ax.legend(handles, ["encoder (Linear-BN-ReLU)", "latent mean / variance", "decoder",
                        "age head (Linear-BN-ReLU-Dropout)"], loc="lower right", fontsize=8, frameon=False)
    ax.set_xlim(-0.8, x + 0.8)
    ax.set_ylim(-4.6, 3.0)
    ax.axis("off")
    sub = f"reconstruction: {likelihood.iloc[0]}" if len(likelihood) else ""
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=10)
    return fig


def placeholder_figure(text: str):
    """A small figure that says why a figure is missing (a model skipped on this input)."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="0.35")
    ax.axis("off")
    return fig


# --------------------------------------------------------------------------------------------------
# The chapters' figures (every figure of the book is drawn here, none in a notebook)
# --------------------------------------------------------------------------------------------------


def age_histograms(donors: pd.DataFrame, cell_ages, split_order=("train", "val", "test")):
    """Fig S1: donor ages by split, and cell ages (``donors``: the cohort's donor table)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.arange(np.floor(donors["age"].min() / 5) * 5, donors["age"].max() + 5, 5)
    for s in split_order:
        axes[0].hist(donors.loc[donors["split"] == s, "age"], bins=bins, alpha=0.75, label=s, color=SPLIT_COLORS[s])
    axes[0].set(xlabel="age (years)", ylabel="donors", title="by donor")
    axes[0].legend(frameon=False)
    axes[1].hist(cell_ages, bins=bins, color="0.35")
    axes[1].set(xlabel="age (years)", ylabel="cells", title=f"by cell ({len(cell_ages):,} cells; paper Fig S1)")
    fig.tight_layout()
    return fig


def cells_per_donor(donors: pd.DataFrame):
    """Cells per donor, youngest to oldest, coloured by split."""
    order = donors.sort_values("age")
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.bar(np.arange(len(order)), order["n_cells"], color=[SPLIT_COLORS[s] for s in order["split"]])
    ax.set(xlabel="donors, youngest to oldest", ylabel="cells", title="cells per donor (colour: split)", xticks=[])
    for s, c in SPLIT_COLORS.items():
        ax.bar([0], [0], color=c, label=s)
    ax.legend(frameon=False)
    return fig


def library_histograms(umis, genes_detected):
    """Library size (log10 UMIs per cell) and detected genes per cell."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].hist(np.log10(np.maximum(umis, 1)), bins=50, color="#4C72B0")
    axes[0].set(xlabel="log10 UMIs per cell", ylabel="cells", title="library size")
    axes[1].hist(genes_detected, bins=50, color="#55A868")
    axes[1].set(xlabel="genes detected per cell", ylabel="cells", title="detected genes")
    fig.tight_layout()
    return fig


def svd_components(scores, ages, corr: pd.DataFrame, paper_abs_r: float, max_cells: int, seed: int = 0):
    """Fig S2: cells on pairs of SVD components coloured by age, and the components' r with age.

    At most ``max_cells`` cells are drawn (a seeded random subset) so the figure stays light.
    """
    import seaborn as sns

    rng = np.random.default_rng(seed)
    show = rng.choice(len(ages), size=min(len(ages), max_cells), replace=False)
    fig = plt.figure(figsize=(12, 4.2))
    pairs = [(0, 1), (0, 2), (1, 2)] if scores.shape[1] >= 3 else [(0, 1)]
    for j, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1, 4, j + 1)
        sc = ax.scatter(scores[show, a], scores[show, b], c=ages[show], cmap=AGE_CMAP, s=3, alpha=0.6, rasterized=True)
        ax.set(xlabel=f"SVD {a + 1}", ylabel=f"SVD {b + 1}")
    fig.colorbar(sc, ax=ax, label="age")
    ax = fig.add_subplot(1, 4, 4)
    long = corr.melt(id_vars="component", value_vars=["r_cell", "r_donor"], var_name="level", value_name="r")
    long["level"] = long["level"].map({"r_cell": "cells", "r_donor": "donors"})
    sns.boxplot(data=long, x="level", y="r", ax=ax, color="0.85")
    sns.stripplot(data=long, x="level", y="r", ax=ax, size=2.5, color="#4C72B0", alpha=0.7)
    for sign in (1, -1):
        ax.axhline(sign * paper_abs_r, color="#C44E52", ls="--", lw=1)
    ax.set(title="correlation with age", xlabel="")
    fig.suptitle("Fig S2: SVD components and age")
    fig.tight_layout()
    return fig


def factor_correlations(corr: pd.DataFrame, title: str):
    """Each factor's r with age over cells against over donors."""
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    ax.scatter(corr["r_cell"], corr["r_donor"], s=14, color="#4C72B0")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    ax.set(xlabel="r with age over cells", ylabel="r with age over donors", title=title)
    return fig


def cv_path(path: pd.DataFrame, chosen_alpha: float):
    """Held-out MSE along the elastic net's alpha path, one line per l1 ratio; the chosen alpha dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for l1, group in path.groupby("l1_ratio"):
        ax.plot(group["alpha"], group["mse_mean"], marker=".", label=f"l1 ratio {l1:g}")
    ax.axvline(chosen_alpha, color="0.5", ls="--", lw=1)
    ax.set(xscale="log", xlabel="alpha", ylabel="held-out MSE (years²)", title="donor-grouped CV")
    ax.legend(frameon=False, fontsize=8)
    return fig


def training_losses(histories: dict, title: str, ylabel: str = "training MSE (z-scored age)"):
    """Per-epoch training loss of several models (``label -> history``), log scale."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, h in histories.items():
        ax.plot(h["epoch"], h["loss"], label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, yscale="log", title=title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def vae_training(history: pd.DataFrame):
    """A VAE's run: reconstruction and total loss, the KL and learning-rate schedules, the age terms."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    cols = [c for c in history.columns if c not in ("epoch", "kl_weight", "lr", "val_mae")]
    loss_curves(history, [c for c in cols if "recon" in c or c == "loss"], ax=axes[0], title="loss", logy=True)
    loss_curves(history, ["kl_weight", "lr"], ax=axes[1], title="schedules")
    loss_curves(history, [c for c in history.columns if "age" in c or c == "val_mae"], ax=axes[2], title="age terms")
    fig.tight_layout()
    return fig


def predicted_vs_true_panels(panels, empty_text: str = "no model to show on this input"):
    """One :func:`predicted_vs_true` panel per ``(title, results entry)``; a placeholder when none."""
    panels = [(title, entry) for title, entry in panels if entry and "predictions" in entry]
    if not panels:
        return placeholder_figure(empty_text)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.3), squeeze=False)
    for ax, (title, entry) in zip(axes[0], panels):
        predicted_vs_true(pd.DataFrame(entry["predictions"]), title, ax=ax, entry=entry)
    fig.tight_layout()
    return fig


def latent_space(projection, ages, donors, title: str):
    """Cells on two latent axes, coloured by donor age and by donor."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sc = axes[0].scatter(projection[:, 0], projection[:, 1], c=ages, cmap=AGE_CMAP, s=4, alpha=0.7)
    fig.colorbar(sc, ax=axes[0], label="donor age")
    codes = pd.Categorical(donors).codes
    axes[1].scatter(projection[:, 0], projection[:, 1], c=codes, cmap="tab20", s=4, alpha=0.7)
    for ax, t in zip(axes, ["by age", "by donor"]):
        ax.set(xlabel="latent PC 1", ylabel="latent PC 2", title=f"{title}: test cells {t}")
    fig.tight_layout()
    return fig


def vae_experiments(curves: pd.DataFrame | None, table: pd.DataFrame | None, null_mae: float,
                    train_null_mae: float | None = None):
    """The VAE experiments: learning curves (training- and validation-donor MAE per epoch of the
    Table 3 run) and the age-weight sweep (training vs validation MAE per weight), the null's
    validation MAE as a dashed line on both (and its training-donor MAE dotted when given); a
    placeholder when nothing ran."""
    if curves is None or table is None or table.empty:
        return placeholder_figure("VAE experiments skipped: the data are not raw counts")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    ax = axes[0]
    ax.plot(curves["epoch"] + 1, curves["train_mae"], label="training donors")
    ax.plot(curves["epoch"] + 1, curves["val_mae"], label="validation donors")
    ax.set(xlabel="epoch", ylabel="donor MAE (years)", title="Learning curves (Table 3 configuration)")
    ax = axes[1]
    sweep = table[table["kind"].isin(["table3", "age_weight"])].sort_values("age_weight")
    ax.plot(sweep["age_weight"], sweep["train_mae"], "o-", label="training donors")
    ax.errorbar(sweep["age_weight"], sweep["val_mae"],
                yerr=[sweep["val_mae"] - sweep["ci_lo"], sweep["ci_hi"] - sweep["val_mae"]], fmt="s-", capsize=3,
                label="validation donors (95% CI)")
    ax.set_xscale("log")
    ax.set(xlabel="weight of the age term (paper: 1)", ylabel="donor MAE (years)",
           title=f"Age-weight sweep ({int(sweep['epochs'].iloc[0])} epochs)")
    for ax in axes:
        ax.axhline(null_mae, color="#777777", ls="--", lw=1, label="null, validation donors")
        if train_null_mae is not None:
            ax.axhline(train_null_mae, color="#777777", ls=":", lw=1, label="null, training donors")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
