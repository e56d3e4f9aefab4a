"""The conclusion page's reader-facing blocks, each computed from results: the takeaway paragraph,
the floor (the oracle) beside the best clock, the real donors, the leakage comparison, what the
evidence does and does not show, and the reconciliation of each model's CV and single-split scores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuroage_utils import metrics, paper, results
from neuroage_utils.report.labels import MODEL_NAMES

__all__ = ["add_oracle", "floor_table", "realdata_summary", "leakage", "scope", "reconcile", "takeaway",
           "vae_claim", "NOT_CLOCKS"]

#: Results keys that are reference points, not clocks: never "the best clock".
NOT_CLOCKS = ("null", "oracle")


def _name(key: str) -> str:
    return MODEL_NAMES.get(key, key)


def add_oracle(chapter) -> dict | None:
    """On a simulated cohort, the oracle on the test donors (entry ``oracle``): it predicts each
    donor's planted biological age, the only age the expression encodes, so no clock can be expected
    to beat it. None on user data (no ground truth)."""
    uns = chapter.cohort.adata.uns
    sim = uns.get("simulation")
    if not sim:
        return None
    d = sim["donors"]
    frame = pd.DataFrame({"donor_id": [str(x) for x in d["donor_id"]], "age": d["age"],
                          "biological_age": d["biological_age"], "split": d["split"]})
    test = frame[frame["split"] == "test"]
    table = metrics.donor_table(test["biological_age"].to_numpy(), test["donor_id"].to_numpy(), test["age"].to_numpy())
    entry = chapter.add("oracle", table, "test", trained_on=[], what="each donor's planted biological age")
    entry["mae_all_donors"] = float(np.mean(np.abs(frame["biological_age"] - frame["age"])))
    return entry


def floor_table(models: dict, board: list[dict], cv: dict) -> pd.DataFrame | None:
    """The best clock beside the floor (the oracle) and the null, on the test donors and over all
    donors in cross-validation; None without an oracle."""
    oracle = models.get("oracle")
    if not oracle or "mae" not in oracle:
        return None
    clocks = [r for r in board if r["model"] not in NOT_CLOCKS]
    null = next((r for r in board if r["model"] == "null"), None)
    rows = [{"what": "oracle: each donor's planted biological age (the floor)", "test donors": oracle["mae"],
             "all donors (CV)": oracle.get("mae_all_donors")}]
    cv_clocks = {k: v for k, v in cv.items() if k not in NOT_CLOCKS}
    best_cv = min(cv_clocks, key=lambda k: cv_clocks[k]["mae"]) if cv_clocks else None
    if clocks:
        rows.append({"what": f"best clock on the test donors: {_name(clocks[0]['model'])} ({clocks[0]['section']})",
                     "test donors": clocks[0]["mae"],
                     "all donors (CV)": cv.get(clocks[0]["model"], {}).get("mae")})
    if best_cv:
        rows.append({"what": f"best clock in cross-validation: {_name(best_cv)}",
                     "test donors": next((r["mae"] for r in clocks if r["model"] == best_cv), None),
                     "all donors (CV)": cv[best_cv]["mae"]})
    rows.append({"what": "null: the training donors' mean age", "test donors": null["mae"] if null else None,
                 "all donors (CV)": cv.get("null", {}).get("mae")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Real donors
# --------------------------------------------------------------------------------------------------


def _read_realdata(out_dir) -> dict | None:
    try:
        return results.read_results(out_dir, "realdata")
    except FileNotFoundError:
        return None


def realdata_summary(out_dir) -> tuple[pd.DataFrame | None, str]:
    """Per cell type: pooled-cohort CV, CV inside each cohort, leave-one-cohort-out (with and without
    per-cohort gene centring) and the published clock, best of ours beside the null; and a sentence.
    ``(None, reason)`` when the real-donor chapter did not run or had no files."""
    doc = _read_realdata(out_dir)
    if doc is None:
        return None, "The real-donor chapter has not run in this output folder."
    models = doc["models"]
    rows, lines = [], []
    for ct in ("cd4t", "cd8t"):
        pooled, cross = models.get(ct, {}), models.get(f"{ct}_cross", {})
        if "skipped" in pooled or "null" not in pooled or "mae" not in pooled.get("null", {}):
            continue
        label = ct.upper().replace("T", " T")

        def best(group):
            ours = {k: e for k, e in group.items() if isinstance(e, dict) and "mae" in e
                    and k not in ("null", "published_clock")}
            return min(ours, key=lambda k: ours[k]["mae"]) if ours else None

        for what, group in (("pooled CV (three cohorts mixed in every fold)", pooled),
                            ("CV inside each cohort alone", models.get(f"{ct}_within", {})),
                            ("leave one cohort out", cross),
                            ("leave one cohort out, genes centred per cohort", models.get(f"{ct}_cross_centred", {}))):
            b = best(group)
            if b is None or "mae" not in group.get("null", {}):
                continue
            d = metrics.paired_difference(group[b], group["null"])
            rows.append({"cell type": label, "evaluation": what, "best of ours": _name(b), "MAE": group[b]["mae"],
                         "null MAE": group["null"]["mae"], "minus null": d["difference"],
                         "paired 95% interval": [d["ci95"][0], d["ci95"][1]], "donors": group[b]["n_donors"]})
        pc = cross.get("published_clock", {})
        if "mae" in pc:
            rows.append({"cell type": label, "evaluation": "the published clock (trained elsewhere)",
                         "best of ours": "published ridge clock", "MAE": pc["mae"],
                         "null MAE": cross.get("null", {}).get("mae"), "minus null": np.nan,
                         "paired 95% interval": np.nan, "donors": pc["n_donors"]})
    if not rows:
        return None, "The real-donor files are absent, so nothing was scored on real donors."
    table = pd.DataFrame(rows)
    for label, sub in table.groupby("cell type", sort=False):
        get = sub.set_index("evaluation")
        pooled = get.loc["pooled CV (three cohorts mixed in every fold)"]
        part = (f"{label}: pooled CV {pooled['MAE']:.2f} years ({pooled['best of ours']}) against {pooled['null MAE']:.2f} for the null")
        if "leave one cohort out" in get.index:
            loco = get.loc["leave one cohort out"]
            word = "better than" if loco["paired 95% interval"][1] < 0 else (
                "worse than" if loco["paired 95% interval"][0] > 0 else "not distinguishable from")
            part += f"; on a held-out cohort {loco['MAE']:.2f}, {word} the null's {loco['null MAE']:.2f}"
        if "leave one cohort out, genes centred per cohort" in get.index:
            cen = get.loc["leave one cohort out, genes centred per cohort"]
            part += f" ({cen['MAE']:.2f} with genes centred per cohort)"
        if "the published clock (trained elsewhere)" in get.index:
            part += f"; the published clock {get.loc['the published clock (trained elsewhere)', 'MAE']:.2f}"
        lines.append(part)
    return table, "; ".join(lines) + "."


# --------------------------------------------------------------------------------------------------
# Leakage: cells split at random against donors split
# --------------------------------------------------------------------------------------------------


def leakage(cv: dict, cell_split: dict, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """The same elastic net, cross-validated with cells split at random (donors shared between
    training and test) and with donors split, on the same donors: a table and a sentence."""
    donor, cell = cv["elastic_net"], cell_split
    ed = {p["donor_id"]: abs(p["predicted"] - p["age"]) for p in donor["predictions"]}
    ec = {p["donor_id"]: abs(p["predicted"] - p["age"]) for p in cell["predictions"]}
    d = metrics.paired_error_difference(ec, ed, seed=seed)
    table = pd.DataFrame([
        {"split": "cells at random (a test donor's other cells are in training)", "MAE": cell["mae"],
         "95% interval": cell["mae_ci95"], "r": cell["r"], "cells per fit": cell.get("cells_fitted")},
        {"split": "donors (no test donor in training)", "MAE": donor["mae"], "95% interval": donor["mae_ci95"],
         "r": donor["r"], "cells per fit": donor.get("cells_fitted")},
    ])
    ratio = donor["mae"] / cell["mae"] if cell["mae"] > 0 else np.inf
    text = (f"Split by cells, the elastic net misses donors by {cell['mae']:.2f} years; split by donors, by "
            f"{donor['mae']:.2f} ({ratio:.1f}x; paired difference {d['difference']:+.2f}, 95% interval "
            f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}, {d['n_donors']} donors). Same model, settings and number "
            f"of training cells: the gap is what a clock learns about the donors it has seen, which a cell-level "
            f"split counts as age.")
    return table, text


# --------------------------------------------------------------------------------------------------
# The VAE claim, scope, reconciliation, takeaway
# --------------------------------------------------------------------------------------------------


def vae_claim(docs: dict) -> dict:
    """:func:`~neuroage_utils.chapters.vae_experiments.paper_claim` on the VAE chapter's results."""
    from neuroage_utils.chapters.vae_experiments import paper_claim

    vae = docs.get("vae")
    if not vae:
        return paper_claim({}, None)
    budgets = vae.get("params", {}).get("vae_experiments", {}).get("step_budgets")
    return paper_claim(vae["models"], budgets)


