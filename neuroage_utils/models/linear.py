"""Elastic-net age clocks at three resolutions: cells, pseudocells and whole donors.

All three fit the same penalised linear model on z-scored features ``Z`` (one row per sample),

.. math::

    \\min_{b_0, w}\\; \\frac{1}{2n}\\sum_i s_i\\,(y_i - b_0 - z_i^\\top w)^2
        + \\alpha\\big(\\rho\\,\\lVert w\\rVert_1 + \\tfrac{1-\\rho}{2}\\lVert w\\rVert_2^2\\big),

with ``y`` the donor's age in years, ``s_i`` optional sample weights, and the penalty strength
``alpha`` and mixing ``rho`` (``l1_ratio``) chosen by cross-validation whose folds never split a
donor: cells of one person are not independent samples, so a donor seen in training would leak its
age into the held-out fold.

They differ in what a sample is:

* **cell clock** (:func:`fit_elastic_net`, the paper's baseline): one row per cell; a donor's
  predicted age is the mean of its cells' predictions.
* **pseudobulk clock** (:func:`fit_pseudobulk_elastic_net`): one row per donor, the donor's summed
  counts as log-CPM. Averaging thousands of cells removes most of the sampling noise, so this is
  the strongest simple clock, but it trains on only as many samples as there are donors.
* **pseudocell clock** (:func:`fit_pseudocell_elastic_net`): the "BootstrapCell" idea of Buckley et
  al. (2023, Nature Aging): many pseudocells per donor, each the summed counts of a few randomly
  drawn cells. It sits between the two: less noisy than a cell, more samples than donors.

Every clock has ``predict_donors(X, donors) -> pandas.Series`` (predicted age per donor, from the
donor's cells), so the three are compared under one rule.

Scaling without densifying. z-scoring a sparse matrix would fill it with non-zeros. Because the
model has an intercept, centring the columns changes only ``b_0``; we therefore divide each gene by
its training standard deviation (which keeps zeros) and let scikit-learn centre implicitly, as it
does for sparse input. The coefficients equal those of an elastic net on fully z-scored data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNetCV, enet_path
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from neuroage_utils.data import DataValidationError, column_moments

__all__ = [
    "column_scale",
    "grouped_folds",
    "ElasticNetClock",
    "fit_elastic_net",
    "pseudobulk",
    "pseudocells",
    "PseudobulkClock",
    "PseudocellClock",
    "fit_pseudobulk_elastic_net",
    "fit_pseudocell_elastic_net",
]

#: Normalisations of summed profiles: log1p of counts per million, counts per million, raw sums.
NORMALISATIONS = ("log_cpm", "cpm", None)


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _as_matrix(X, what: str):
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


def _per_cell(values, n: int, name: str, what: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    if len(values) != n:
        raise DataValidationError(f"{what} needs one {name} per cell: got {len(values)} for {n} cells")
    return values


def _donor_ids(donors, n: int, what: str) -> np.ndarray:
    return _per_cell(donors, n, "donor id", what).astype(str)


def _ages(ages, n: int, what: str) -> np.ndarray:
    ages = _per_cell(ages, n, "age", what)
    try:
        ages = ages.astype(float)
    except ValueError:
        raise DataValidationError(f"{what}: ages are not numbers: pass ages in years") from None
    if not np.isfinite(ages).all():
        raise DataValidationError(f"{what}: some ages are NaN or infinite: fill or drop those cells")
    return ages


def _donor_ages(ages: np.ndarray, donors: np.ndarray, what: str) -> pd.Series:
    """One age per donor (index sorted like ``np.unique``); a donor with two ages is an error."""
    frame = pd.DataFrame({"donor": donors, "age": ages})
    spread = frame.groupby("donor", sort=True)["age"].agg(["min", "max"])
    bad = spread.index[spread["min"] != spread["max"]]
    if len(bad):
        raise DataValidationError(
            f"{what}: donor {bad[0]} has more than one age: give every cell of a donor the donor's age"
        )
    return spread["min"].rename("age")


#: Rows per block when streaming over a matrix: bounds temporary memory at paper scale.
CHUNK_ROWS = 8192


def column_scale(X) -> np.ndarray:
    """Per-gene standard deviation for z-scoring (ddof 0), with 1 for constant genes (they stay 0)."""
    _, var = column_moments(X)
    scale = np.sqrt(var)
    scale[scale == 0] = 1.0
    return scale


# --------------------------------------------------------------------------------------------------
# Donor-grouped cross-validation
# --------------------------------------------------------------------------------------------------


def grouped_folds(groups, n_splits: int = 5, seed: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits in which every donor (group) falls in exactly one test fold.

    Parameters
    ----------
    groups
        One donor id per row.
    n_splits
        Number of folds, at least 2 and at most the number of donors.
    seed
        ``None`` uses scikit-learn's deterministic assignment (largest donors first, balancing the
        number of rows per fold); an integer shuffles donors into folds reproducibly.

    Returns
    -------
    A list of ``(train_index, test_index)`` integer arrays, usable as ``cv=`` in scikit-learn.
    """
    groups = np.asarray(groups).astype(str).ravel()
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise DataValidationError(f"cross-validation needs at least 2 folds, got n_splits={n_splits}")
    if n_groups < n_splits:
        raise DataValidationError(
            f"{n_groups} donor(s) cannot fill {n_splits} donor-grouped folds: "
            f"pass at least {n_splits} donors or lower n_splits"
        )
    splitter = GroupKFold(n_splits, shuffle=seed is not None, random_state=seed)
    dummy = np.zeros((len(groups), 1))  # the splitter only needs the number of rows
    return [(train, test) for train, test in splitter.split(dummy, groups=groups)]


