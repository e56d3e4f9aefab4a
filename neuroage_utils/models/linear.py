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

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNetCV, enet_path
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from neuroage_utils.data.checks import as_matrix, cell_ages, donor_ages, donor_ids
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import column_scale, pseudobulk, pseudocells

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
    "fit_streamed_pseudobulk_elastic_net",
    "fit_streamed_pseudocell_elastic_net",
    "predict_streamed_donors",
]



# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------





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

    def summary(self, n_cells_fit: int, n_splits: int) -> pd.DataFrame:
        """The chosen penalty, mixing and sparsity, with the cells fitted and the CV folds."""
        return pd.Series({"alpha": self.alpha_, "l1 ratio": self.l1_ratio_, "non-zero genes": self.n_nonzero_,
                          "cells fitted": int(n_cells_fit), "CV folds (grouped by donor)": n_splits},
                         name="elastic net").to_frame()

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
        X = as_matrix(X, "predict")
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
        X = as_matrix(X, "predict_donors")
        donors = donor_ids(donors, X.shape[0], "predict_donors")
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


def _enet_jobs(n_features: int, n_fits: int, gram_budget_bytes: float = 2e9) -> int:
    """Threads for the CV grid's independent fits (``l1_ratios`` x folds): one per core, each fit
    single-threaded (coordinate descent does not use a second BLAS thread well; two fits at once
    do: 1.7x on 2 cores), capped so that the per-fit Gram matrices (8 p^2 bytes each) stay under
    ``gram_budget_bytes``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_memory = int(gram_budget_bytes // max(8.0 * n_features**2, 1.0))
    return max(1, min(cores, int(n_fits), by_memory))


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
        n_jobs=_enet_jobs(X.shape[1], len(folds) * len(list(l1_ratios))) if n_jobs is None else n_jobs,
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
        log-normalised counts, :func:`neuroage_utils.data.features.log_normalize`). A sparse matrix is
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
        Parallel fits over the CV grid (scikit-learn's ``n_jobs``, threads). ``None``: one per core,
        each fit single-threaded, fewer when the per-fit Gram matrices would pass 2 GB
        (17,658 genes: one). Results do not depend on it.
    dense_limit_gb
        The scaled matrix is densified for speed when it fits in this many GB (10k cells x 2000
        genes: 0.08 GB, about 40 s on 2 cores); larger inputs stay sparse and fit slowly.
    """
    what = "fit_elastic_net"
    X = as_matrix(X, what)
    donors = donor_ids(donors, X.shape[0], what)
    ages = cell_ages(ages, X.shape[0], what)
    donor_ages(ages, donors, what)
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
    X = as_matrix(X, what)
    donors = donor_ids(donors, X.shape[0], what)
    donor_age = donor_ages(cell_ages(ages, X.shape[0], what), donors, what)
    profiles, ids = pseudobulk(X, donors, normalise)
    return _fit_pseudobulk_profiles(profiles, ids, donor_age.loc[ids].to_numpy(), normalise, l1_ratios=l1_ratios,
                                    n_alphas=n_alphas, n_splits=n_splits, seed=seed, max_iter=max_iter, tol=tol,
                                    scale=scale)


def _fit_pseudobulk_profiles(profiles, ids, ages, normalise, **fit) -> PseudobulkClock:
    clock = _fit_enet(profiles, np.asarray(ages, dtype=float), np.asarray(ids), **fit)
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
    X = as_matrix(X, what)
    donors = donor_ids(donors, X.shape[0], what)
    donor_age = donor_ages(cell_ages(ages, X.shape[0], what), donors, what)
    profiles, owners = pseudocells(
        X, donors, cells_per_pseudocell, n_per_donor, seed=seed, normalise=normalise, replace=replace
    )
    return _fit_pseudocell_profiles(
        profiles, owners, donor_age.loc[owners].to_numpy(), cells_per_pseudocell=cells_per_pseudocell,
        n_per_donor=n_per_donor, normalise=normalise, replace=replace, l1_ratios=l1_ratios, n_alphas=n_alphas,
        n_splits=n_splits, seed=seed, max_iter=max_iter, tol=tol, scale=scale, n_jobs=n_jobs,
        dense_limit_gb=dense_limit_gb,
    )


