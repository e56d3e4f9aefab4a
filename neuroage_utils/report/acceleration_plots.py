"""Figures of the age-acceleration chapter (:mod:`neuroage_utils.chapters.acceleration`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neuroage_utils.report import plots
from neuroage_utils.report.labels import MODEL_NAMES

__all__ = ["gap_figure", "recovery_figure", "power_figure", "size_figure"]

GROUP_STYLE = {"control": ("held-out controls", "#4C72B0", "o"), "case": ("cases", "#C44E52", "s")}


def gap_figure(predictions: pd.DataFrame, model: str):
    """One clock on the new study: (a) the raw gap against age, (b) the corrected gap against age,
    (c) the corrected gap against each donor's planted biological-minus-chronological age."""
    t = predictions[predictions["model"] == model]
    fig, axes = plt.subplots(1, 3, figsize=(plots.WIDTH, 2.9))
    panels = [("age", "age_gap", "age (years)", "raw gap (years)", "a"),
              ("age", "age_gap_corrected", "age (years)", "corrected gap (years)", "b"),
              ("bio_minus_age", "age_gap_corrected", "planted biological − chron. age (y)", "corrected gap (years)", "c")]
    for ax, (x, y, xl, yl, tag) in zip(axes, panels):
        for group, (label, color, marker) in GROUP_STYLE.items():
            g = t[t["group"] == group]
            ax.scatter(g[x], g[y], s=16, color=color, marker=marker, edgecolor="white", linewidth=0.4, label=label)
            if len(g) > 2:
                slope, intercept = np.polyfit(g[x], g[y], 1)
                grid = np.linspace(g[x].min(), g[x].max(), 2)
                ax.plot(grid, intercept + slope * grid, color=color, lw=1.2)
        ax.axhline(0, color="0.6", lw=0.8, ls=":")
        ax.set_xlabel(xl, fontsize=plots.SMALL)
        ax.set_ylabel(yl, fontsize=plots.SMALL)
        ax.set_title(f"({tag})", loc="left", fontsize=plots.SMALL + 1)
    fig.suptitle(MODEL_NAMES.get(model, model), fontsize=plots.SMALL + 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=plots.SMALL, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def recovery_figure(summary: pd.DataFrame):
    """Cases minus controls per clock with 95% intervals: the raw gap, the corrected gap (with the
    value expected from the clock's slope, slope x A) and the corrected gap in years (against A)."""
    kinds = [("diff_raw", "raw gap", "#8172B2"), ("diff_corrected", "corrected gap", "#4C72B0"),
             ("diff_scaled", "corrected ÷ slope", "#C44E52")]
    fig, ax = plt.subplots(figsize=(plots.WIDTH, 0.8 + 0.75 * len(summary)))
    planted = float(summary["planted"].iloc[0])
    for i, row in enumerate(summary.itertuples(index=False)):
        for j, (col, label, color) in enumerate(kinds):
            y = i + (j - 1) * 0.22
            lo, hi = getattr(row, col + "_ci95")
            ax.plot([lo, hi], [y, y], color=color, lw=1.6)
            ax.plot(getattr(row, col), y, "o", color=color, ms=5, label=label if i == 0 else None)
        ax.plot(row.expected_corrected, i, marker="|", color="#4C72B0", ms=14, mew=2,
                label="slope × planted" if i == 0 else None)
    ax.axvline(planted, color="black", ls="--", lw=1, label=f"planted A = {planted:g} years")
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(range(len(summary)), [MODEL_NAMES.get(m, m) for m in summary["model"]], fontsize=plots.SMALL)
    ax.invert_yaxis()
    ax.set_xlabel("cases minus held-out controls (years)", fontsize=plots.SMALL)
    ax.legend(frameon=False, fontsize=plots.SMALL, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def power_figure(power: pd.DataFrame, planted: float, model: str):
    """Power to detect the planted acceleration against donors per group: noncentral t at the
    observed spread (line) and resampled held-out donors (points, Wilson 95% intervals)."""
    fig, ax = plt.subplots(figsize=(plots.WIDTH * 0.6, 3.0))
    a = power[power["kind"] == "analytic"]
    ax.plot(a["n_per_group"], a["power"], color="#4C72B0", lw=1.6, label="t-test at the observed spread")
    r = power[power["kind"] == "resampled"]
    if len(r):
        # Wilson bounds can round a hair past the estimate at 0 or 1 detections
        yerr = np.clip([r["power"] - r["ci_low"], r["ci_high"] - r["power"]], 0, None)
        ax.errorbar(r["n_per_group"], r["power"], yerr=yerr,
                    fmt="o", color="#C44E52", ms=4, capsize=2, label="resampled held-out donors")
    ax.axhline(0.8, color="0.6", ls=":", lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("donors per group (cases = controls)", fontsize=plots.SMALL)
    ax.set_ylabel(f"power (A = {planted:g} y, α = 0.05)", fontsize=plots.SMALL)
    ax.set_title(MODEL_NAMES.get(model, model), fontsize=plots.SMALL + 1)
    ax.legend(frameon=False, fontsize=plots.SMALL, loc="lower right")
    fig.tight_layout()
    return fig


def size_figure(curves: pd.DataFrame, model: str):
    """The clock's CV MAE (95% interval over donors) against training donors and cells per donor."""
    fig, axes = plt.subplots(1, 2, figsize=(plots.WIDTH, 2.9), sharey=True)
    for ax, (axis, label) in zip(axes, (("donors", "training donors"), ("cells", "cells per donor"))):
        c = curves[curves["axis"] == axis].copy()
        if not len(c):
            continue
        if axis == "cells":
            top = c["value"].dropna().max() if c["value"].notna().any() else 1
            c["x"] = c["value"].fillna(top * 2)
            ticks = [f"{int(v)}" if pd.notna(v) else "all" for v in c["value"]]
        else:
            c["x"] = c["value"]
            ticks = [f"{int(v)}" for v in c["value"]]
        # the MAE is the mean over draws, the interval pools their donors: it may sit a hair outside
        lo = np.clip(c["mae"] - c["ci95"].str[0], 0, None)
        hi = np.clip(c["ci95"].str[1] - c["mae"], 0, None)
        ax.errorbar(c["x"], c["mae"], yerr=[lo, hi], fmt="o-", color="#4C72B0", ms=4, capsize=2)
        ax.set_xscale("log")
        ax.set_xticks(c["x"], ticks, fontsize=plots.SMALL)
        ax.minorticks_off()
        ax.set_xlabel(label, fontsize=plots.SMALL)
    axes[0].set_ylabel("MAE on held-out donors (years)", fontsize=plots.SMALL)
    fig.suptitle(MODEL_NAMES.get(model, model), fontsize=plots.SMALL + 1)
    fig.tight_layout()
    return fig