# --------------------------------------------------------------------------------------------------
# The clock object
# --------------------------------------------------------------------------------------------------


@dataclass
class ElasticNetClock:
    """A fitted elastic-net age clock.

    Attributes
    ----------
    model
        The fitted :class:`sklearn.linear_model.ElasticNetCV` (on features divided by ``scale_``).
    scale_
        Per-gene divisor (training standard deviation, 1 for constant genes; all ones when the clock
        was fitted with ``scale=False``).
    converged
        False when coordinate descent hit ``max_iter`` somewhere on the CV path (usually at the
        weakest penalties, which CV rarely picks); raise ``max_iter`` if the chosen fit is affected.
    """

    model: ElasticNetCV
    scale_: np.ndarray = field(repr=False)
    converged: bool = True

    # -- fitted hyper-parameters and coefficients ------------------------------------------------
    @property
    def alpha_(self) -> float:
        """Penalty strength chosen by donor-grouped CV."""
        return float(self.model.alpha_)

    @property
    def l1_ratio_(self) -> float:
        """L1 / L2 mixing chosen by donor-grouped CV (1 = lasso)."""
        return float(self.model.l1_ratio_)

    @property
    def coef_(self) -> np.ndarray:
        """Coefficients per standard deviation of each gene (years per SD), comparable across genes."""
        return np.asarray(self.model.coef_, dtype=float)

    @property
    def intercept_(self) -> float:
        return float(self.model.intercept_)

    @property
    def n_nonzero_(self) -> int:
        """Number of genes the clock uses."""
        return int(np.count_nonzero(self.coef_))

    @property
    def n_features_in_(self) -> int:
        return int(len(self.scale_))

    def coef_table(self, gene_names=None, nonzero_only: bool = True) -> pd.DataFrame:
        """Genes and coefficients (years per SD of expression), sorted by decreasing ``|coef|``."""
        if gene_names is None:
            gene_names = np.arange(self.n_features_in_)
        names = np.asarray(gene_names).astype(str)
        if len(names) != self.n_features_in_:
            raise DataValidationError(
                f"coef_table got {len(names)} gene names for a clock on {self.n_features_in_} genes: "
                "pass the names of the genes the clock was fitted on"
            )
        table = pd.DataFrame({"gene": names, "coef": self.coef_})
        if nonzero_only:
            table = table[table["coef"] != 0]
        order = np.argsort(-np.abs(table["coef"].to_numpy()), kind="stable")
        return table.iloc[order].reset_index(drop=True)

    def cv_path(self) -> pd.DataFrame:
        """The cross-validation curve: mean and standard error over folds of the held-out MSE.

        One row per (``l1_ratio``, ``alpha``); ``selected`` marks the chosen pair. Fold MSEs are
        over rows (cells, pseudocells or donors, depending on the clock).
        """
        mse = np.asarray(self.model.mse_path_)  # (n_l1, n_alphas, n_folds), or (n_alphas, n_folds)
        alphas = np.asarray(self.model.alphas_)
        l1 = np.atleast_1d(self.model.l1_ratio)
        if mse.ndim == 2:
            mse, alphas = mse[None], alphas[None]
        n_folds = mse.shape[-1]
        sem = mse.std(axis=-1, ddof=1) / np.sqrt(n_folds) if n_folds > 1 else np.full(mse.shape[:-1], np.nan)
        table = pd.DataFrame(
            {
                "l1_ratio": np.repeat(l1.astype(float), alphas.shape[1]),
                "alpha": alphas.ravel(),
                "mse_mean": mse.mean(axis=-1).ravel(),
                "mse_sem": sem.ravel(),
            }
        )
        table["selected"] = np.isclose(table["l1_ratio"], self.l1_ratio_) & np.isclose(
            table["alpha"], self.alpha_
        )
        return table

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, X) -> np.ndarray:
        """Predicted age (years) of every row of ``X`` (same features, same preprocessing as fit).

        ``(X / scale) @ w + b = X @ (w / scale) + b``: folding the scale into the coefficients keeps
        a sparse ``X`` sparse.
        """
        X = _as_matrix(X, "predict")
        if X.shape[1] != self.n_features_in_:
            raise DataValidationError(
                f"the clock was fitted on {self.n_features_in_} genes but X has {X.shape[1]}: "
                "pass the same genes, in the same order"
            )
        # weights in X's dtype: a float64 vector would make scipy/numpy copy all of X to float64
        weights = (self.coef_ / self.scale_).astype(X.dtype)
        return np.asarray(X @ weights, dtype=float).ravel() + self.intercept_

    def predict_donors(self, X, donors) -> pd.Series:
        """Predicted age per donor: the mean over the donor's cells (the paper's rule)."""
        X = _as_matrix(X, "predict_donors")
        donors = _donor_ids(donors, X.shape[0], "predict_donors")
        pred = pd.Series(self.predict(X)).groupby(donors, sort=True).mean()
        pred.index.name = "donor_id"
        return pred.rename("predicted")


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def _divide_columns(X, scale_: np.ndarray, dense_limit_gb: float):
    """``X / scale_`` column-wise, as a dense array when that fits in ``dense_limit_gb``.

    Dense is much faster here: with more rows than genes, scikit-learn precomputes the Gram matrix
    ``X^T X`` and coordinate descent never touches ``X`` again, whereas sparse coordinate descent
    sweeps all non-zeros at every step (about 75x slower on 10k cells x 2000 genes at 30% density).
    Above the limit the matrix stays sparse (memory first) and the fit is slow.
    """
    inverse = (1.0 / scale_).astype(X.dtype)
    if not sp.issparse(X):
        return X * inverse  # a new array: the caller's matrix is left alone
    dense_bytes = X.shape[0] * X.shape[1] * X.dtype.itemsize
    if dense_bytes <= dense_limit_gb * 2**30:
        out = X.toarray()
        out *= inverse
        return out
    warnings.warn(
        f"elastic net on a sparse {X.shape[0]} x {X.shape[1]} matrix (dense would need "
        f"{dense_bytes / 2**30:.1f} GB > dense_limit_gb={dense_limit_gb}): sparse coordinate "
        "descent is slow; select fewer genes or subsample cells for a faster fit",
        stacklevel=3,
    )
    out = X.copy()
    out.data *= inverse[out.indices]
    return out


