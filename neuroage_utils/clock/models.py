"""Which models a clock can be, and the one place that calls the package's fitting code for them.

A saved clock is a linear map from features to years (coefficients per standard deviation, the
divisor of each gene, an intercept), so every model here is an elastic net from
:mod:`neuroage_utils.models.linear`; they differ in what a row of features is (a cell, a pseudocell
or a donor) and how counts become features (:data:`NORMALISATIONS`).

Two things are fitted, both through existing code, never re-implemented:

- the clock's own cross-validated error: the book's repeated age-stratified donor-grouped folds
  (:func:`neuroage_utils.evaluation.crossval.repeated_folds`), each fold refitted on its training
  donors only, the penalty tuned inside the fold;
- the final model on every donor given.

Both go through :func:`_fit`, the one call into the fitting code (the recipes registry,
:mod:`neuroage_utils.evaluation.recipes`, which builds the elastic nets of
:mod:`neuroage_utils.models.linear`), so the CV error estimates the final model's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuroage_utils.data.cohort import subsample_cells
from neuroage_utils.data.features import log_normalize
from neuroage_utils.errors import DataValidationError
from neuroage_utils.models import linear

__all__ = ["MODELS", "NORMALISATIONS", "DEFAULT_SETTINGS", "settings_for", "normalisation_for", "cv_predictions",
           "fit_final"]

#: Model key -> (what a row is, whether it sums raw counts).
MODELS = {
    "pseudobulk_elastic_net": ("donor (summed counts of all its cells)", True),
    "pseudocell_elastic_net": ("pseudocell (summed counts of a few random cells of one donor)", True),
    "elastic_net": ("cell", False),
}

#: How counts become features, by name (recorded in the clock).
NORMALISATIONS = {
    "log1p_cp10k": "per cell: log(1 + 10^4 x counts / the cell's total counts)",
    "log_cpm": "per summed profile: log(1 + 10^6 x counts / the profile's total counts)",
    "as_given": "the values in the file, unchanged (data that are not raw counts)",
}

#: Settings of a clock fit (the CLI's defaults; a chapter passes smaller ones).
DEFAULT_SETTINGS = {
    "folds": 5,  # outer donor-grouped CV for the clock's own error (age-stratified)
    "repeats": 1,
    "inner_splits": 5,  # donor-grouped CV inside every fit that tunes the penalty
    "en_l1": [0.1, 0.5, 0.9, 1.0],
    "en_alphas": 20,
    "en_max_cells": 20_000,  # cells the cell-level elastic net is fitted on (a random subset)
    "pseudocells": {"n_per_donor": 20, "cells_per_pseudocell": 30},
    "boot": 2000,
    "workers": 1,
}


def settings_for(settings: dict | None) -> dict:
    """Defaults updated by ``settings``; unknown keys are an error (a typo would be ignored otherwise)."""
    out = {**DEFAULT_SETTINGS, "pseudocells": dict(DEFAULT_SETTINGS["pseudocells"])}
    for key, value in (settings or {}).items():
        if key not in DEFAULT_SETTINGS:
            raise DataValidationError(f"unknown clock setting {key!r}: use one of {', '.join(DEFAULT_SETTINGS)}")
        out[key] = dict(out[key], **value) if key == "pseudocells" else value
    return out


def normalisation_for(model: str, is_counts: bool) -> str:
    """The normalisation a model uses on these data; aggregated clocks need raw counts."""
    if model not in MODELS:
        raise DataValidationError(f"unknown model {model!r}: use one of {', '.join(MODELS)}")
    if MODELS[model][1]:
        if not is_counts:
            raise DataValidationError(
                f"{model} sums raw UMI counts but the data are not raw counts: pass counts in X or "
                "layers['counts'], or use --model elastic_net")
        return "log_cpm"
    return "log1p_cp10k" if is_counts else "as_given"


def _fit(model: str, X, donors, ages, normalisation: str, settings: dict, seed: int):
    """The one call into the fitting code: model ``model`` built by the recipes registry and fitted
    on these cells (raw values; the cell clock log-normalises them first), its penalty tuned by
    donor-grouped CV inside. Returns the fitted linear clock (coefficients, divisors, intercept)."""
    from neuroage_utils.evaluation import recipes

    options = {"n_alphas": int(settings["en_alphas"]), "l1_ratios": tuple(settings["en_l1"]),
               "n_splits": int(settings["inner_splits"])}
    if model == "pseudocell_elastic_net":
        options.update(settings["pseudocells"])
    if model == "elastic_net":
        options["max_cells"] = settings.get("en_max_cells")
    rows = _cell_features(X, normalisation) if model == "elastic_net" else X
    return recipes.build(model, options, seed=seed).fit(rows, ages, donors).clock_


def _cell_features(X, normalisation: str):
    return log_normalize(X) if normalisation == "log1p_cp10k" else X


def _fold(model, X, donors, ages, normalisation, settings, train, test, seed) -> pd.Series:
    """One fold: fitted on the training donors' cells, the held-out donors' predicted ages."""
    tr, held = np.isin(donors, train), np.isin(donors, test)
    fitted = _fit(model, X[tr], donors[tr], ages[tr], normalisation, settings, seed)
    Xh = X[held] if model != "elastic_net" else _cell_features(X[held], normalisation)
    return fitted.predict_donors(Xh, donors[held])


def _folds(model, X, donors, ages, normalisation, settings, seed, device, n_train=None) -> pd.DataFrame:
    """Every donor predicted by the folds' models (mean over repeats): ``donor_id, age, predicted``.
    With ``n_train``, each fold's model sees only a random ``n_train`` of its training donors."""
    from neuroage_utils.evaluation.crossval import repeated_folds
    from neuroage_utils.train.workers import run_tasks

    donors = np.asarray(donors).astype(str)
    ages = np.asarray(ages, dtype=float)
    donor_age = pd.Series(ages, index=donors).groupby(level=0).first()
    folds = int(min(settings["folds"], len(donor_age)))
    rng = np.random.default_rng(seed)
    splits = []
    for repeat, fold, train, test in repeated_folds(donor_age, folds, int(settings["repeats"]), seed=seed):
        if n_train is not None and n_train < len(train):
            train = rng.choice(train, int(n_train), replace=False)
        splits.append((train, test, seed + 1000 * repeat + fold))
    preds = run_tasks(_fold, [(model, X, donors, ages, normalisation, settings, train, test, s)
                              for train, test, s in splits], int(settings.get("workers") or 1))
    rows = [(d, float(donor_age.loc[d]), float(p.loc[d])) for (_, test, _), p in zip(splits, preds) for d in test]
    table = pd.DataFrame(rows, columns=["donor_id", "age", "predicted"])
    return table.groupby("donor_id", sort=True).agg(age=("age", "first"), predicted=("predicted", "mean")).reset_index()


