"""Repeated donor-grouped cross-validation over all donors, and paired comparisons of its errors.

A single split scores a model on 11 test donors; the interval of such an MAE spans years. Here every
donor is held out once per repeat: donors are dealt into age-stratified folds (sorted by age, each
consecutive block of ``n_splits`` donors spread over the folds at random), each model is refitted on
the other folds' donors **only** (gene scaling, factorisations, cell subsampling and penalty tuning
happen inside the fold) and predicts the held-out donors. Repeats reshuffle the folds.

Scoring: a donor's prediction is its prediction averaged over repeats and its error the absolute
error of that prediction; a model's CV MAE is the mean over donors (the MAE of the reported
predictions; ``mae_repeats`` keeps each repeat's own MAE), with a percentile bootstrap interval over
donors. Two models are compared on the same
donors by the paired bootstrap of their per-donor errors. The bootstrap treats the fitted models as
fixed, so the intervals show donor-to-donor variation, not the variation of refitting.

Models are built by the one registry (:mod:`neuroage_utils.evaluation.recipes`) from the summary
section's parameters (:func:`cv_settings`); :data:`RECIPES` holds one fold function per model,
``recipe(data, train_donors, test_donors, params, seed, device) -> pandas.Series`` (predicted age per
held-out donor).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroage_utils import metrics
from neuroage_utils.data.features import log_normalize
from neuroage_utils.errors import DataValidationError
from neuroage_utils.evaluation import recipes
from neuroage_utils.evaluation.recipes import NeedsCounts
from neuroage_utils.train.workers import run_tasks

__all__ = ["CVData", "age_stratified_folds", "repeated_folds", "RECIPES", "MODELS", "cv_settings", "build_model", "run_cv",
           "fit_cells", "cell_split_cv",
           "cv_summary", "paired_cv_difference", "cv_comparisons", "NeedsCounts"]


@dataclass
class CVData:
    """What the recipes need: raw values, log-normalised values, one donor and age per cell."""

    X: object  # raw counts (CSR), or the values as given when not counts
    X_norm: object  # log1p(CP10k) of counts; the values as given otherwise
    donors: np.ndarray
    ages: np.ndarray
    is_counts: bool

    @classmethod
    def from_cohort(cls, cohort) -> "CVData":
        X_norm = log_normalize(cohort.X) if cohort.is_counts else cohort.X
        return cls(cohort.X, X_norm, np.asarray(cohort.donors).astype(str), np.asarray(cohort.ages, float),
                   bool(cohort.is_counts))

    def donor_ages(self) -> pd.Series:
        return pd.Series(self.ages, index=self.donors).groupby(level=0).first()

    def cells(self, donor_ids) -> np.ndarray:
        return np.isin(self.donors, np.asarray(donor_ids).astype(str))


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


def age_stratified_folds(donor_ages: pd.Series, n_splits: int = 5, seed: int = 0) -> pd.Series:
    """Fold (0..n_splits-1) of every donor, age-stratified: each fold spans the whole age range.

    Donors are sorted by age (ties in random order); every block of ``n_splits`` consecutive donors
    is dealt to the folds in a random order, so fold sizes differ by at most one and each fold holds
    about one donor of every age band.
    """
    donor_ages = pd.Series(donor_ages).astype(float)
    n = len(donor_ages)
    if n_splits < 2 or n < n_splits:
        raise DataValidationError(f"{n} donors cannot fill {n_splits} folds: pass at least {max(n_splits, 2)} donors "
                                  "and n_splits >= 2")
    rng = np.random.default_rng(seed)
    shuffled = donor_ages.iloc[rng.permutation(n)]
    order = shuffled.sort_values(kind="stable").index
    folds = np.empty(n, dtype=int)
    for start in range(0, n, n_splits):
        block = min(n_splits, n - start)
        folds[start:start + block] = rng.permutation(n_splits)[:block]
    return pd.Series(folds, index=order, name="fold").loc[donor_ages.index]


def repeated_folds(donor_ages: pd.Series, n_splits: int = 5, n_repeats: int = 3, seed: int = 0):
    """``[(repeat, fold, train_donors, test_donors), ...]`` for every repeat and fold: the one
    age-stratified donor split of the book (the cross-validation here and the real-donor clocks).
    ``donor_ages`` is indexed by donor (ids, or row positions when each row is a donor); the folds
    hold those index values. Repeat ``r`` deals with seed ``seed * 1000 + r``."""
    out = []
    for repeat in range(n_repeats):
        folds = age_stratified_folds(donor_ages, n_splits, seed=seed * 1000 + repeat)
        for fold in range(n_splits):
            test = folds.index[folds == fold].to_numpy()
            train = folds.index[folds != fold].to_numpy()
            out.append((repeat, fold, train, test))
    return out


# --------------------------------------------------------------------------------------------------
# Model recipes (built by the registry, neuroage_utils.evaluation.recipes): fit on the training
# fold's donors, predict the held-out donors
# --------------------------------------------------------------------------------------------------

#: The models of the cross-validation, in the order of its tables.
MODELS = ("null", "elastic_net", "pseudobulk_elastic_net", "pseudocell_elastic_net", "svd_ridge", "mlp", "nmf_mlp",
          "vae_latent_pseudobulk")


def cv_settings(key: str, P: dict) -> dict:
    """The registry settings of model ``key`` from the summary section's parameters ``P`` (the names
    the page shows: ``en_alphas``, ``mlp_hidden``, ...)."""
    inner = P.get("inner_splits", 5)
    enet = {"n_alphas": P["en_alphas"], "l1_ratios": P["en_l1"], "n_splits": inner}
    mlp = {"hidden": P["mlp_hidden"], "epochs": P["mlp_epochs"], "batch_size": P["batch_size"],
           "amp": P.get("amp", False)}
    backend = P.get("linalg_backend", "auto")  # "auto": torch on CUDA; HALS NMF, ARPACK SVD on a CPU
    V = P["vae"]
    # Equal data in the CV: every model fits the cells fit_cells chose (no model-specific cap), unless
    # the parameters carry explicit caps (``cv_caps``: the ground-truth refits' budget).
    caps = P.get("cv_caps", {})
    return {
        "null": {},
        "elastic_net": {**enet, "max_cells": caps.get("en_max_cells")},
        "pseudobulk_elastic_net": enet,
        "pseudocell_elastic_net": {**enet, **P["pseudocells"]},
        "svd_ridge": {"n_components": P["svd_k"], "n_alphas": P["probe_alphas"], "n_splits": inner,
                      "max_cells": caps.get("max_cells"), "linalg_backend": backend},
        "mlp": {**mlp, "max_cells": caps.get("max_cells")},
        "nmf_mlp": {"n_components": P["nmf_k"], "max_iter": P["nmf_iter"], "max_cells": caps.get("max_cells"),
                    "linalg_backend": backend, "mlp": mlp},
        "vae_latent_pseudobulk": {"likelihood": V["likelihood"], "hidden": V["hidden"], "latent": V["latent"],
                                  "epochs": V["epochs"], "batch_size": P["batch_size"], "max_cells": V.get("max_cells"),
                                  "probe_alphas": P["probe_alphas"], "probe_splits": inner, "amp": P.get("amp", False)},
    }[key]


def fit_cells(data: CVData, train, P, seed) -> np.ndarray:
    """The training cells every model of a fold is fitted on: the cells of the ``train`` donors, at
    most ``P['cells_per_donor']`` per donor (None: all of them), drawn with the fold's ``seed``, which
    every model of the fold shares. Equal data: no model sees more or other cells than another (the
    recipes' own ``max_cells`` are off in the CV, :func:`cv_settings`)."""
    mask = data.cells(train)
    cap = P.get("cells_per_donor")
    if cap is None:
        return mask
    rng = np.random.default_rng(seed)
    out = np.zeros_like(mask)
    rows = np.flatnonzero(mask)
    for donor in np.unique(data.donors[rows]):
        mine = rows[data.donors[rows] == donor]
        out[mine if len(mine) <= cap else rng.choice(mine, int(cap), replace=False)] = True
    return out


def build_model(key: str, P: dict, seed: int, device):
    """Model ``key`` of the cross-validation, unfitted (progress bars off: folds run in workers)."""
    recipe = recipes.get(key)
    return recipe.build(cv_settings(key, P), device=device, seed=seed, **({"progress": False} if recipe.torch else {}))


def vae_clock_from_params(P, seed, device):
    """The VAE clock of the summary section's parameters ``P``."""
    return build_model("vae_latent_pseudobulk", P, seed, device)


class FoldRecipe:
    """``recipe(data, train_donors, test_donors, params, seed, device) -> pandas.Series``: model
    ``key`` fitted on the training donors' cells, its predicted age per held-out donor."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, data: CVData, train, test, P, seed, device) -> pd.Series:
        recipe = recipes.get(self.key)
        X = data.X_norm if recipe.input is recipes.Input.LOG_CELLS else data.X
        tr, held = fit_cells(data, train, P, seed), data.cells(test)
        model = build_model(self.key, P, seed, device).fit(X[tr], data.ages[tr], data.donors[tr])
        return model.predict_donors(X[held], data.donors[held])


RECIPES = {key: FoldRecipe(key) for key in MODELS}


# --------------------------------------------------------------------------------------------------
# Running and scoring
# --------------------------------------------------------------------------------------------------


def _cv_task(recipe, data: CVData, train, test, params: dict, seed: int, device):
    """One model on one fold: ``(predictions, None, seconds)``, or ``(None, reason, 0)`` when the
    model cannot run on these data (a :class:`DataValidationError`)."""
    start = time.perf_counter()
    try:
        pred = recipe(data, train, test, params, seed, device)
    except DataValidationError as err:
        return None, str(err), 0.0
    return pred, None, time.perf_counter() - start


def run_cv(data: CVData, models, params: dict, seed: int = 0, device="cpu", progress: bool = True,
           recipes: dict | None = None, workers: int = 1):
    """Run every model of ``models`` on every repeat and fold.

    Returns ``(predictions, skipped, seconds)``: a long table (``model, repeat, fold, donor_id, age,
    predicted``), ``{model: reason}`` for models that cannot run on these data (the first
    :class:`DataValidationError` they raise), and the fitting time per model (summed over folds:
    with ``workers > 1`` the folds run side by side in that many single-threaded processes, and the
    sum exceeds the wall time).
    """
    recipes = recipes or RECIPES
    ages = data.donor_ages()
    splits = repeated_folds(ages, params["folds"], params["repeats"], seed=seed)
    from tqdm import tqdm  # plain text bar: rendered statically in the book

    tasks = [(model, repeat, fold, train, test) for model in models for repeat, fold, train, test in splits]
    bar = tqdm(total=len(tasks), desc="cross-validation", disable=not progress, mininterval=2.0)
    outputs = run_tasks(_cv_task, [(recipes[m], data, train, test, params, seed + 1000 * r + f, device)
                                   for m, r, f, train, test in tasks],
                        workers, progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    rows, skipped, seconds = [], {}, {m: 0.0 for m in models}
    for (model, repeat, fold, train, test), (pred, reason, took) in zip(tasks, outputs):
        if reason is not None:
            skipped.setdefault(model, reason)
            continue
        seconds[model] += took
        missing = set(test) - set(pred.index.astype(str))
        if missing:
            raise RuntimeError(f"{model} returned no prediction for held-out donors {sorted(missing)[:3]}")
        for donor in test:
            rows.append((model, repeat, fold, donor, float(ages.loc[donor]), float(pred.loc[donor])))
    rows = [r for r in rows if r[0] not in skipped]  # a model that failed on any fold is left out whole
    table = pd.DataFrame(rows, columns=["model", "repeat", "fold", "donor_id", "age", "predicted"])
    # the training cells of each fold, the same for every model (fit_cells): their mean over folds
    fitted = [int(fit_cells(data, train, params, seed + 1000 * r + f).sum()) for r, f, train, _ in splits]
    table.attrs["cells_fitted"] = float(np.mean(fitted))
    return table, skipped, seconds


def _donor_errors(predictions: pd.DataFrame, model: str) -> pd.Series:
    """Per donor: the absolute error of its prediction averaged over repeats (the prediction the
    results report, so a CV MAE is the mean absolute error of the reported predictions)."""
    sub = predictions[predictions["model"] == model]
    mean = sub.groupby("donor_id").agg(age=("age", "first"), predicted=("predicted", "mean"))
    return (mean["predicted"] - mean["age"]).abs()


def _cell_split_task(data: CVData, train_cells, test_cells, P, seed):
    """The CV's elastic net (the registry's, :func:`build_model`) fitted on cells drawn at random
    (their donors also have cells in the test fold): per donor, the sum of its held-out cells'
    mean prediction times their number, and that number."""
    model = build_model("elastic_net", P, seed, "cpu")
    model.fit(data.X_norm[train_cells], data.ages[train_cells], data.donors[train_cells])
    pred = model.predict_donors(data.X_norm[test_cells], data.donors[test_cells])
    count = pd.Series(data.donors[test_cells]).value_counts()
    return pd.DataFrame({"sum": pred * count.loc[pred.index].to_numpy(), "count": count.loc[pred.index].to_numpy()},
                        index=pred.index)


def cell_split_cv(data: CVData, params: dict, seed: int = 0, workers: int = 1) -> pd.DataFrame:
    """The leakage demonstration: the cell elastic net of :data:`RECIPES` cross-validated with cells,
    not donors, dealt into folds at random, so every test donor also has cells in training. Same
    folds x repeats, the same number of training cells per fit as the donor CV (its mean
    ``cells_fitted``), the same settings. Returns the long table of :func:`run_cv` (``fold`` -1: a
    donor's prediction is the mean over its held-out cells of every fold of the repeat)."""
    n_folds, n_repeats = int(params["folds"]), int(params["repeats"])
    ages = data.donor_ages()
    # the donor CV's training cells per fit, so the two differ only in how cells were split
    per_fit = int(round(np.mean([fit_cells(data, train, params, seed + 1000 * r + f).sum()
                                 for r, f, train, _ in repeated_folds(ages, n_folds, n_repeats, seed=seed)])))
    tasks = []
    for r in range(n_repeats):
        rng = np.random.default_rng(seed * 1000 + r + 7)
        fold_of = rng.permutation(np.arange(len(data.donors)) % n_folds)
        for f in range(n_folds):
            train, test = fold_of != f, fold_of == f
            if train.sum() > per_fit:
                keep = rng.choice(np.flatnonzero(train), per_fit, replace=False)
                train = np.isin(np.arange(len(train)), keep)
            tasks.append((r, (data, train, test, params, seed + 1000 * r + f)))
    outputs = run_tasks(_cell_split_task, [t for _, t in tasks], workers)
    rows = []
    for r in range(n_repeats):
        parts = [o for (rr, _), o in zip(tasks, outputs) if rr == r]
        agg = pd.concat(parts).groupby(level=0).sum()
        for donor, row in agg.iterrows():
            rows.append(("elastic_net_cell_split", r, -1, str(donor), float(ages.loc[donor]), row["sum"] / row["count"]))
    table = pd.DataFrame(rows, columns=["model", "repeat", "fold", "donor_id", "age", "predicted"])
    table.attrs["cells_fitted"] = float(per_fit)
    return table


def cv_summary(predictions: pd.DataFrame, params: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{model: {mae, cells_fitted, mae_ci95, folds, repeats, n_donors, mae_repeats, r, predictions}}``, scored by
    :func:`neuroage_utils.metrics.repeated_entry` (donors in id order).

    ``mae_repeats`` is the MAE of each repeat (the spread from refolding); ``r`` the Pearson r of
    the repeat-averaged prediction with age (None when undefined); ``predictions`` the
    repeat-averaged prediction per donor.
    """
    out = {}
    for model in predictions["model"].unique():
        sub = predictions[predictions["model"] == model]
        wide = sub.pivot_table(index="donor_id", columns="repeat", values="predicted", aggfunc="mean")
        ages = sub.groupby("donor_id")["age"].first().loc[wide.index]
        e = metrics.repeated_entry(wide.index, ages.to_numpy(), wide.to_numpy(), n_boot=n_boot, seed=seed)
        out[model] = {
            "mae": e["mae"], "cells_fitted": predictions.attrs.get("cells_fitted"), "mae_ci95": e["mae_ci95"], "folds": int(params["folds"]),
            "repeats": int(params["repeats"]), "n_donors": e["n_donors"], "mae_repeats": e["mae_per_repeat"],
            "r": e["r"],
            "predictions": [{k: p[k] for k in ("donor_id", "age", "predicted")} for p in e["predictions"]],
        }
    return out


def paired_cv_difference(predictions: pd.DataFrame, model_a: str, model_b: str, n_boot: int = 2000,
                         seed: int = 0) -> dict:
    """CV MAE of a minus that of b on the same donors (per-donor errors averaged over repeats), with a
    paired bootstrap 95% interval; negative means a is better."""
    ea, eb = _donor_errors(predictions, model_a), _donor_errors(predictions, model_b)
    if not len(ea.index.intersection(eb.index)):
        raise ValueError(f"{model_a} and {model_b} share no donor")
    return {"a": model_a, "b": model_b,
            **metrics.paired_error_difference(ea.to_dict(), eb.to_dict(), n_boot=n_boot, seed=seed)}


def cv_comparisons(predictions: pd.DataFrame, references=("null", "elastic_net"), n_boot: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """Every model against each reference model (paired, same donors): one row per pair."""
    models = list(predictions["model"].unique())
    rows = []
    for ref in references:
        if ref not in models:
            continue
        for m in models:
            if m != ref:
                rows.append(paired_cv_difference(predictions, m, ref, n_boot=n_boot, seed=seed))
    return pd.DataFrame(rows, columns=["a", "b", "difference", "ci95", "n_donors", "excludes_zero"])