def _fit_pseudocell_profiles(profiles, owners, ages, *, cells_per_pseudocell, n_per_donor, normalise, replace,
                             seed, **fit) -> PseudocellClock:
    clock = _fit_enet(profiles, np.asarray(ages, dtype=float), np.asarray(owners), seed=seed, **fit)
    return PseudocellClock(
        **_clock_fields(clock), cells_per_pseudocell=cells_per_pseudocell, n_per_donor=n_per_donor,
        normalise=normalise, replace=replace, seed=seed,
    )


# --------------------------------------------------------------------------------------------------
# The same clocks on a streamed cohort: every cell, through per-donor sums read block by block
# --------------------------------------------------------------------------------------------------


def fit_streamed_pseudobulk_elastic_net(stream, splits=("train", "val"), normalise: str | None = "log_cpm",
                                        l1_ratios=(0.1, 0.5, 0.9, 1.0), n_alphas: int = 20, n_splits: int = 5,
                                        seed: int = 0, max_iter: int = 10_000, tol: float = 1e-4,
                                        scale: bool = True) -> PseudobulkClock:
    """:func:`fit_pseudobulk_elastic_net` on the donors of ``splits`` of a
    :class:`~neuroage_utils.data.stream.StreamedCohort`: the same profiles (summed block by block,
    bit for bit), so the same clock; memory is one block plus donors x genes."""
    profiles, ids = stream.pseudobulk(stream.mask(*splits), normalise)
    ages = stream.donor_table.set_index("donor_id").loc[ids, "age"].to_numpy(dtype=float)
    return _fit_pseudobulk_profiles(profiles, ids, ages, normalise, l1_ratios=l1_ratios, n_alphas=n_alphas,
                                    n_splits=n_splits, seed=seed, max_iter=max_iter, tol=tol, scale=scale)


def fit_streamed_pseudocell_elastic_net(stream, splits=("train", "val"), cells_per_pseudocell: int = 15,
                                        n_per_donor: int = 100, normalise: str | None = "log_cpm",
                                        replace: bool = True, l1_ratios=(0.1, 0.5, 0.9, 1.0), n_alphas: int = 20,
                                        n_splits: int = 5, seed: int = 0, max_iter: int = 5_000, tol: float = 1e-4,
                                        scale: bool = True, n_jobs: int | None = None,
                                        dense_limit_gb: float = 2.0) -> PseudocellClock:
    """:func:`fit_pseudocell_elastic_net` on a streamed cohort (the same draws, summed block by block)."""
    profiles, owners = stream.pseudocells(stream.mask(*splits), cells_per_pseudocell, n_per_donor, seed=seed,
                                          normalise=normalise, replace=replace)
    ages = stream.donor_table.set_index("donor_id").loc[owners, "age"].to_numpy(dtype=float)
    return _fit_pseudocell_profiles(
        profiles, owners, ages, cells_per_pseudocell=cells_per_pseudocell, n_per_donor=n_per_donor,
        normalise=normalise, replace=replace, l1_ratios=l1_ratios, n_alphas=n_alphas, n_splits=n_splits, seed=seed,
        max_iter=max_iter, tol=tol, scale=scale, n_jobs=n_jobs, dense_limit_gb=dense_limit_gb,
    )


def predict_streamed_donors(clock, stream, *splits, seed: int | None = None) -> pd.Series:
    """Predicted age per donor of ``splits`` from every one of its cells, streamed (pseudobulk or pseudocell clock)."""
    rows = stream.mask(*splits)
    if isinstance(clock, PseudocellClock):
        profiles, owners = stream.pseudocells(rows, clock.cells_per_pseudocell, clock.n_per_donor,
                                              seed=clock.seed if seed is None else seed, normalise=clock.normalise,
                                              replace=clock.replace)
        pred = pd.Series(clock.predict(profiles)).groupby(owners, sort=True).mean()
        pred.index.name = "donor_id"
        return pred.rename("predicted")
    if isinstance(clock, PseudobulkClock):
        profiles, ids = stream.pseudobulk(rows, clock.normalise)
        return pd.Series(clock.predict(profiles), index=pd.Index(ids, name="donor_id"), name="predicted")
    raise TypeError("predict_streamed_donors takes a PseudobulkClock or a PseudocellClock")