class _Float32SafeElasticNetCV(ElasticNetCV):
    """``ElasticNetCV`` that does not re-check, per fold, the Gram matrix it just computed itself.

    In each fold scikit-learn computes ``X^T X`` from the training rows and hands it to
    ``enet_path``, which recomputes one element and demands agreement to rtol 1e-4. In float32, a
    near-zero element summed over thousands of cells misses that tolerance by rounding alone and
    the fit dies with "Gram matrix ... did not pass validation" (scikit-learn 1.9.1). The matrix is
    correct, so the check is skipped; the alternative, fitting in float64, costs twice the memory
    and about 2.5x the time. Results match a float64 fit (tested).
    """

    @staticmethod
    def path(X, y, **params):
        params["check_input"] = False  # inputs were validated and cast by ElasticNetCV.fit
        return enet_path(X, y, **params)


def _fit_enet(
    X,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    l1_ratios,
    n_alphas: int,
    n_splits: int,
    seed: int | None,
    max_iter: int,
    tol: float,
    scale: bool,
    sample_weight: np.ndarray | None = None,
    n_jobs: int | None = None,
    dense_limit_gb: float = 2.0,
) -> ElasticNetClock:
    """The one elastic-net fit shared by the cell, pseudocell and pseudobulk clocks."""
    folds = grouped_folds(groups, n_splits=n_splits, seed=seed)
    scale_ = column_scale(X) if scale else np.ones(X.shape[1])
    Xs = _divide_columns(X, scale_, dense_limit_gb)
    model = _Float32SafeElasticNetCV(
        l1_ratio=list(l1_ratios),
        alphas=int(n_alphas),
        cv=folds,
        max_iter=int(max_iter),
        tol=tol,
        n_jobs=n_jobs,
        random_state=seed,
    )
    # Coordinate descent makes many tiny BLAS calls; a multi-threaded BLAS spends more time
    # synchronising than computing (measured: the pseudocell clock 117 s with 2 threads, 16 s with 1).
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
        # Unconverged fits at the weakest penalties are routine on a CV path; record, don't spam.
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(Xs, y, sample_weight=sample_weight)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ElasticNetClock(model=model, scale_=scale_, converged=converged)


