"""What a chapter page shows besides figures: its data sentence, tuning and score tables, the
training settings beside the paper's, and the paired verdicts. Plain functions of results entries
and parameters; :class:`~neuroage_utils.chapters.chapter.Chapter` passes them its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils import metrics, paper
from neuroage_utils.report import tables

__all__ = ["data_summary", "tuning_table", "paper_comparison", "training_settings", "score_rows", "verdict_lines"]


def data_summary(data: dict, *, simulated: bool, profile: str, seed: int, is_counts: bool, split_source: str) -> str:
    """One Markdown paragraph naming the data a page ran on (``data``: the results file's record)."""
    if simulated:
        origin = (
            f"the **simulated cohort** built on the study's {paper.TEXT['n_donors']} real donors (profile `{profile}`, "
            f"seed {seed}; not the study's access-controlled data)"
        )
    else:
        origin = f"**`{Path(data['path']).name}`** (user data)"
    kind = "raw UMI counts" if is_counts else "values that are not counts (count models skipped)"
    return (
        f"This page ran on {origin}: {data['n_cells']:,} cells x {data['n_genes']:,} genes from "
        f"{data['n_donors']} donors, {kind}; donor split: {split_source}; "
        f"file SHA-256 `{data['sha256'][:12]}`."
    )


def tuning_table(runs, null: dict, paper_mae=None) -> tuple[pd.DataFrame, int]:
    """A tuning table (the paper's Tables 1-4) from ``(config, entry)`` pairs scored on validation
    donors: the configuration as run, our MAE and interval, the paper's MAE beside it, and the
    ``null`` entry's validation row last. Returns the table and the index of the best run."""
    rows = []
    for i, (config, entry) in enumerate(runs, 1):
        lo, hi = entry["mae_ci95"]
        rows.append({"model": str(i), **{k: str(v) for k, v in config.items()}, "MAE": entry["mae"],
                     "95% CI": f"{lo:.1f}-{hi:.1f}"})
    table = pd.DataFrame(rows)
    best = int(table["MAE"].idxmin())
    if paper_mae is not None:
        table["paper MAE"] = list(paper_mae)[: len(table)]
    null_row = {"model": tables.null_label(null), "MAE": null["mae"],
                "95% CI": f"{null['mae_ci95'][0]:.1f}-{null['mae_ci95'][1]:.1f}"}
    if paper_mae is not None:
        null_row["paper MAE"] = paper.TEXT["null_val_mae"]
    table = pd.concat([table, pd.DataFrame([null_row])], ignore_index=True)
    config_columns = [c for c in table.columns if c not in ("MAE", "95% CI", "paper MAE")]
    table[config_columns] = table[config_columns].fillna("")
    return table, best


def paper_comparison(ours: dict, theirs: dict) -> pd.DataFrame:
    """Test MAE and r of our models (column -> results entry, or None when not run) beside the
    paper's (column -> ``(mae, r)``), rounded for display."""
    columns = {label: [e["mae"] if e else np.nan, e["r"] if e and e["r"] is not None else np.nan]
               for label, e in ours.items()}
    columns.update({label: list(values) for label, values in theirs.items()})
    return pd.DataFrame(columns, index=["test MAE (years)", "test r"]).round(2)


def training_settings(P: dict) -> pd.DataFrame:
    """The VAE training settings as run (a VAE section's parameters ``P``), beside the paper's."""
    T = paper.TRAINING
    kl = P["kl_cycle"]
    return pd.DataFrame(
        {
            "as run": [f"Adam, {P['lr']:g}", P["batch_size"],
                       f"{kl['zero_epochs']} / {kl['rise_epochs']} / {kl['hold_epochs']}", P["t0"]],
            "paper": [f"{T['optimiser']}, {T['lr']:g}", T["batch_size"],
                      " / ".join(str(v) for v in T["kl_cycle"].values()), T["t0"]],
        },
        index=["optimiser, learning rate", "batch size (cells)",
               "KL cycle: epochs at 0 / rising / at 1", "cosine warm-restart period (epochs)"],
    )


def score_rows(chosen, paper_mae: dict | None = None) -> pd.DataFrame:
    """Scored models, one row each (``chosen``: ``(label, entry)`` pairs): model, split, MAE, 95% CI,
    r, donors; ``paper_mae`` maps labels to the paper's MAE (a ``paper MAE`` column). A null row says
    which donors' mean age it predicts (two different nulls exist)."""
    rows = []
    for key, e in chosen:
        if "skipped" in e:
            rows.append({"model": key, "split": "-", "MAE": np.nan, "95% CI": "skipped: " + e["skipped"],
                         "r": np.nan, "donors": 0})
            continue
        lo, hi = e["mae_ci95"]
        rows.append({"model": key, "split": e["split"], "MAE": round(e["mae"], 2), "95% CI": f"{lo:.1f}-{hi:.1f}",
                     "r": np.nan if e["r"] is None else round(e["r"], 2), "donors": e["n_donors"]})
    table = pd.DataFrame(rows)
    if paper_mae is not None:
        table["paper MAE"] = table["model"].map(paper_mae)
    if len(table):
        table["model"] = [tables.null_label(e) if str(key).startswith("null") and "trained_on" in e else key
                          for key, e in chosen]
    return table


def verdict_lines(pairs, names: dict | None = None, seed: int = 0) -> str:
    """Markdown bullets comparing models pairwise on shared donors (paired bootstrap): ``pairs`` holds
    ``(ref_a, entry_a, ref_b, entry_b)``; a pair with a missing entry (None) says so."""
    names = names or {}
    lines = []
    for a, ea, b, eb in pairs:
        na, nb = names.get(a, a), names.get(b, b)
        if ea is None or eb is None:
            lines.append(f"- {na} vs {nb}: not compared ({a if ea is None else b} was not run on this data).")
            continue
        lines.append("- " + metrics.describe_difference(na, nb, metrics.paired_difference(ea, eb, seed=seed)))
    return "\n".join(lines)
