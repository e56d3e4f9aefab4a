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
    """Draw a network from its layer table (``models.vae.layer_table``): one bar per Linear layer,
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
