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
    "null_table",
    "skipped_entry",
    "table_from_donor_predictions",
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


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.allclose(x, x[0]) or np.allclose(y, y[0]):
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


def bootstrap_mae_ci(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the donor-level MAE, resampling donors with replacement.

    Donors, not cells, are the unit: resampling cells would pretend we have 10^5 independent
    observations when we have a handful of people.
    """
    err = np.abs(table["predicted"].to_numpy() - table["age"].to_numpy())
    if len(err) == 0:
        raise ValueError("bootstrap_mae_ci: no donors to resample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(err), size=(n_boot, len(err)))
    means = err[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


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
