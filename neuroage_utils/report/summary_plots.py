"""Figures of the conclusion page: every model's predictions in one grid, residuals against age,
and the cross-validated MAEs as a forest plot."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neuroage_utils.report.labels import MODEL_NAMES
from neuroage_utils.report.plots import SMALL, WIDTH, predicted_vs_true

__all__ = ["predicted_grid", "residual_vs_age", "cv_forest", "leakage"]


def predicted_grid(entries: dict, ncols: int = 3):
    """Predicted vs true age, one panel per ``{label: results entry}`` (donor predictions)."""
    n = max(len(entries), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.75 * nrows), squeeze=False)
    for ax, (label, entry) in zip(axes.ravel(), entries.items()):
        predicted_vs_true(pd.DataFrame(entry["predictions"]), label, ax=ax, entry=entry, legend=False)
        ax.title.set_fontsize(SMALL)
        ax.set(xlabel="true age", ylabel="predicted age")
    for ax in axes.ravel()[len(entries):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def residual_vs_age(predictions: pd.DataFrame, models=None):
    """Residual (predicted - true, averaged over repeats) against true age, per model, with a
    least-squares line: a negative slope is the pull towards the mean age at both ends."""
    mean = predictions.groupby(["model", "donor_id"]).agg(age=("age", "first"), predicted=("predicted", "mean"))
    mean = mean.reset_index()
    models = models or list(mean["model"].unique())
    fig, ax = plt.subplots(figsize=(WIDTH, 4.8))
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(models):
        sub = mean[mean["model"] == m]
        res = sub["predicted"] - sub["age"]
        ax.scatter(sub["age"], res, s=10, alpha=0.45, color=colors(i % 10))
        if sub["age"].std() > 0:
            slope, icpt = np.polyfit(sub["age"], res, 1)
            grid = np.array([sub["age"].min(), sub["age"].max()])
            ax.plot(grid, slope * grid + icpt, color=colors(i % 10), lw=1.6,
                    label=f"{MODEL_NAMES.get(m, m)} (slope {slope:+.2f})")
    ax.axhline(0, color="0.5", ls="--", lw=1)
    ax.set(xlabel="true age (years)", ylabel="predicted - true (years)", title="residual vs age (cross-validation)")
    ax.legend(fontsize=SMALL, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
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
