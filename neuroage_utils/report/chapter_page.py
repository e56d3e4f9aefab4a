"""What a chapter page shows besides figures: its data sentence, tuning and score tables, the
training settings beside the paper's, and the paired verdicts. Plain functions of results entries
and parameters; :class:`~neuroage_utils.chapters.chapter.Chapter` passes them its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils import metrics, paper
from neuroage_utils.report import tables

__all__ = ["data_summary", "factorisation_sentence", "tuning_table", "paper_comparison", "training_settings",
           "score_rows", "verdict_lines", "verdict_line", "predictions_table"]


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
    cap = (f" (at most {data['max_cells_per_donor']} per donor, of {data['n_cells_in_file']:,} in the file)"
           if data.get("max_cells_per_donor") is not None else "")
    return (
        f"This page ran on {origin}: {data['n_cells']:,} cells{cap} x {data['n_genes']:,} genes from "
        f"{data['n_donors']} donors, {kind}; donor split: {split_source}; "
        f"file SHA-256 `{data['sha256'][:12]}`."
    )


def factorisation_sentence(record: dict) -> str:
    """One sentence saying on which cells a factorisation chapter's SVD or NMF ran, from the record it
    wrote (``params.factorisation`` of the results file: see ``chapters.factorisations``): in streamed
    passes over every training cell of the file, in memory on the per-donor sample of a streamed file,
    or in memory on every cell; then which cells its correlations with age and the model on its scores read."""
    method, splits, k = record["method"], record["splits"], record["n_components"]
    if record["every_cell"]:
        text = (f"The {method} ({k} components) was fitted in streamed passes over all {record['fit_cells']:,} "
                f"{splits} cells of the file (products summed block by block), "
                f"and its correlations with age read all {record['scored_cells']:,} cells")
    elif record["streamed"]:
        text = (f"The {method} ({k} components) was fitted in memory on the {record['fit_cells']:,} {splits} cells of "
                f"the per-donor sample of {record['cells_in_memory']:,} cells (of {record['cells_in_file']:,} in the "
                f"streamed file; this profile does not stream the factorisations over every cell), and its "
                f"correlations with age read the sample's {record['scored_cells']:,} cells")
    else:
        text = (f"The {method} ({k} components) was fitted in memory on the {record['fit_cells']:,} {splits} cells, "
                f"and its correlations with age read all {record['scored_cells']:,} cells")
    down = record.get("downstream")
    if down:
        sample = " of the per-donor sample" if down["sample"] else ""
        text += f"; {down['model']} was trained on {down['cells']:,} {down['splits']} cells{sample}"
    return text + "."


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


def verdict_line(name_a: str, name_b: str, entry_a: dict | None, entry_b: dict | None, seed: int = 0) -> str:
    """One Markdown bullet comparing two scored models by name (paired bootstrap over their shared
    donors: better, worse or indistinguishable), or saying which of them did not run on these data."""
    if entry_a is None or entry_b is None:
        missing = name_a if entry_a is None else name_b
        return f"- {name_a} vs {name_b}: not compared ({missing} was not run on these data)."
    return "- " + metrics.describe_difference(name_a, name_b, metrics.paired_difference(entry_a, entry_b, seed=seed))


def verdict_lines(pairs, names: dict | None = None, seed: int = 0) -> str:
    """Markdown bullets comparing models pairwise on shared donors (paired bootstrap): ``pairs`` holds
    ``(ref_a, entry_a, ref_b, entry_b)``; ``names`` gives each reference a reader's name (a results key
    never reaches the page: the caller maps them); a pair with a missing entry (None) says so."""
    names = names or {}
    return "\n".join(verdict_line(names.get(a, a), names.get(b, b), ea, eb, seed=seed) for a, ea, b, eb in pairs)


PREDICTION_COLUMNS = ["group", "model", "model_name", "split", "donor_id", "age", "predicted", "abs_error"]


def predictions_table(models: dict, names: dict | None = None, group_names: dict | None = None) -> pd.DataFrame:
    """Every scored model's per-donor predictions, one row per model and donor (a page's "per-donor
    predictions" download). ``models`` is a results file's ``models``: entries by key, or groups of
    entries (the real-donor chapter's ``cd4t``, ``cd4t_cross``), named with ``group_names``."""
    names, group_names = names or {}, group_names or {}

    def rows(group, key, entry, labels):
        label = tables.null_label(entry) if key.startswith("null") and "trained_on" in entry else labels.get(key, key)
        return [{"group": group, "model": key, "model_name": label, "split": entry.get("split"),
                 "donor_id": p["donor_id"], "age": p["age"], "predicted": p["predicted"],
                 "abs_error": abs(p["predicted"] - p["age"])} for p in entry["predictions"]]

    out = []
    for key, entry in models.items():
        if not isinstance(entry, dict) or "skipped" in entry:
            continue
        if "predictions" in entry:
            out += rows("", key, entry, names)
        else:  # a group of entries
            out += [r for k, e in entry.items() if isinstance(e, dict) and e.get("predictions")
                    for r in rows(key, k, e, group_names)]
    return pd.DataFrame(out, columns=PREDICTION_COLUMNS)
