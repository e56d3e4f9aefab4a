"""Figures of the real-donor chapter (:mod:`neuroage_utils.data.realdata`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neuroage_utils.report import plots
from neuroage_utils.report.labels import MODEL_LABELS
from neuroage_utils.data.realdata import CELL_TYPES

__all__ = ["mae_overview", "predicted_vs_true_panels", "cross_cohort_heatmap"]

_SPLIT_STYLE = {"": ("cross-validation (within cohorts)", "o", "#4C72B0"),
                "_cross": ("across cohorts (dataset held out)", "s", "#C44E52")}


def _scored(group: dict) -> dict:
    return {k: e for k, e in group.items() if isinstance(e, dict) and "mae" in e}


def mae_overview(models: dict):
    """Donor-level MAE with 95% intervals per model: CV and cross-cohort, one panel per cell type;
    the dotted line is the null model's cross-validated MAE."""
    fig, axes = plt.subplots(1, len(CELL_TYPES), figsize=(plots.WIDTH, 3.8), sharex=True)
    for ax, (ct, (label, _, _)) in zip(np.atleast_1d(axes), CELL_TYPES.items()):
        order = [k for k in MODEL_LABELS if k in _scored(models.get(ct, {})) or k in _scored(models.get(ct + "_cross", {}))]
        ypos = {k: i for i, k in enumerate(order)}
        for j, (suffix, (name, marker, color)) in enumerate(_SPLIT_STYLE.items()):
            for k, e in _scored(models.get(ct + suffix, {})).items():
                y = ypos[k] + (0.15 if j else -0.15)
                lo, hi = e["mae_ci95"]
                ax.plot([lo, hi], [y, y], color=color, lw=1.5)
                ax.plot(e["mae"], y, marker=marker, color=color, ms=6, ls="none",
                        label=name if k == order[-1] or k == "null" else None)
        null = _scored(models.get(ct, {})).get("null")
        if null:
            ax.axvline(null["mae"], color="0.5", ls=":", lw=1)
        ax.set_yticks(range(len(order)), [MODEL_LABELS[k] for k in order], fontsize=plots.SMALL)
        ax.invert_yaxis()
        ax.set(xlabel="donor-level MAE (years)", title=label)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=2, frameon=False, fontsize=plots.SMALL)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def predicted_vs_true_panels(models: dict):
    """Predicted against true age per donor: the best cross-validated model of each cell type, and
    the published clock on the same donors (when it ran)."""
    panels = []
    for ct, (label, _, _) in CELL_TYPES.items():
        cv = {k: e for k, e in _scored(models.get(ct, {})).items() if k != "null"}
        if cv:
            best = min(cv, key=lambda k: cv[k]["mae"])
            # no interval in the panel: the table's MAE and interval are over per-repeat errors, while the
            # points (and the panel's MAE) are the predictions averaged over repeats
            panels.append((f"{ct.upper()}: {MODEL_LABELS[best]} (CV)", dict(cv[best], mae_ci95=None)))
        pc = _scored(models.get(ct + "_cross", {})).get("published_clock")
        if pc:
            panels.append((f"{ct.upper()}: published clock", pc))
    if not panels:
        return plots.placeholder_figure("no model was scored")
    ncol = min(len(panels), 2)
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(plots.WIDTH, 3.7 * nrow), squeeze=False)
    for ax, (title, entry) in zip(axes.ravel(), panels):
        plots.predicted_vs_true(pd.DataFrame(entry["predictions"]), title, ax=ax,
                                entry=entry if entry.get("mae_ci95") else None, legend=False)
        for coll in ax.collections:
            coll.set_sizes([10])
        ax.title.set_fontsize(10)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def cross_cohort_heatmap(models: dict):
    """Cross-cohort MAE per model (rows) and held-out dataset (columns), one panel per cell type."""
    import seaborn as sns

    frames = []
    for ct in CELL_TYPES:
        group = _scored(models.get(ct + "_cross", {}))
        table = pd.DataFrame({MODEL_LABELS.get(k, k): {d: v["mae"] for d, v in e["by_dataset"].items()}
                              for k, e in group.items()}).T
        frames.append((ct, table))
    frames = [(ct, t) for ct, t in frames if not t.empty]
    if not frames:
        return plots.placeholder_figure("no cross-cohort test ran")
    fig, axes = plt.subplots(len(frames), 1, figsize=(plots.WIDTH, 2.2 + 0.35 * max(len(t) for _, t in frames) * len(frames)),
                             squeeze=False)
    axes = axes[:, 0]
    vmax = max(float(np.nanmax(t.to_numpy())) for _, t in frames)
    for ax, (ct, table) in zip(np.atleast_1d(axes), frames):
        sns.heatmap(table, annot=True, fmt=".1f", cmap="rocket_r", vmin=0, vmax=vmax, cbar=ax is np.atleast_1d(axes)[-1],
                    ax=ax, annot_kws={"fontsize": plots.SMALL}, cbar_kws={"label": "MAE (years)"})
        ax.set(title=f"{CELL_TYPES[ct][0]}: held-out dataset", xlabel="", ylabel="")
        ax.tick_params(labelsize=plots.SMALL)
    fig.tight_layout()
    return fig
