"""Feature transforms, one home each: log-normalisation, streamed scaling, pseudobulk and pseudocells.

Nothing here densifies a full paper-scale matrix: statistics are streamed over blocks of rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from neuroage_utils.data.checks import as_matrix, donor_ids
from neuroage_utils.errors import DataValidationError

__all__ = ["log_normalize", "column_moments", "column_scale", "SparseStandardScaler", "NORMALISATIONS", "pseudobulk", "draw_pseudocells",
           "pseudocells", "sum_rows"]

#: Normalisations of summed profiles: log1p of counts per million, counts per million, raw sums.
NORMALISATIONS = ("log_cpm", "cpm", None)

#: Rows per block when streaming over a matrix: bounds temporary memory at paper scale.
CHUNK_ROWS = 8192


def log_normalize(X, target_sum: float = 1e4, chunk_rows: int = 16384) -> sp.csr_matrix:
    """Library-size normalise each cell to ``target_sum`` counts, then log1p; zeros stay zeros.

    Returns a new CSR matrix whose values are new but whose ``indices``/``indptr`` are shared with
    ``X`` (only the values change), and works through blocks of rows, so the extra memory is one
    copy of the values (at paper scale 1.6 GB, not the 8 GB a naive float64 pass would take).
    """
    X = sp.csr_matrix(X)
    data = X.data.astype(np.float32, copy=True)
    totals = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
    indptr = X.indptr
    for start in range(0, X.shape[0], chunk_rows):
        stop = min(start + chunk_rows, X.shape[0])
        a, b = indptr[start], indptr[stop]
        block = data[a:b]
        block *= np.repeat(scale[start:stop], np.diff(indptr[start : stop + 1]))
        np.log1p(block, out=block)
    return sp.csr_matrix((data, X.indices, indptr), shape=X.shape, copy=False)


def column_moments(X, chunk_rows: int = 8192, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and population variance (float64) of a CSR or dense matrix.

    Streams over blocks of rows, so neither a squared copy of ``X`` nor a float64 copy of it is
    ever made (at paper scale either would be gigabytes); sums are accumulated in float64, which
    float32 sums over 10^5 cells would not be. ``rows`` (a boolean mask) restricts the moments to
    those rows without copying them out first (e.g. the training cells).
    """
    p = X.shape[1]
    rows = None if rows is None else np.asarray(rows, dtype=bool)
    n = X.shape[0] if rows is None else int(rows.sum())
    total = np.zeros(p)
    total_sq = np.zeros(p)
    for start in range(0, X.shape[0], chunk_rows):
        block = X[start : start + chunk_rows]
        if rows is not None:
            block = block[rows[start : start + chunk_rows]]
        if sp.issparse(block):
            values = block.data.astype(np.float64)
            total += np.bincount(block.indices, weights=values, minlength=p)
            total_sq += np.bincount(block.indices, weights=values * values, minlength=p)
        else:
            values = np.asarray(block, dtype=np.float64)
            total += values.sum(axis=0)
            total_sq += (values * values).sum(axis=0)
    mean = total / n
    return mean, np.maximum(total_sq / n - mean**2, 0.0)


class SparseStandardScaler:
    """Per-gene z-scoring fitted on training rows without densifying the matrix.

    Means and variances come from sparse sums, so fitting on 189k x 17k cells costs one pass over
    the non-zeros; ``transform`` densifies only the rows it is given (a batch). Genes with zero
    variance get scale 1 so they map to 0 rather than NaN.
    """

    def __init__(self, with_mean: bool = True, clip: float | None = None):
        self.with_mean = with_mean
        self.clip = clip

    def fit(self, X, rows=None) -> "SparseStandardScaler":
        """Fit on ``X``, or on the rows of ``X`` in boolean mask ``rows`` (no copy of them is made)."""
        if X.shape[0] == 0 or (rows is not None and not np.any(rows)):
            raise ValueError("SparseStandardScaler.fit: no rows to fit on")
        mean, var = column_moments(X, rows=rows)
        scale = np.sqrt(var)
        scale[scale == 0] = 1.0
        self.mean_ = mean.astype(np.float32) if self.with_mean else np.zeros_like(mean, dtype=np.float32)
        self.scale_ = scale.astype(np.float32)
        return self

    def transform(self, X) -> np.ndarray:
        dense = X.toarray() if sp.issparse(X) else np.asarray(X)
        out = (dense.astype(np.float32, copy=False) - self.mean_) / self.scale_
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out

    def fit_transform(self, X) -> np.ndarray:
        return self.fit(X).transform(X)