def fit_elastic_net(
    X,
    ages,
    donors,
    l1_ratios=(0.1, 0.5, 0.9, 1.0),
    n_alphas: int = 20,
    n_splits: int = 5,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    scale: bool = True,
    balance_donors: bool = False,
    n_jobs: int | None = None,
    dense_limit_gb: float = 2.0,
) -> ElasticNetClock:
    """Cell-level elastic net with donor-grouped cross-validation (the paper's baseline).

    Parameters
    ----------
    X
        Cells x genes, CSR or dense; the features as the clock should see them (the book passes
        log-normalised counts, :func:`neuroage_utils.data.log_normalize`). A sparse matrix is
        densified for the fit only when small (``dense_limit_gb``).
    ages, donors
        One age (years) and one donor id per cell.
    l1_ratios, n_alphas
        The grid searched: each ``l1_ratio`` with ``n_alphas`` penalties on a log scale from the
        smallest penalty that zeroes every coefficient down to 1/1000 of it.
    n_splits, seed
        Donor-grouped K-fold CV (:func:`grouped_folds`); ``seed`` shuffles donors into folds.
    max_iter, tol
        Coordinate-descent limits per fit.
    scale
        z-score genes (on these cells) before the penalty, so the penalty treats genes alike.
    balance_donors
        Weight cells by 1 / (cells of their donor) so each donor counts equally in the loss; the
        paper weights cells equally, which lets donors with many cells dominate.
    n_jobs
        Parallel fits over the CV grid (scikit-learn's ``n_jobs``). ``None`` is usually fastest on
        few cores: the Gram products already use every BLAS thread.
    dense_limit_gb
        The scaled matrix is densified for speed when it fits in this many GB (10k cells x 2000
        genes: 0.08 GB, about 40 s on 2 cores); larger inputs stay sparse and fit slowly.
    """
    what = "fit_elastic_net"
    X = _as_matrix(X, what)
    donors = _donor_ids(donors, X.shape[0], what)
    ages = _ages(ages, X.shape[0], what)
    _donor_ages(ages, donors, what)
    weight = None
    if balance_donors:
        _, inverse, counts = np.unique(donors, return_inverse=True, return_counts=True)
        weight = 1.0 / counts[inverse]
        weight *= len(weight) / weight.sum()  # mean weight 1 keeps alpha on the unweighted scale
    return _fit_enet(
        X, ages, donors, l1_ratios=l1_ratios, n_alphas=n_alphas, n_splits=n_splits, seed=seed,
        max_iter=max_iter, tol=tol, scale=scale, sample_weight=weight, n_jobs=n_jobs,
        dense_limit_gb=dense_limit_gb,
    )


