"""Linear probes: how much age a feature space holds, judged on donors the probe never saw.

A probe averages each donor's cells into one feature vector (VAE latent means, SVD scores, NMF
usages, genes...), fits a penalised linear model on the training donors' vectors with its penalty
chosen by cross-validation over those donors only, and predicts the held-out donors. One sample per
donor means there is no donor identity to memorise, so a probe measures the age signal in the
features rather than a model's capacity to recognise donors. The same probe on different feature
matrices compares the feature spaces on an equal footing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNetCV, RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from neuroage_utils.errors import DataValidationError

__all__ = ["donor_means", "LinearProbe", "fit_probe", "probe_scores", "PROBE_KINDS"]

PROBE_KINDS = ("ridge", "elastic_net")


def donor_means(features, donors) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature vector per donor: ``(donors x features array, sorted donor ids)``."""
    F = features.toarray() if hasattr(features, "toarray") else np.asarray(features, dtype=float)
    F = np.asarray(F, dtype=float)
    donors = np.asarray(donors).astype(str).ravel()
    if F.ndim != 2 or F.shape[0] != len(donors):
        raise DataValidationError(
            f"donor_means needs a cells x features matrix and one donor per cell: got {F.shape} and {len(donors)}")
    if not np.isfinite(F).all():
        raise DataValidationError("donor_means: the features hold NaN or infinite values: remove them")
    ids, inverse = np.unique(donors, return_inverse=True)
    sums = np.zeros((len(ids), F.shape[1]))
    np.add.at(sums, inverse, F)
    return sums / np.bincount(inverse)[:, None], ids


class LinearProbe:
    """A ridge or elastic net on one feature vector per donor, penalty tuned over donor folds.

    ``fit(donor_features, donor_ages)`` takes donor-level rows (see :func:`donor_means`);
    ``predict`` returns ages in years. Features are z-scored with the training donors' statistics.
    ``direction_`` is the fitted weight vector in the input units (years per unit of each feature).
    """

    def __init__(self, kind: str = "ridge", n_alphas: int = 20, n_splits: int = 5, l1_ratios=(0.1, 0.5, 0.9, 1.0),
                 seed: int = 0):
        if kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {kind!r}: use one of {PROBE_KINDS}")
        self.kind, self.n_alphas, self.n_splits = kind, int(n_alphas), int(n_splits)
        self.l1_ratios, self.seed = list(l1_ratios), int(seed)

    def fit(self, F, ages) -> "LinearProbe":
        F = np.asarray(F, dtype=float)
        ages = np.asarray(ages, dtype=float).ravel()
        if F.shape[0] != len(ages):
            raise DataValidationError(f"LinearProbe.fit: {F.shape[0]} donors but {len(ages)} ages")
        n_splits = min(self.n_splits, len(ages))
        if n_splits < 2:
            raise DataValidationError(f"a linear probe needs at least 2 training donors, got {len(ages)}")
        # one row per donor: plain K-fold over rows is K-fold over donors
        cv = list(KFold(n_splits, shuffle=True, random_state=self.seed).split(F))
        if self.kind == "ridge":
            scale = max(F.shape[1], 1)
            model = RidgeCV(alphas=np.logspace(-3, 4, self.n_alphas) * scale, cv=cv)
        else:
            model = ElasticNetCV(l1_ratio=self.l1_ratios, alphas=self.n_alphas, cv=cv, max_iter=20_000,
                                 random_state=self.seed)
        self.pipeline_ = make_pipeline(StandardScaler(), model)
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.pipeline_.fit(F, ages)
        return self

    @property
    def alpha_(self) -> float:
        return float(self.pipeline_[-1].alpha_)

    @property
    def direction_(self) -> np.ndarray:
        scaler, model = self.pipeline_
        return np.asarray(model.coef_, dtype=float) / scaler.scale_

    def predict(self, F) -> np.ndarray:
        return np.asarray(self.pipeline_.predict(np.asarray(F, dtype=float)), dtype=float)


def _rows(features, mask):
    """Rows of a cells x features matrix (ndarray, sparse or DataFrame) selected by a boolean mask."""
    return features.to_numpy()[mask] if hasattr(features, "iloc") else features[mask]


def fit_probe(features, donors, ages, train_donors, kind: str = "ridge", **options) -> LinearProbe:
    """Fit a :class:`LinearProbe` on the donor means of the cells whose donor is in ``train_donors``."""
    donors = np.asarray(donors).astype(str)
    ages = np.asarray(ages, dtype=float)
    keep = np.isin(donors, np.asarray(train_donors).astype(str))
    F, ids = donor_means(_rows(features, keep), donors[keep])
    donor_age = pd.Series(ages[keep], index=donors[keep]).groupby(level=0).first().loc[ids].to_numpy()
    return LinearProbe(kind=kind, **options).fit(F, donor_age)


def probe_scores(features, donors, ages, train_donors, test_donors, kind: str = "ridge", **options) -> pd.Series:
    """Predicted age of every donor in ``test_donors`` from a probe fitted on ``train_donors`` only.

    Works on any cells x features matrix (VAE latent means, SVD scores, NMF usages, genes). Returns a
    Series indexed by donor id; score it with :func:`neuroage_utils.metrics.table_from_donor_predictions`.
    """
    donors = np.asarray(donors).astype(str)
    overlap = set(map(str, train_donors)) & set(map(str, test_donors))
    if overlap:
        raise DataValidationError(f"a probe's training and held-out donors overlap ({sorted(overlap)[:3]}): "
                                  "pass disjoint donor sets")
    probe = fit_probe(features, donors, ages, train_donors, kind=kind, **options)
    held = np.isin(donors, np.asarray(test_donors).astype(str))
    F, ids = donor_means(_rows(features, held), donors[held])
    return pd.Series(probe.predict(F), index=pd.Index(ids, name="donor_id"), name="predicted")