def scope(data: dict, docs: dict, cv: dict, claim: dict, n_test: int, vae_clock: dict | None = None) -> str:
    """What this evidence does and does not show, as bullets computed from the run."""
    from neuroage_utils.chapters.vae_experiments import pct

    lines = []
    kind = "simulated" if data.get("simulated") else "user-supplied"
    lines.append(f"- **Data**: {data['n_cells']:,} {kind} cells x {data['n_genes']:,} genes from {data['n_donors']} "
                 f"donors" + (" (the simulator plants age in known genes; real nuclei may carry age differently, so "
                              "rankings here are evidence about these methods on such data, not about the brain)"
                              if data.get("simulated") else "") +
                 f"; the paper had {paper.TEXT['n_cells']:,} nuclei x {paper.TEXT['n_genes']:,} genes "
                 f"({pct(data['n_cells'] / paper.TEXT['n_cells'])} of its cells, {pct(data['n_genes'] / paper.TEXT['n_genes'])} of its genes).")
    if claim.get("share_of_paper_steps") is not None:
        lines.append(f"- **Training budgets**: the paper-budget Poisson VAE made {pct(claim['share_of_paper_steps'])} of the "
                     f"paper's optimiser steps and saw {pct(claim['share_of_paper_cell_visits'])} of the cells it saw "
                     "(smaller batches on a smaller cohort); the other chapters' networks are narrower and shorter "
                     "than the paper's (each chapter's settings table).")
    if vae_clock:
        lines.append(f"- **The VAE clock**: latent {vae_clock['latent']}, {vae_clock['epochs']} epochs on "
                     f"{vae_clock['cells']:,} cells, the VAE chapter's own Poisson configuration; the CV refits a smaller one.")
    any_cv = next(iter(cv.values()), None)
    width = None
    if any_cv:
        widths = [v["mae_ci95"][1] - v["mae_ci95"][0] for v in cv.values()]
        width = float(np.median(widths))
        lines.append(f"- **Cohort size**: {any_cv['n_donors']} donors; the single split tests {n_test}, so a test MAE "
                     f"carries an interval several years wide; the cross-validation scores every donor (median "
                     f"interval width {width:.1f} years) and carries the comparisons.")
    lines.append("- **Not shown**: how any clock does on the study's own nuclei (access-controlled), or on another "
                 "tissue; real donors here are blood T cells (the real-donor block).")
    return "\n".join(lines)