def column_scale(X) -> np.ndarray:
    """Per-gene standard deviation for z-scoring (ddof 0), with 1 for constant genes (they stay 0)."""
    _, var = column_moments(X)
    scale = np.sqrt(var)
    scale[scale == 0] = 1.0
    return scale


def _check_normalise(normalise) -> None:
    if normalise not in NORMALISATIONS:
        raise DataValidationError(f"unknown normalise={normalise!r}: use one of {NORMALISATIONS}")


def sum_rows(X, membership: sp.csr_matrix):
    """``membership @ X`` in float64: each output row sums the cells it names (with multiplicity).

    A sparse ``X`` gives CSR, a dense one an ndarray. Sums are float64 because a donor's summed
    counts can pass 2**24, where float32 stops counting exactly; ``X`` is converted one block of
    rows at a time so no float64 copy of the whole matrix is made.
    """
    out = None
    for start in range(0, X.shape[0], CHUNK_ROWS):
        stop = start + CHUNK_ROWS
        part = membership[:, start:stop] @ X[start:stop].astype(np.float64)
        out = part if out is None else out + part
    return sp.csr_matrix(out) if sp.issparse(X) else np.asarray(out)


def _require_summed_counts(sums, what: str) -> None:
    """Summed raw counts are non-negative integers; anything else means the input was not counts."""
    values = sums.data if sp.issparse(sums) else sums.ravel()
    if values.size and (values.min() < 0 or not np.array_equal(values, np.round(values))):
        raise DataValidationError(
            f"{what} sums raw UMI counts but the matrix has negative or non-integer values: "
            "pass raw counts (X or layers['counts']), not log-normalised or scaled data"
        )


def _normalise_profiles(sums, normalise, what: str):
    """Counts per million (optionally log1p) of each summed profile, as float32; zeros stay zeros.

    Raw sums (``normalise=None``) stay float64 so large counts remain exact.
    """
    if normalise is None:
        return sums
    totals = np.asarray(sums.sum(axis=1), dtype=float).ravel()
    if (totals <= 0).any():
        raise DataValidationError(
            f"{what}: a summed profile has no counts (row {int(np.argmax(totals <= 0))}): "
            "drop donors or cells without counts"
        )
    factor = 1e6 / totals
    if sp.issparse(sums):
        out = sums.copy()
        out.data = out.data * np.repeat(factor, np.diff(out.indptr))
        if normalise == "log_cpm":
            np.log1p(out.data, out=out.data)
        return out.astype(np.float32)
    out = sums * factor[:, None]
    return (np.log1p(out) if normalise == "log_cpm" else out).astype(np.float32)


def _membership(rows: np.ndarray, cells: np.ndarray, n_rows: int, n_cells: int) -> sp.csr_matrix:
    """Sparse 0/1 (or multiplicity) matrix with a 1 at (row, cell) for each pair; duplicates add."""
    data = np.ones(len(cells))
    return sp.csr_matrix(sp.coo_matrix((data, (rows, cells)), shape=(n_rows, n_cells)))