def cv_predictions(model: str, X, donors, ages, normalisation: str, settings: dict, seed: int,
                   device="cpu") -> pd.DataFrame:
    """Out-of-fold prediction of every donor (mean over repeats): ``donor_id, age, predicted``.

    Repeated age-stratified donor-grouped folds (the book's, :func:`~neuroage_utils.evaluation.crossval.repeated_folds`);
    each fold refits the model on its training donors with the final fit's own function and settings,
    the penalty tuned by donor-grouped CV inside the fold.
    """
    return _folds(model, X, donors, ages, normalisation, settings, seed, device)


def fit_final(model: str, X, donors, ages, normalisation: str, settings: dict, seed: int):
    """The model fitted on every donor given, with the settings of its CV folds.

    Returns ``(fitted linear clock, training features, rows' donors, extra)``: the features are
    what the clock's rows were (kept to record each gene's training mean, used for missing genes),
    ``extra`` the feature settings a prediction needs.
    """
    donors = np.asarray(donors).astype(str)
    ages = np.asarray(ages, dtype=float)
    clock = _fit(model, X, donors, ages, normalisation, settings, seed)
    if model == "pseudobulk_elastic_net":
        rows, owners = linear.pseudobulk(X, donors, clock.normalise)
        return clock, rows, owners, {}
    if model == "pseudocell_elastic_net":
        rows, owners = linear.pseudocells(X, donors, clock.cells_per_pseudocell, clock.n_per_donor, seed=clock.seed,
                                          normalise=clock.normalise, replace=clock.replace)
        return clock, rows, owners, {"cells_per_pseudocell": int(clock.cells_per_pseudocell),
                                     "n_per_donor": int(clock.n_per_donor), "seed": int(clock.seed),
                                     "replace": bool(clock.replace)}
    cells = subsample_cells(np.ones(X.shape[0], bool), settings.get("en_max_cells"), seed=seed)
    return clock, _cell_features(X[cells], normalisation), donors[cells], {"max_cells": settings.get("en_max_cells")}


def fewer_donor_predictions(model: str, X, donors, ages, normalisation: str, settings: dict, n_train: int,
                            seed: int, device="cpu") -> pd.DataFrame:
    """Every donor predicted once by a model trained on only ``n_train`` donors: the folds of
    :func:`cv_predictions`, but each fold's model sees a random ``n_train`` of the other folds'
    donors, so every point of a learning curve is scored on the same donors."""
    return _folds(model, X, donors, ages, normalisation, {**settings, "repeats": 1}, seed, device, n_train=n_train)


__all__.append("fewer_donor_predictions")
