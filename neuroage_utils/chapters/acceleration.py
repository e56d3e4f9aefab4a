"""The age-acceleration chapter: does a clock's age gap recover an acceleration that was planted?

A study is simulated where the answer is known (:func:`simulate_study`): control donors to train
the clocks on, and a new study of held-out controls and *cases* whose age genes behave as if they
were ``A`` years older; every donor also keeps its own planted offset of biological from
chronological age. Each clock is fitted on the training controls (:class:`~neuroage_utils.clock.Clock`,
exactly what ``neuroage fit`` does) and applied to the new study (``neuroage predict``).

Then: the corrected gap of cases minus controls against ``A``; whether a donor's gap follows its
planted biological-minus-chronological age; the raw gap's bias against age before and after the
correction; the power to detect ``A`` against the number of donors; per-cell-type clocks; how many
donors and cells a clock needs; and, exploratory, the real T-cell donors by cohort.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd

from neuroage_utils.clock import Clock
from neuroage_utils.clock import models as clock_models
from neuroage_utils.data.cases import CASE, CONTROL, TRAIN, simulate_study, study_donors
from neuroage_utils.data.simulate import EXTRA_YEARS
from neuroage_utils.evaluation import acceleration as acc
from neuroage_utils.metrics import bootstrap_mean_ci

__all__ = ["study_donors", "simulate_study", "planted_truth", "acceleration_study", "power_table",
           "cell_type_study", "study_size_curves", "real_cohorts", "findings"]

# --------------------------------------------------------------------------------------------------
# The simulated study (its donors and generator live in data.cases)
# --------------------------------------------------------------------------------------------------


def planted_truth(adata) -> pd.DataFrame:
    """Per donor: group, age, biological age, planted acceleration and the donor's own offset."""
    d = adata.uns["simulation"]["donors"]
    truth = pd.DataFrame({"donor_id": d["donor_id"], "group": d["split"], "age": d["age"],
                          "biological_age": d["biological_age"], "extra_years": d[EXTRA_YEARS]})
    truth["bio_minus_age"] = truth["biological_age"] - truth["age"]
    truth["offset"] = truth["bio_minus_age"] - truth["extra_years"]
    return truth.set_index("donor_id")


# --------------------------------------------------------------------------------------------------
# Fitting on controls, applying to the new study
# --------------------------------------------------------------------------------------------------


def _fit(adata, model: str, P: dict, seed: int, device, **keys) -> Clock:
    return Clock.fit(adata, model=model, donor_key="donor_id", age_key="age", settings=P["clock"], seed=seed,
                     device=device, **keys)