# --------------------------------------------------------------------------------------------------
# Summed profiles: pseudobulk and pseudocells
# --------------------------------------------------------------------------------------------------


def _check_normalise(normalise) -> None:
    if normalise not in NORMALISATIONS:
        raise DataValidationError(f"unknown normalise={normalise!r}: use one of {NORMALISATIONS}")


def _sum_rows(X, membership: sp.csr_matrix):
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
    X = _as_matrix(X, what)
    donors = _donor_ids(donors, X.shape[0], what)
    ids, inverse = np.unique(donors, return_inverse=True)
    sums = _sum_rows(X, _membership(inverse, np.arange(X.shape[0]), len(ids), X.shape[0]))
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
    _check_normalise(normalise)
    if cells_per_pseudocell < 1 or n_per_donor < 1:
        raise DataValidationError(
            f"{what} needs cells_per_pseudocell >= 1 and n_per_donor >= 1, got "
            f"{cells_per_pseudocell} and {n_per_donor}"
        )
    X = _as_matrix(X, what)
    donors = _donor_ids(donors, X.shape[0], what)
    ids, inverse = np.unique(donors, return_inverse=True)
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
    drawn = np.concatenate(drawn)  # (n_donors * n_per_donor, cells_per_pseudocell)
    rows = np.repeat(np.arange(len(drawn)), cells_per_pseudocell)
    sums = _sum_rows(X, _membership(rows, drawn.ravel(), len(drawn), X.shape[0]))
    _require_summed_counts(sums, what)
    return _normalise_profiles(sums, normalise, what), np.repeat(ids, n_per_donor)


# --------------------------------------------------------------------------------------------------
# Clocks on summed profiles
# --------------------------------------------------------------------------------------------------


@dataclass
class PseudobulkClock(ElasticNetClock):
    """Elastic net on donor pseudobulk profiles. ``predict`` takes profiles; ``predict_donors`` cells."""

    normalise: str | None = "log_cpm"

    def predict_donors(self, X, donors) -> pd.Series:
        """Predicted age per donor from the donor's cells (raw counts), via its pseudobulk profile."""
        profiles, ids = pseudobulk(X, donors, self.normalise)
        return pd.Series(self.predict(profiles), index=pd.Index(ids, name="donor_id"), name="predicted")


