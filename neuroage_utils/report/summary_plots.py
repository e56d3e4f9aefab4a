"""Figures of the conclusion page: every model's predictions in one grid, residuals against age,
and the cross-validated MAEs as a forest plot."""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neuroage_utils.report.labels import MODEL_NAMES
from neuroage_utils.report.plots import SMALL, WIDTH, predicted_vs_true

__all__ = ["predicted_grid", "residual_vs_age", "cv_forest", "leakage", "OKABE_ITO", "LINE_STYLES"]

#: A colour-blind-safe palette (Okabe & Ito 2008), black last; lines also differ in dash and marker.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LINE_STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def predicted_grid(entries: dict, ncols: int = 3):
    """Predicted vs true age, one panel per ``{label: results entry}`` (donor predictions), on shared
    axes (every panel the same age range, so panels compare at a glance). The statistics go under
    each panel's title, not in a box over the donors; long names wrap."""
    n = max(len(entries), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    frames = {label: pd.DataFrame(entry["predictions"]) for label, entry in entries.items()}
    values = np.concatenate([np.r_[f["age"].to_numpy(float), f["predicted"].to_numpy(float)] for f in frames.values()]
                            or [np.zeros(1)])
    limits = (values.min() - 3, values.max() + 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.9 * nrows), squeeze=False, sharex=True, sharey=True)
    for ax, (label, entry) in zip(axes.ravel(), entries.items()):
        predicted_vs_true(frames[label], textwrap.fill(label, 30), ax=ax, entry=entry, legend=False, limits=limits,
                          stats="title")
        ax.set(xlabel="", ylabel="")
    for ax in axes.ravel()[len(entries):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("predicted age")
    for col in range(ncols):  # the lowest panel drawn in each column carries the x label and ticks
        drawn = [axes[row, col] for row in range(nrows) if row * ncols + col < len(entries)]
        if drawn:
            drawn[-1].set_xlabel("true age")
            drawn[-1].xaxis.set_tick_params(labelbottom=True)
    fig.tight_layout(h_pad=1.2, w_pad=0.8)
    return fig


def residual_vs_age(predictions: pd.DataFrame, models=None):
    """Residual (predicted - true, averaged over repeats) against true age, per model, with a
    least-squares line: a negative slope is the pull towards the mean age at both ends."""
    mean = predictions.groupby(["model", "donor_id"]).agg(age=("age", "first"), predicted=("predicted", "mean"))
    mean = mean.reset_index()
    models = models or list(mean["model"].unique())
    fig, ax = plt.subplots(figsize=(WIDTH, 4.8))
    for i, m in enumerate(models):
        sub = mean[mean["model"] == m]
        res = sub["predicted"] - sub["age"]
        color = OKABE_ITO[i % len(OKABE_ITO)]
        style = LINE_STYLES[(i // len(OKABE_ITO) + i) % len(LINE_STYLES)]
        ax.scatter(sub["age"], res, s=12, alpha=0.5, color=color, marker=MARKERS[i % len(MARKERS)], linewidths=0)
        if sub["age"].std() > 0:
            slope, icpt = np.polyfit(sub["age"], res, 1)
            grid = np.array([sub["age"].min(), sub["age"].max()])
            ax.plot(grid, slope * grid + icpt, color=color, ls=style, lw=2.0,
                    marker=MARKERS[i % len(MARKERS)], markevery=[0, 1], markersize=5,
                    label=f"{MODEL_NAMES.get(m, m)} (slope {slope:+.2f})")
    ax.axhline(0, color="0.5", ls="--", lw=1)
    ax.set(xlabel="true age (years)", ylabel="predicted - true (years)", title="residual vs age (cross-validation)")
    ax.legend(fontsize=SMALL, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              handlelength=3.0)
    return fig


def cv_forest(summary: dict):
    """CV MAE with its 95% interval per model, best at the top; the null's MAE as a dashed line."""
    keys = sorted(summary, key=lambda k: summary[k]["mae"], reverse=True)
    fig, ax = plt.subplots(figsize=(WIDTH, 0.4 * len(keys) + 1.2))
    for i, k in enumerate(keys):
        s = summary[k]
        lo, hi = s["mae_ci95"]
        ax.plot([lo, hi], [i, i], color="#4C72B0", lw=2)
        ax.scatter([s["mae"]], [i], color="#C44E52" if k == "null" else "#4C72B0", zorder=3, s=30)
        for v in s["mae_repeats"]:
            ax.scatter([v], [i], marker="|", color="0.4", s=40, zorder=2)
    if "null" in summary:
        ax.axvline(summary["null"]["mae"], color="#C44E52", ls="--", lw=1)
    ax.set_yticks(range(len(keys)), [MODEL_NAMES.get(k, k) for k in keys], fontsize=SMALL)
    ax.set(xlabel="cross-validated MAE (years)", title="repeated donor-grouped CV (ticks: single repeats)")
    return fig


def leakage(donor_split: dict, cell_split: dict):
    """The same model's cross-validated predictions per donor with cells split at random (donors
    shared between training and test) and with donors split, side by side, each with its MAE."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.3), sharex=True, sharey=True)
    for ax, (title, entry) in zip(axes, (("cells split at random", cell_split), ("donors split", donor_split))):
        predicted_vs_true(pd.DataFrame(entry["predictions"]), title, ax=ax, entry=entry, legend=False)
        ax.title.set_fontsize(SMALL)
        ax.set(xlabel="true age", ylabel="predicted age")
    fig.tight_layout()
    return fig