def acceleration_study(adata, P: dict, seed: int = 0, device="cpu") -> dict:
    """Every clock of ``P['models']`` fitted on the training controls and applied to the new study.

    Returns ``{"clocks": {model: Clock}, "predictions": long table (model, donor, gaps and truth),
    "summary": one row per model}``.
    """
    truth = planted_truth(adata)
    split = adata.obs["split"].astype(str).to_numpy()
    train, new = adata[split == TRAIN].copy(), adata[split != TRAIN].copy()
    clocks, tables, rows = {}, [], []
    for model in P["models"]:
        clock = clocks[model] = _fit(train, model, P, seed, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_controls = clock.predict(new, control_key="split", control_value=CONTROL)
            by_training = clock.predict(new)
        table = by_controls.assign(model=model, gap_training_cv=by_training["age_gap_corrected"].to_numpy())
        table = table.join(truth[["group", "bio_minus_age", "offset", "extra_years"]], on="donor_id")
        tables.append(table)
        rows.append(_summary_row(model, clock, table, P, seed))
    return {"clocks": clocks, "predictions": pd.concat(tables, ignore_index=True), "summary": pd.DataFrame(rows)}


def _summary_row(model: str, clock: Clock, t: pd.DataFrame, P: dict, seed: int) -> dict:
    info = clock.members["all"].info
    cases, controls = t[t["group"] == CASE], t[t["group"] == CONTROL]
    boot = int(P["boot"])
    diff = {name: acc.group_difference(cases[col], controls[col], n_boot=boot, seed=seed)
            for name, col in (("raw", "age_gap"), ("corrected", "age_gap_corrected"),
                              ("training_cv", "gap_training_cv"), ("scaled", "age_gap_scaled"))}
    slope = acc.fit_age_trend(controls["age"], controls["predicted_age"], "new_controls")["slope"]
    r, r_ci = _correlation(t["age_gap_corrected"], t["bio_minus_age"], boot, seed)
    raw_slope = acc.gap_slope(t["age"], t["age_gap"], n_boot=boot, seed=seed)
    case_slope = acc.gap_slope(cases["age"], cases["age_gap_corrected"], n_boot=boot, seed=seed)
    cv_slope = acc.gap_slope(t["age"], t["gap_training_cv"], n_boot=boot, seed=seed)
    within_sd = float(np.sqrt((cases["age_gap_scaled"].var() + controls["age_gap_scaled"].var()) / 2))
    return {
        "model": model, "cv_mae": info["cv_mae"], "cv_mae_ci95": info["cv_mae_ci95"], "n_train": info["n_donors"],
        "planted": float(P["extra_years"]),
        **{f"diff_{k}": v["difference"] for k, v in diff.items()},
        **{f"diff_{k}_ci95": v["ci95"] for k, v in diff.items()},
        "p_corrected": diff["corrected"]["p_value"],
        "trend_slope": slope, "expected_corrected": slope * float(P["extra_years"]),
        "covers_planted": bool(diff["scaled"]["ci95"][0] <= P["extra_years"] <= diff["scaled"]["ci95"][1]),
        "covers_expected": bool(diff["corrected"]["ci95"][0] <= slope * P["extra_years"] <= diff["corrected"]["ci95"][1]),
        "r_bio": r, "r_bio_ci95": r_ci,
        "slope_raw": raw_slope["slope"], "slope_raw_ci95": raw_slope["ci95"],
        "slope_cases_corrected": case_slope["slope"], "slope_cases_corrected_ci95": case_slope["ci95"],
        "slope_training_cv": cv_slope["slope"], "slope_training_cv_ci95": cv_slope["ci95"],
        "gap_sd": within_sd, "n_cases": int(len(cases)), "n_controls": int(len(controls)),
    }


def _correlation(x, y, n_boot: int, seed: int) -> tuple[float, list[float]]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    boots = [np.corrcoef(x[i], y[i])[0, 1] for i in rng.integers(0, len(x), (n_boot, len(x)))]
    return float(np.corrcoef(x, y)[0, 1]), [float(v) for v in np.nanquantile(boots, [0.025, 0.975])]


def power_table(predictions: pd.DataFrame, model: str, planted: float, n_values, n_draws: int,
                seed: int = 0) -> pd.DataFrame:
    """Power to detect the planted acceleration with ``n`` cases and ``n`` controls: the noncentral-t
    value for a difference of ``planted`` years at the held-out donors' within-group SD of the gap in
    years (corrected gap / slope; ``analytic``) and, where the held-out donors allow, the share of
    significant tests over draws of them (``resampled``; dividing by the slope leaves t unchanged)."""
    t = predictions[predictions["model"] == model]
    cases = t.loc[t["group"] == CASE, "age_gap_scaled"].to_numpy()
    controls = t.loc[t["group"] == CONTROL, "age_gap_scaled"].to_numpy()
    sd = float(np.sqrt((cases.var(ddof=1) + controls.var(ddof=1)) / 2))
    n_values = np.asarray(n_values, dtype=int)
    analytic = pd.DataFrame({"n_per_group": n_values, "power": acc.analytic_power(planted, sd, n_values),
                             "ci_low": np.nan, "ci_high": np.nan, "kind": "analytic"})
    # draws of more than half the donors would mostly repeat the same donors: not a new study
    half = min(len(cases), len(controls)) // 2
    resampled = acc.empirical_power(cases, controls, n_values[n_values <= half], n_draws=n_draws,
                                    seed=seed).assign(kind="resampled")
    out = pd.concat([analytic, resampled], ignore_index=True)
    out.attrs["sd"] = sd
    return out


def cell_type_study(adata, P: dict, seed: int = 0, device="cpu") -> pd.DataFrame:
    """One clock per cell type beside the pooled one (``neuroage fit --cell-type-key``), each applied
    to the new study: per type the CV MAE and the corrected case-control difference."""
    split = adata.obs["split"].astype(str).to_numpy()
    clock = _fit(adata[split == TRAIN].copy(), P["cell_type_model"], P, seed, device, cell_type_key="cell_type")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = clock.predict(adata[split != TRAIN].copy(), cell_type_key="cell_type", control_key="split",
                             control_value=CONTROL)
    group = planted_truth(adata)["group"]
    rows = []
    for name, member in clock.members.items():
        t = pred[pred["cell_type"] == name]
        g = group.loc[t["donor_id"]].to_numpy()
        d = acc.group_difference(t.loc[g == CASE, "age_gap_corrected"], t.loc[g == CONTROL, "age_gap_corrected"],
                                 n_boot=int(P["boot"]), seed=seed)
        rows.append({"cell_type": name, "n_donors": member.info["n_donors"],
                     "cells_per_donor": member.info["n_cells"] / member.info["n_donors"],
                     "cv_mae": member.info["cv_mae"], "cv_mae_ci95": member.info["cv_mae_ci95"],
                     "diff_corrected": d["difference"], "diff_corrected_ci95": d["ci95"]})
    out = pd.DataFrame(rows)
    return pd.concat([out[out["cell_type"] == "all"], out[out["cell_type"] != "all"]], ignore_index=True)


# --------------------------------------------------------------------------------------------------
# How many donors and cells
# --------------------------------------------------------------------------------------------------


def study_size_curves(X, donors, ages, model: str, normalisation: str, P: dict, seed: int = 0,
                      device="cpu") -> pd.DataFrame:
    """The clock's MAE against the number of training donors and against the cells per donor.

    Donors: donor-grouped folds, each fold's model trained on a random ``n`` of the other folds'
    donors, so every point is scored on all donors (each predicted once). Cells: every donor keeps
    ``k`` random cells (a study with ``k`` cells per donor), then the same CV. ``P['size_draws']``
    draws each; the MAE is their mean and the interval a bootstrap over the donors' errors (pooled
    over draws)."""
    donors = np.asarray(donors).astype(str)
    ages = np.asarray(ages, float)
    n_donors = len(np.unique(donors))
    settings = clock_models.settings_for(P["clock"])
    most = n_donors - int(np.ceil(n_donors / min(settings["folds"], n_donors)))  # a fold's training donors
    rng = np.random.default_rng(seed + 7)
    rows = []
    for axis, values in (("donors", P["donor_counts"]), ("cells", P["cell_counts"])):
        for value in values:
            if axis == "donors":
                value = min(int(value), most)
                if any(r["axis"] == "donors" and r["value"] == value for r in rows):
                    continue
            errors, maes = [], []
            for draw in range(int(P["size_draws"])):
                if axis == "donors":
                    cv = clock_models.fewer_donor_predictions(model, X, donors, ages, normalisation, settings,
                                                              value, seed + draw, device)
                else:
                    mask = _cells_per_donor(donors, value, rng)
                    cv = clock_models.cv_predictions(model, X[mask], donors[mask], ages[mask], normalisation,
                                                     settings, seed + draw, device)
                err = (cv["predicted"] - cv["age"]).abs().to_numpy()
                maes.append(float(err.mean()))
                errors.append(err)
            pooled = np.concatenate(errors)
            rows.append({"axis": axis, "value": int(value) if value else None, "mae": float(np.mean(maes)),
                         "ci95": bootstrap_mean_ci(pooled, n_boot=int(P["boot"]), seed=seed),
                         "n_donors": n_donors, "draws": int(P["size_draws"])})
    return pd.DataFrame(rows)


def _cells_per_donor(donors: np.ndarray, k, rng) -> np.ndarray:
    """A mask keeping ``k`` random cells of every donor (all of them when it has fewer; all for ``None``)."""
    mask = np.zeros(len(donors), bool)
    for d in np.unique(donors):
        idx = np.flatnonzero(donors == d)
        mask[idx if k is None or len(idx) <= k else rng.choice(idx, int(k), replace=False)] = True
    return mask


# --------------------------------------------------------------------------------------------------
# Real T-cell donors by cohort (exploratory)
# --------------------------------------------------------------------------------------------------


def real_cohorts(rd, P: dict, seed: int = 0, device="cpu") -> pd.DataFrame:
    """Per cell type: a cell-level elastic-net clock (one row per donor) fitted on the largest cohort,
    applied to the other cohorts; the mean corrected gap per cohort (the training cohort's from its
    own out-of-fold predictions), correction on the training cohort's CV predictions."""
    rows = []
    if not rd.available:
        return pd.DataFrame()
    for key, c in rd.cell_types.items():
        counts = pd.Series(c.datasets).value_counts()
        home = counts.index[0]
        obs = pd.DataFrame({"donor_id": c.donors, "age": c.ages, "dataset": c.datasets}, index=c.donors)
        data = ad.AnnData(X=c.X, obs=obs, var=pd.DataFrame(index=c.genes))
        data = _subset(data, P.get("real_max_donors"), P.get("real_max_genes"), seed)
        obs = data.obs
        at_home = obs["dataset"].to_numpy() == home
        clock = _fit(data[at_home].copy(), "elastic_net", {**P, "clock": P["real_clock"]}, seed, device)
        member = clock.members["all"]
        cv = pd.DataFrame(member.info["cv_predictions"])
        trend = acc.fit_age_trend(cv["age"], cv["predicted"], "training_cv")
        home_gap = cv["predicted"] - trend.expected(cv["age"])
        rows.append(_cohort_row(key, home, "training cohort (out-of-fold)", home_gap, cv["age"], member, P, seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = clock.predict(data[~at_home].copy())
        pred["dataset"] = obs.loc[pred["donor_id"], "dataset"].to_numpy()
        for dataset, t in pred.groupby("dataset"):
            rows.append(_cohort_row(key, dataset, "applied", t["age_gap_corrected"], t["age"], member, P, seed))
    return pd.DataFrame(rows)


def _subset(data, max_donors, max_genes, seed):
    """At most ``max_donors`` random donors and the ``max_genes`` genes of highest mean (small profiles)."""
    if max_genes and data.n_vars > max_genes:
        mean = np.asarray(data.X.mean(axis=0)).ravel()
        data = data[:, np.sort(np.argsort(-mean)[:max_genes])]
    if max_donors and data.n_obs > max_donors:
        keep = np.random.default_rng(seed).choice(data.n_obs, max_donors, replace=False)
        data = data[np.sort(keep)]
    return data.copy()


def _cohort_row(key, dataset, role, gaps, ages, member, P, seed) -> dict:
    m = acc.mean_ci(gaps, n_boot=int(P["boot"]), seed=seed)
    return {"cell_type": key.upper(), "dataset": dataset, "role": role, "n_donors": m["n_donors"],
            "age_range": f"{np.min(ages):g}–{np.max(ages):g}", "mean_gap": m["mean"], "mean_gap_ci95": m["ci95"],
            "clock_cv_mae": member.info["cv_mae"]}


# --------------------------------------------------------------------------------------------------
# Sentences decided by the numbers
# --------------------------------------------------------------------------------------------------


def _ci(v) -> str:
    return f"{v[0]:.1f} to {v[1]:.1f}"


def findings(summary: pd.DataFrame, planted: float) -> list[str]:
    """One sentence per clock on whether its corrected gap recovered the planted acceleration."""
    out = []
    for row in summary.itertuples(index=False):
        covers = "covers" if row.covers_planted else "misses"
        expected = "covers" if row.covers_expected else "misses"
        out.append(
            f"{row.model}: the corrected gap of cases minus controls is {row.diff_corrected:.1f} years (95% CI "
            f"{_ci(row.diff_corrected_ci95)}), which {expected} the {row.expected_corrected:.1f} expected from a "
            f"clock that moves {row.trend_slope:.2f} years per year of age; divided by that slope it is "
            f"{row.diff_scaled:.1f} ({_ci(row.diff_scaled_ci95)}), which {covers} the planted {planted:g}. "
            f"The gap's correlation with each donor's planted biological-minus-chronological age is "
            f"r = {row.r_bio:.2f} ({_ci(row.r_bio_ci95)}).")
    return out


# --------------------------------------------------------------------------------------------------
# Tables for the page and entries for the results file
# --------------------------------------------------------------------------------------------------


def _name(model: str) -> str:
    from neuroage_utils.report.labels import MODEL_NAMES

    return MODEL_NAMES.get(model, model)


def recovery_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per clock: its CV MAE and the case-control difference of each gap beside what was planted."""
    return pd.DataFrame({
        "model": summary["model"].map(_name),
        "CV MAE (years)": summary["cv_mae"], "CV MAE 95% interval": summary["cv_mae_ci95"],
        "raw gap": summary["diff_raw"], "raw 95% interval": summary["diff_raw_ci95"],
        "corrected gap": summary["diff_corrected"], "corrected 95% interval": summary["diff_corrected_ci95"],
        "slope × A": summary["expected_corrected"],
        "corrected ÷ slope": summary["diff_scaled"], "÷ slope 95% interval": summary["diff_scaled_ci95"],
        "planted A": summary["planted"],
    })


def bias_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Slope of each gap on age (years of gap per year of age; 0 = no bias), with intervals."""
    return pd.DataFrame({
        "model": summary["model"].map(_name),
        "raw gap, all new donors": summary["slope_raw"], "raw 95% interval": summary["slope_raw_ci95"],
        "corrected on training CV, all new donors": summary["slope_training_cv"],
        "training-CV 95% interval": summary["slope_training_cv_ci95"],
        "corrected on new controls, cases": summary["slope_cases_corrected"],
        "cases 95% interval": summary["slope_cases_corrected_ci95"],
        "r with planted biological − chronological age": summary["r_bio"], "r 95% interval": summary["r_bio_ci95"],
    })


def cell_type_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "clock": frame["cell_type"].replace({"all": "pooled (all cells)"}), "donors": frame["n_donors"],
        "cells per donor": frame["cells_per_donor"].round(0), "CV MAE (years)": frame["cv_mae"],
        "CV MAE 95% interval": frame["cv_mae_ci95"], "corrected gap, cases − controls": frame["diff_corrected"],
        "95% interval": frame["diff_corrected_ci95"]})


def cohort_table(frame: pd.DataFrame) -> pd.DataFrame:
    if not len(frame):
        return frame
    return pd.DataFrame({
        "cell type": frame["cell_type"], "cohort": frame["dataset"], "role": frame["role"],
        "donors": frame["n_donors"], "ages (years)": frame["age_range"],
        "mean corrected gap (years)": frame["mean_gap"], "95% interval": frame["mean_gap_ci95"],
        "clock's CV MAE (years)": frame["clock_cv_mae"]})


def clock_entries(clocks: dict) -> dict:
    """Results-contract entries (``split: "cv"``) of each clock's own CV on the training controls."""
    out = {}
    for model, clock in clocks.items():
        info = clock.members["all"].info
        out[model] = {"split": "cv", "mae": info["cv_mae"], "mae_ci95": info["cv_mae_ci95"], "r": info["cv_r"],
                      "n_donors": info["n_donors"], "predictions": info["cv_predictions"],
                      "trained_on": "training controls of the planted study (not the page's cohort)"}
    return out


__all__ += ["recovery_table", "bias_table", "cell_type_table", "cohort_table", "clock_entries"]


def study_table(adata) -> pd.DataFrame:
    """The planted study's groups: donors, cells, ages and the acceleration planted in each."""
    truth = planted_truth(adata)
    cells = adata.obs.groupby("donor_id", observed=True).size()
    truth["cells"] = cells.reindex(truth.index).to_numpy()
    names = {TRAIN: "training controls", CONTROL: "held-out controls", CASE: "cases"}
    rows = []
    for group in (TRAIN, CONTROL, CASE):
        t = truth[truth["group"] == group]
        rows.append({"group": names[group], "donors": len(t), "cells": int(t["cells"].sum()),
                     "ages (years)": f"{t['age'].min():g}–{t['age'].max():g}", "mean age (years)": t["age"].mean(),
                     "planted A (years)": t["extra_years"].mean(),
                     "biological − chronological, sd (years)": t["offset"].std()})
    return pd.DataFrame(rows)


def best_model(summary: pd.DataFrame) -> str:
    """The clock with the lowest cross-validated MAE on the training controls."""
    return str(summary.sort_values("cv_mae")["model"].iloc[0])


def donors_for_power(power: pd.DataFrame, target: float = 0.8) -> int | None:
    """Fewest donors per group at which the analytic power reaches ``target`` (None if never)."""
    a = power[(power["kind"] == "analytic") & (power["power"] >= target)]
    return None if a.empty else int(a["n_per_group"].min())


def size_sentence(curves: pd.DataFrame, model: str) -> str:
    """What the study-size curves say, in numbers the figure shows."""
    d = curves[curves["axis"] == "donors"].sort_values("value")
    c = curves[curves["axis"] == "cells"]
    parts = []
    if len(d) >= 2:
        lo, hi = d.iloc[0], d.iloc[-1]
        parts.append(f"trained on {int(lo['value'])} donors the {_name(model)} misses held-out donors by {lo['mae']:.1f} "
                     f"years (95% CI {_ci(lo['ci95'])}), trained on {int(hi['value'])} by {hi['mae']:.1f} ({_ci(hi['ci95'])})")
    if len(c) >= 2:
        few = c[c["value"].notna()].sort_values("value").iloc[0]
        full = c[c["value"].isna()].iloc[0] if c["value"].isna().any() else c.sort_values("value").iloc[-1]
        parts.append(f"with {int(few['value'])} cells per donor its CV MAE is {few['mae']:.1f} ({_ci(few['ci95'])}), "
                     f"with every cell {full['mae']:.1f} ({_ci(full['ci95'])})")
    return ("On this cohort, " + "; ".join(parts) + ".") if parts else ""


__all__ += ["study_table", "best_model", "donors_for_power", "size_sentence"]


def bias_sentence(summary: pd.DataFrame) -> str:
    """What the bias table says, decided by its intervals."""
    out = []
    for row in summary.itertuples(index=False):
        raw = f"{_name(row.model)}: the raw gap moves {row.slope_raw:+.2f} years per year of age ({_ci(row.slope_raw_ci95)})"
        cv_lo, cv_hi = row.slope_training_cv_ci95
        if cv_lo <= 0 <= cv_hi:
            cv = (f"corrected on the clock's training CV predictions {row.slope_training_cv:+.2f} "
                  f"({_ci(row.slope_training_cv_ci95)}), no bias detected")
        else:
            cv = (f"corrected on the clock's training CV predictions still {row.slope_training_cv:+.2f} "
                  f"({_ci(row.slope_training_cv_ci95)}): the CV models, each fitted on fewer donors, are pulled "
                  "towards the mean differently from the final clock, so correct on new controls where there are some")
        out.append(f"- {raw}; {cv}; corrected on new controls, among the cases, {row.slope_cases_corrected:+.2f} "
                   f"({_ci(row.slope_cases_corrected_ci95)}).")
    return "\n".join(out)


__all__ += ["bias_sentence"]
