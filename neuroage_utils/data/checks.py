"""Input checks shared by every layer: matrices, per-cell vectors, counts, one age per donor.

Each raises :class:`~neuroage_utils.errors.DataValidationError` with a one-line message (problem and fix).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.errors import DataValidationError

__all__ = ["as_matrix", "per_cell", "donor_ids", "cell_ages", "donor_ages", "is_count_matrix", "require_counts",
           "require_non_negative"]


def as_matrix(X, what: str):
    """``X`` as CSR or a 2-D float ndarray, checked finite; never densifies a sparse matrix."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float32)
        values = X.data
    else:
        X = np.asarray(X)
        if X.ndim != 2:
            raise DataValidationError(f"{what} needs a cells x genes matrix, got {X.ndim} dimension(s)")
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float32)
        values = X
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataValidationError(f"{what} got an empty matrix of shape {X.shape}: pass cells and genes")
    if not np.isfinite(values).all():
        raise DataValidationError(f"{what}: the matrix holds NaN or infinite values: remove or fill them")
    return X


def per_cell(values, n: int, name: str, what: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    if len(values) != n:
        raise DataValidationError(f"{what} needs one {name} per cell: got {len(values)} for {n} cells")
    return values


def donor_ids(donors, n: int, what: str) -> np.ndarray:
    return per_cell(donors, n, "donor id", what).astype(str)


def cell_ages(ages, n: int, what: str) -> np.ndarray:
    ages = per_cell(ages, n, "age", what)
    try:
        ages = ages.astype(float)
    except ValueError:
        raise DataValidationError(f"{what}: ages are not numbers: pass ages in years") from None
    if not np.isfinite(ages).all():
        raise DataValidationError(f"{what}: some ages are NaN or infinite: fill or drop those cells")
    return ages


def donor_ages(ages, donors, what: str = "", where: str = "") -> pd.Series:
    """The one check that every donor has one age; returns that age per donor (sorted by donor id).

    ``what`` prefixes the error (the function that was called), ``where`` names the column.
    """
    frame = pd.DataFrame({"donor": np.asarray(donors).astype(str).ravel(), "age": np.asarray(ages, dtype=float).ravel()})
    spread = frame.groupby("donor", sort=True)["age"].agg(["min", "max"])
    bad = spread.index[spread["min"] != spread["max"]]
    if len(bad):
        found = sorted(frame.loc[frame["donor"] == bad[0], "age"].unique())[:3]
        raise DataValidationError(
            f"{what + ': ' if what else ''}donor {bad[0]} has more than one age "
            f"({', '.join(f'{a:g}' for a in found)}){where}: give every cell of a donor the donor's age"
        )
    return spread["min"].rename("age")


def is_count_matrix(X, chunk: int = 1 << 24) -> bool:
    """True when every stored value is a non-negative integer (raw UMI counts).

    Checked in chunks, so a paper-scale matrix needs no full-size temporary arrays.
    """
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    for start in range(0, values.size, chunk):
        part = values[start : start + chunk]
        if not ((part >= 0).all() and np.array_equal(part, np.round(part))):
            return False
    return True


def _stored_values(X) -> np.ndarray:
    """The values a matrix stores (a sparse matrix's non-zeros, a dense one's every entry)."""
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def _has_negative(values: np.ndarray) -> bool:
    return bool(values.size and (values < 0).any())


def require_counts(X, what: str = "this model") -> None:
    """Raise unless ``X`` holds raw counts; ``what`` names who needs them in the message."""
    values = _stored_values(X)
    if _has_negative(values):
        raise DataValidationError(
            f"{what} needs raw UMI counts but the matrix has negative values (min {values.min():g}): "
            "pass raw counts in X or layers['counts'], not scaled or log-normalised data"
        )
    if not is_count_matrix(X):
        example = values[values != np.round(values)][0]
        raise DataValidationError(
            f"{what} needs raw UMI counts but the matrix has non-integer values (e.g. {example:g}): "
            "pass raw counts in X or layers['counts'], or set allow_non_counts (--allow-non-counts) "
            "to run only the models that accept any values"
        )


def require_non_negative(X, what: str = "this model") -> None:
    """Raise unless every value of ``X`` is >= 0 (NMF and count transforms need it)."""
    values = _stored_values(X)
    if _has_negative(values):
        raise DataValidationError(
            f"{what} needs non-negative input but the matrix has negative values (min {values.min():g}): "
            "pass raw counts or log-normalised counts, not z-scores"
        )