def reconcile(cv: dict, board: list[dict], differences: dict) -> pd.DataFrame:
    """Each cross-validated model beside its single-split test score: the two MAEs, how many donors
    each scores, whether the CV MAE falls inside the single split's interval (if so, the two agree
    within the noise of the few test donors), and what differs between the two fits
    (``differences``: model key -> text)."""
    single = {}
    for r in board:
        single.setdefault(r["model"], r)
    rows = []
    for key, e in sorted(cv.items(), key=lambda kv: kv[1]["mae"]):
        s = single.get(key)
        rows.append({"model": _name(key), "key": key, "CV MAE": e["mae"], "CV donors": e["n_donors"],
                     "single-split MAE": s["mae"] if s else np.nan,
                     "single-split 95% interval": s["mae_ci95"] if s else np.nan,
                     "test donors": s["n_donors"] if s else np.nan,
                     "CV minus single split": e["mae"] - s["mae"] if s else np.nan,
                     "CV MAE inside the single split's interval": (
                         ("yes" if s["mae_ci95"][0] <= e["mae"] <= s["mae_ci95"][1] else "no") if s else np.nan),
                     "what differs": differences.get(key, "the same settings; the single split scores fewer donors")})
    return pd.DataFrame(rows)


def takeaway(cv: dict, comparisons: pd.DataFrame, models: dict, claim: dict, leak: str | None,
             real: str | None) -> str:
    """The page's first paragraph, every number from this run."""
    clocks = {k: v for k, v in cv.items() if k not in NOT_CLOCKS}
    if not clocks:
        return "No model was cross-validated on these data."
    best = min(clocks, key=lambda k: clocks[k]["mae"])
    null = cv.get("null")
    parts = [f"Over all {clocks[best]['n_donors']} donors the best clock is the {_name(best)}, which misses a donor's "
             f"age by {clocks[best]['mae']:.2f} years on average in cross-validation"]
    if null:
        row = comparisons[(comparisons["a"] == best) & (comparisons["b"] == "null")]
        if len(row):
            lo, hi = row.iloc[0]["ci95"]
            parts[-1] += (f", against {null['mae']:.2f} for guessing the mean age (paired interval {lo:+.2f} to {hi:+.2f})")
    oracle = models.get("oracle")
    if oracle and "mae_all_donors" in oracle:
        gap = clocks[best]["mae"] - oracle["mae_all_donors"]
        parts.append(f"a model that knew every donor's planted biological age would still miss by "
                     f"{oracle['mae_all_donors']:.2f}, so the best clock is within {gap:.1f} years of the floor")
    if leak:
        parts.append(leak.split(". Same model")[0])
    if claim.get("sentence"):
        parts.append(claim["sentence"])
    if real:
        parts.append("On real donors: " + real.rstrip("."))
    return " ".join(p[0].upper() + p[1:] + "." for p in parts)
