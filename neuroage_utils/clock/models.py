"""Which models a clock can be, and the one place that calls the package's fitting code for them.

A saved clock is a linear map from features to years (coefficients per standard deviation, the
divisor of each gene, an intercept), so every model here is an elastic net from
:mod:`neuroage_utils.models.linear`; they differ in what a row of features is (a cell, a pseudocell
or a donor) and how counts become features (:data:`NORMALISATIONS`).

Two things are fitted, both through existing code, never re-implemented:

- the clock's own cross-validated error: repeated age-stratified donor-grouped CV
  (:func:`neuroage_utils.evaluation.crossval.run_cv` and its recipes), so that the penalty is tuned
  inside every fold on the fold's training donors only;
- the final model on every donor given, by the same fitting function the recipe calls, with the
  same settings, so the CV error estimates this model's.

When the recipes registry (issue 16) lands, :func:`cv_predictions` is the one function to switch.
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


def _cv_data(X, donors, ages, normalisation: str):
    from neuroage_utils.evaluation import crossval  # torch comes with it: not needed to predict

    X_norm = log_normalize(X) if normalisation == "log1p_cp10k" else X
    return crossval.CVData(X, X_norm, np.asarray(donors).astype(str), np.asarray(ages, float),
                           normalisation != "as_given")


def cv_predictions(model: str, X, donors, ages, normalisation: str, settings: dict, seed: int,
                   device="cpu") -> pd.DataFrame:
    """Out-of-fold prediction of every donor (mean over repeats): ``donor_id, age, predicted``.

    The one coupling to the CV recipes: each fold refits the model on its training donors, the
    penalty tuned by donor-grouped CV inside the fold.
    """
    from neuroage_utils.evaluation import crossval

    data = _cv_data(X, donors, ages, normalisation)
    n_donors = len(np.unique(data.donors))
    params = {**settings, "folds": int(min(settings["folds"], n_donors))}
    table, skipped, _ = crossval.run_cv(data, [model], params, seed=seed, device=device, progress=False,
                                        workers=int(settings.get("workers") or 1))
    if model in skipped:
        raise DataValidationError(skipped[model])
    return (table.groupby("donor_id", sort=True).agg(age=("age", "first"), predicted=("predicted", "mean"))
            .reset_index())


def fit_final(model: str, X, donors, ages, normalisation: str, settings: dict, seed: int):
    """The model fitted on every donor given, with the settings of the CV recipes.

    Returns ``(fitted linear clock, training features, rows' donors, extra)``: the features are
    what the clock's rows were (kept to record each gene's training mean, used for missing genes),
    ``extra`` the feature settings a prediction needs.
    """
    donors = np.asarray(donors).astype(str)
    ages = np.asarray(ages, dtype=float)
    n_donors = len(np.unique(donors))
    common = {"l1_ratios": settings["en_l1"], "n_alphas": settings["en_alphas"],
              "n_splits": int(min(settings["inner_splits"], n_donors)), "seed": seed}
    if model == "pseudobulk_elastic_net":
        clock = linear.fit_pseudobulk_elastic_net(X, ages, donors, **common)
        rows, owners = linear.pseudobulk(X, donors, clock.normalise)
        return clock, rows, owners, {}
    if model == "pseudocell_elastic_net":
        P = settings["pseudocells"]
        clock = linear.fit_pseudocell_elastic_net(X, ages, donors, **P, **common)
        rows, owners = linear.pseudocells(X, donors, clock.cells_per_pseudocell, clock.n_per_donor, seed=clock.seed,
                                          normalise=clock.normalise, replace=clock.replace)
        return clock, rows, owners, {"cells_per_pseudocell": int(clock.cells_per_pseudocell),
                                     "n_per_donor": int(clock.n_per_donor), "seed": int(clock.seed),
                                     "replace": bool(clock.replace)}
    X_norm = log_normalize(X) if normalisation == "log1p_cp10k" else X
    cells = subsample_cells(np.ones(X.shape[0], bool), settings.get("en_max_cells"), seed=seed)
    clock = linear.fit_elastic_net(X_norm[cells], ages[cells], donors[cells], **common)
    return clock, X_norm[cells], donors[cells], {"max_cells": settings.get("en_max_cells")}


def fewer_donor_predictions(model: str, X, donors, ages, normalisation: str, settings: dict, n_train: int,
                            seed: int, device="cpu") -> pd.DataFrame:
    """Every donor predicted once by a model trained on only ``n_train`` donors: donor-grouped folds
    as in :func:`cv_predictions`, but each fold's model sees a random ``n_train`` of the other folds'
    donors, so every point of a learning curve is scored on the same donors."""
    from neuroage_utils.evaluation import crossval

    data = _cv_data(X, donors, ages, normalisation)
    donor_age = data.donor_ages()
    rng = np.random.default_rng(seed)
    params = {**settings, "folds": int(min(settings["folds"], len(donor_age)))}
    rows = []
    for _, fold, train, test in crossval.repeated_folds(donor_age, params["folds"], 1, seed=seed):
        if n_train < len(train):
            train = rng.choice(train, int(n_train), replace=False)
        pred = crossval.RECIPES[model](data, train, test, params, seed + fold, device)
        rows += [(d, float(donor_age.loc[d]), float(pred.loc[d])) for d in test]
    return pd.DataFrame(rows, columns=["donor_id", "age", "predicted"]).sort_values("donor_id", ignore_index=True)


__all__.append("fewer_donor_predictions")