@dataclass
class PseudocellClock(ElasticNetClock):
    """Elastic net on bootstrapped pseudocells; a donor's age is the mean over its pseudocells."""

    cells_per_pseudocell: int = 15
    n_per_donor: int = 100
    normalise: str | None = "log_cpm"
    replace: bool = True
    seed: int = 0

    def predict_donors(self, X, donors, seed: int | None = None) -> pd.Series:
        """Predicted age per donor: mean prediction over ``n_per_donor`` pseudocells of its cells."""
        profiles, owners = pseudocells(
            X, donors, self.cells_per_pseudocell, self.n_per_donor,
            seed=self.seed if seed is None else seed, normalise=self.normalise, replace=self.replace,
        )
        pred = pd.Series(self.predict(profiles)).groupby(owners, sort=True).mean()
        pred.index.name = "donor_id"
        return pred.rename("predicted")


def _clock_fields(clock: ElasticNetClock) -> dict:
    return {"model": clock.model, "scale_": clock.scale_, "converged": clock.converged}


def fit_pseudobulk_elastic_net(
    X,
    ages,
    donors,
    normalise: str | None = "log_cpm",
    l1_ratios=(0.1, 0.5, 0.9, 1.0),
    n_alphas: int = 20,
    n_splits: int = 5,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-4,
    scale: bool = True,
) -> PseudobulkClock:
    """Elastic net on one log-CPM pseudobulk profile per donor, CV over donors.

    ``X`` holds raw counts of the training cells; ``ages``/``donors`` one per cell. With one row per
    donor, donor-grouped K-fold is plain K-fold over donors (``seed`` shuffles them). The penalty
    grid and scaling are as in :func:`fit_elastic_net`; genes are z-scored across donors.
    """
    what = "fit_pseudobulk_elastic_net"
    X = _as_matrix(X, what)
    donors = _donor_ids(donors, X.shape[0], what)
    donor_age = _donor_ages(_ages(ages, X.shape[0], what), donors, what)
    profiles, ids = pseudobulk(X, donors, normalise)
    clock = _fit_enet(
        profiles, donor_age.loc[ids].to_numpy(), ids, l1_ratios=l1_ratios, n_alphas=n_alphas,
        n_splits=n_splits, seed=seed, max_iter=max_iter, tol=tol, scale=scale,
    )
    return PseudobulkClock(**_clock_fields(clock), normalise=normalise)


def fit_pseudocell_elastic_net(
    X,
    ages,
    donors,
    cells_per_pseudocell: int = 15,
    n_per_donor: int = 100,
    normalise: str | None = "log_cpm",
    replace: bool = True,
    l1_ratios=(0.1, 0.5, 0.9, 1.0),
    n_alphas: int = 20,
    n_splits: int = 5,
    seed: int = 0,
    max_iter: int = 5_000,
    tol: float = 1e-4,
    scale: bool = True,
    n_jobs: int | None = None,
    dense_limit_gb: float = 2.0,
) -> PseudocellClock:
    """Elastic net on bootstrapped pseudocells (:func:`pseudocells`), CV grouped by donor.

    Every donor contributes the same number of pseudocells, so donors weigh equally in the loss
    whatever their cell counts. ``seed`` draws the pseudocells and shuffles donors into folds; the
    other arguments are those of :func:`pseudocells` and :func:`fit_elastic_net`.
    """
    what = "fit_pseudocell_elastic_net"
    X = _as_matrix(X, what)
    donors = _donor_ids(donors, X.shape[0], what)
    donor_age = _donor_ages(_ages(ages, X.shape[0], what), donors, what)
    profiles, owners = pseudocells(
        X, donors, cells_per_pseudocell, n_per_donor, seed=seed, normalise=normalise, replace=replace
    )
    clock = _fit_enet(
        profiles, donor_age.loc[owners].to_numpy(), owners, l1_ratios=l1_ratios, n_alphas=n_alphas,
        n_splits=n_splits, seed=seed, max_iter=max_iter, tol=tol, scale=scale, n_jobs=n_jobs,
        dense_limit_gb=dense_limit_gb,
    )
    return PseudocellClock(
        **_clock_fields(clock), cells_per_pseudocell=cells_per_pseudocell, n_per_donor=n_per_donor,
        normalise=normalise, replace=replace, seed=seed,
    )
