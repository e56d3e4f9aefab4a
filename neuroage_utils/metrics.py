"""Donor-level evaluation: the paper's rule and the intervals it lacked.

The study predicts an age for every cell and takes the mean over a donor's cells as that donor's
predicted age; the metric is the mean absolute error over donors. With 9-11 donors per split a
single MAE is a noisy number, so every entry also carries a bootstrap 95% interval over donors, and
every comparison carries the null model (predict the mean age of the training donors for everyone).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = [
    "donor_table",
    "donor_metrics",
    "bootstrap_mae_ci",
    "model_entry",
    "repeated_entry",
    "null_table",
    "skipped_entry",
    "table_from_donor_predictions",
    "paired_difference",
    "describe_difference",
]


def donor_table(cell_pred, donors, ages) -> pd.DataFrame:
    """Average cell predictions per donor (the paper's aggregation rule).

    Parameters
    ----------
    cell_pred, donors, ages
        One value per cell: the predicted age, the donor id and the donor's true age.

    Returns
    -------
    DataFrame with one row per donor: ``donor_id``, ``age``, ``predicted``, ``n_cells``,
    sorted by donor id.
    """
    cell_pred = np.asarray(cell_pred, dtype=float).ravel()
    donors = np.asarray(donors).astype(str).ravel()
    ages = np.asarray(ages, dtype=float).ravel()
    if not (len(cell_pred) == len(donors) == len(ages)):
        raise ValueError(
            f"donor_table needs one prediction, donor and age per cell; got {len(cell_pred)}, "
            f"{len(donors)} and {len(ages)}"
        )
    if not np.all(np.isfinite(cell_pred)):
        raise ValueError("donor_table: some cell predictions are NaN or infinite (the model diverged)")
    frame = pd.DataFrame({"donor_id": donors, "age": ages, "predicted": cell_pred})
    table = frame.groupby("donor_id", sort=True).agg(
        age=("age", "first"), predicted=("predicted", "mean"), n_cells=("predicted", "size")
    )
    return table.reset_index()


#: Fewer donors than this and a split is too small to score: no results entry carries its MAE.
MIN_SCORED_DONORS = 5
#: Fewer donors than this and r is null (two points always lie on a line: r = +-1 says nothing).
MIN_R_DONORS = 3


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < MIN_R_DONORS or np.allclose(x, x[0]) or np.allclose(y, y[0]):
        return float("nan")  # r is undefined for a constant prediction (the null model)
    return float(np.corrcoef(x, y)[0, 1])


def donor_metrics(table: pd.DataFrame) -> dict:
    """Donor-level MAE (years), Pearson r and the number of donors of a :func:`donor_table`."""
    err = np.abs(table["predicted"].to_numpy() - table["age"].to_numpy())
    return {
        "mae": float(err.mean()),
        "r": _pearson(table["predicted"].to_numpy(), table["age"].to_numpy()),
        "n_donors": int(len(table)),
    }


def bootstrap_mean_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of per-donor ``values`` (errors, or paired
    differences of errors), resampling donors with replacement.

    Donors, not cells, are the unit: resampling cells would pretend we have 10^5 independent
    observations when we have a handful of people.
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise ValueError("bootstrap: no donors to resample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def bootstrap_mae_ci(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the donor-level MAE of a :func:`donor_table`."""
    err = np.abs(table["predicted"].to_numpy() - table["age"].to_numpy())
    return bootstrap_mean_ci(err, n_boot=n_boot, seed=seed, level=level)


def pearson_or_none(x, y) -> float | None:
    """Pearson r, or None where it is undefined (a constant prediction), as the results contract has it."""
    r = _pearson(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return None if np.isnan(r) else r


def model_entry(table: pd.DataFrame, split: str, seed: int = 0, **extra) -> dict:
    """One model's entry of the results contract (see README, "Results contract")."""
    metrics = donor_metrics(table)
    entry = {
        "split": split,
        "mae": metrics["mae"],
        "r": None if np.isnan(metrics["r"]) else metrics["r"],
        "mae_ci95": bootstrap_mae_ci(table, seed=seed),
        "n_donors": metrics["n_donors"],
        "predictions": [
            {"donor_id": str(row.donor_id), "age": float(row.age), "predicted": float(row.predicted)}
            for row in table.itertuples(index=False)
        ],
    }
    entry.update(extra)
    return entry


def repeated_entry(donors, ages, predicted, n_boot: int = 2000, seed: int = 0) -> dict:
    """The one scorer of out-of-fold predictions (repeated cross-validation, held-out cohorts).

    ``predicted`` is donors x repeats (one out-of-fold prediction per repeat; a vector for one). A
    donor's prediction is its mean over repeats and its error the absolute error of that prediction
    (one MAE definition: the MAE is recomputable from the entry's ``predictions``); the MAE is the
    mean over donors, with a percentile bootstrap interval over donors; ``r`` is Pearson's r of the
    repeat-mean prediction with age (None where undefined); ``mae_per_repeat`` the MAE of each repeat
    (the spread from refolding).
    """
    predicted = np.asarray(predicted, float)
    if predicted.ndim == 1:
        predicted = predicted[:, None]
    if not np.isfinite(predicted).all():
        raise ValueError("some predictions are NaN or infinite (the model diverged)")
    ages = np.asarray(ages, float)
    abs_errors = np.abs(predicted - ages[:, None])
    mean_pred = predicted.mean(axis=1)
    errors = np.abs(mean_pred - ages)
    return {
        "mae": float(errors.mean()), "r": pearson_or_none(mean_pred, ages),
        "mae_ci95": bootstrap_mean_ci(errors, n_boot=n_boot, seed=seed), "n_donors": int(len(ages)),
        "mae_per_repeat": [float(v) for v in abs_errors.mean(axis=0)],
        "predictions": [{"donor_id": str(d), "age": float(a), "predicted": float(p), "abs_error": float(e)}
                        for d, a, p, e in zip(donors, ages, mean_pred, errors)],
    }


def null_table(train_donor_ages: Iterable[float], eval_donors, eval_ages) -> pd.DataFrame:
    """The null model: every evaluated donor is predicted the mean age of the training donors.

    ``train_donor_ages`` holds one age per training donor (not per cell: a donor with many cells must
    not pull the mean towards its own age).
    """
    mean_age = float(np.mean(np.asarray(list(train_donor_ages), dtype=float)))
    eval_donors = np.asarray(eval_donors).astype(str)
    return donor_table(np.full(len(eval_donors), mean_age), eval_donors, eval_ages)


def skipped_entry(reason: str) -> dict:
    """The results-contract entry of a model that cannot run on this input."""
    return {"skipped": str(reason)}


def table_from_donor_predictions(predicted: pd.Series, donors: pd.DataFrame) -> pd.DataFrame:
    """A donor table from one prediction per donor (pseudobulk-style clocks).

    ``predicted`` is indexed by donor id; ``donors`` has ``donor_id`` and ``age`` columns.
    """
    ages = donors.set_index("donor_id")["age"]
    missing = set(predicted.index.astype(str)) - set(ages.index.astype(str))
    if missing:
        raise ValueError(f"predictions for unknown donors: {sorted(missing)[:3]}")
    ids = predicted.index.astype(str)
    return donor_table(predicted.to_numpy(), ids, ages.loc[ids].to_numpy())


def paired_error_difference(errors_a, errors_b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a's per-donor error minus b's on the donors both have (mappings donor -> error), with a
    paired bootstrap 95% interval (donors resampled together, so a donor's shared difficulty cancels).

    Negative means a is better. ``excludes_zero`` says whether the interval excludes 0.
    """
    shared = sorted(set(errors_a) & set(errors_b))
    if not shared:
        raise ValueError("paired difference: the two models share no donor")
    diff = np.array([errors_a[d] - errors_b[d] for d in shared])
    lo, hi = bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed)
    return {"difference": float(diff.mean()), "ci95": [lo, hi], "n_donors": len(shared),
            "excludes_zero": bool(lo > 0 or hi < 0)}


def paired_difference(entry_a: dict, entry_b: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """MAE of model a minus MAE of model b (results entries) on the donors both scored, with a paired
    bootstrap 95% interval (:func:`paired_error_difference`). Negative means a is better.
    """
    def errors(entry):
        return {p["donor_id"]: p.get("abs_error", abs(p["predicted"] - p["age"])) for p in entry["predictions"]}

    return paired_error_difference(errors(entry_a), errors(entry_b), n_boot=n_boot, seed=seed)


def describe_difference(name_a: str, name_b: str, comparison: dict) -> str:
    """One sentence for the book: how model a compares with model b on the donors both scored, and
    whether that is evidence. Three outcomes, decided by the paired interval of a's MAE minus b's:
    better (interval below zero), worse (above zero), or indistinguishable (it includes zero).

    >>> describe_difference("NMF + MLP", "the null model", {"difference": -2.5, "ci95": [-4.0, -1.0],
    ...                     "n_donors": 11, "excludes_zero": True})  # doctest: +NORMALIZE_WHITESPACE
    'NMF + MLP misses the 11 donors by 2.50 years less on average than the null model (paired bootstrap
    95% interval of the difference: -4.00 to -1.00 years): better, the interval excludes zero.'
    """
    d, (lo, hi) = comparison["difference"], comparison["ci95"]
    n = comparison["n_donors"]
    subject = name_a[:1].upper() + name_a[1:]
    interval = f"(paired bootstrap 95% interval of the difference: {lo:+.2f} to {hi:+.2f} years)"
    if round(abs(d), 2) == 0:
        amount = f"misses the {n} donors by as much on average as {name_b}"
    else:
        amount = f"misses the {n} donors by {abs(d):.2f} years {'less' if d < 0 else 'more'} on average than {name_b}"
    if comparison["excludes_zero"]:
        verdict = "better, the interval excludes zero" if d < 0 else "worse, the interval excludes zero"
    else:
        verdict = f"indistinguishable, the interval includes zero, so these {n} donors cannot tell the two apart"
    return f"{subject} {amount} {interval}: {verdict}."


def gene_recovery(coef_table: pd.DataFrame, var: pd.DataFrame, n_top: int = 15) -> dict:
    """How well a clock's selected genes (``coef_table``: a ``gene`` column, strongest first) find
    the true age genes of a simulated cohort (``var['age_gene']``, ``var['age_pattern']``).

    Returns ``top`` (the top ``n_top`` rows with their truth), ``table`` (non-zero genes, true age
    genes among them, precision, chance precision = the share of age genes, enrichment, recall),
    and the unrounded ``precision`` and ``chance``.
    """
    top = coef_table.head(n_top).copy()
    top["true age gene"] = var.loc[top["gene"], "age_gene"].to_numpy()
    top["true pattern"] = var.loc[top["gene"], "age_pattern"].to_numpy()
    chosen = coef_table["gene"].to_numpy()
    hits = int(var.loc[chosen, "age_gene"].sum())
    precision = hits / max(len(chosen), 1)
    base = float(var["age_gene"].mean())
    recovery = pd.Series({"non-zero genes": len(chosen), "true age genes among them": hits,
                          "precision": round(precision, 3), "chance precision": round(base, 3),
                          "enrichment over chance": round(precision / base, 1) if base else np.nan,
                          "recall of age genes": round(hits / int(var["age_gene"].sum()), 3)}, name="value")
    return {"top": top, "table": recovery, "precision": precision, "chance": base}