def pseudobulk(X, donors, normalise: str | None = "log_cpm"):
    """One profile per donor: the donor's counts summed over all its cells.

    Parameters
    ----------
    X
        Raw counts, cells x genes (CSR or dense).
    donors
        One donor id per cell.
    normalise
        ``"log_cpm"``: :math:`\\log(1 + 10^6\\,x_{dg} / \\sum_g x_{dg})`; ``"cpm"``: without the log;
        ``None``: the raw sums.

    Returns
    -------
    (profiles, donor_ids)
        ``profiles`` is donors x genes (CSR when ``X`` is sparse, else an ndarray; float32 once
        normalised, float64 raw sums), rows in the order of ``donor_ids`` (sorted).
    """
    what = "pseudobulk"
    _check_normalise(normalise)
    X = as_matrix(X, what)
    donors = donor_ids(donors, X.shape[0], what)
    ids, inverse = np.unique(donors, return_inverse=True)
    sums = sum_rows(X, _membership(inverse, np.arange(X.shape[0]), len(ids), X.shape[0]))
    _require_summed_counts(sums, what)
    return _normalise_profiles(sums, normalise, what), ids


def pseudocells(
    X,
    donors,
    cells_per_pseudocell: int = 15,
    n_per_donor: int = 100,
    seed: int = 0,
    normalise: str | None = "log_cpm",
    replace: bool = True,
):
    """Bootstrapped pseudocells: each the summed counts of a few cells drawn from one donor.

    Following the "BootstrapCell" scheme of Buckley et al. (2023, Nature Aging; 15 cells, 100
    pseudocells per animal), every donor gets ``n_per_donor`` pseudocells, each summing
    ``cells_per_pseudocell`` of the donor's cells drawn at random. With ``replace=True`` (a bootstrap)
    a cell may be drawn twice in one pseudocell, and donors with fewer cells than
    ``cells_per_pseudocell`` still work; with ``replace=False`` such donors are an error.
    Pseudocells of one donor share cells, so they must stay in one CV fold (grouped by donor).

    Returns
    -------
    (profiles, pseudocell_donors)
        ``profiles`` is (donors * n_per_donor) x genes, CSR when ``X`` is sparse, else an ndarray,
        normalised like :func:`pseudobulk`; ``pseudocell_donors`` names each row's donor.
    """
    what = "pseudocells"
    X = as_matrix(X, what)
    donors = donor_ids(donors, X.shape[0], what)
    ids, inverse = np.unique(donors, return_inverse=True)
    drawn = draw_pseudocells(ids, inverse, cells_per_pseudocell, n_per_donor, replace, seed, normalise)
    rows = np.repeat(np.arange(len(drawn)), cells_per_pseudocell)
    sums = sum_rows(X, _membership(rows, drawn.ravel(), len(drawn), X.shape[0]))
    _require_summed_counts(sums, what)
    return _normalise_profiles(sums, normalise, what), np.repeat(ids, n_per_donor)


def draw_pseudocells(ids, inverse, cells_per_pseudocell: int, n_per_donor: int, replace: bool, seed: int,
                     normalise="log_cpm") -> np.ndarray:
    """The cells of every pseudocell, ``(len(ids) * n_per_donor, cells_per_pseudocell)`` indices into
    the cells ``inverse`` labels (``inverse[i]``: donor of cell i as an index into ``ids``). One draw
    for the in-memory and the streamed pseudocells, so both give the same profiles."""
    what = "pseudocells"
    _check_normalise(normalise)
    if cells_per_pseudocell < 1 or n_per_donor < 1:
        raise DataValidationError(
            f"{what} needs cells_per_pseudocell >= 1 and n_per_donor >= 1, got "
            f"{cells_per_pseudocell} and {n_per_donor}"
        )
    rng = np.random.default_rng(seed)
    cells_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    drawn = []
    for donor, cells in zip(ids, cells_of):
        if not replace and len(cells) < cells_per_pseudocell:
            raise DataValidationError(
                f"{what}: donor {donor} has {len(cells)} cells, fewer than cells_per_pseudocell="
                f"{cells_per_pseudocell}: lower it or use replace=True"
            )
        if replace:
            drawn.append(rng.choice(cells, size=(n_per_donor, cells_per_pseudocell), replace=True))
        else:
            draws = [rng.choice(cells, cells_per_pseudocell, replace=False) for _ in range(n_per_donor)]
            drawn.append(np.stack(draws))
    return np.concatenate(drawn)
