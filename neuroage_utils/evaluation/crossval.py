"""Repeated donor-grouped cross-validation over all donors, and paired comparisons of its errors.

A single split scores a model on 11 test donors; the interval of such an MAE spans years. Here every
donor is held out once per repeat: donors are dealt into age-stratified folds (sorted by age, each
consecutive block of ``n_splits`` donors spread over the folds at random), each model is refitted on
the other folds' donors **only** (gene scaling, factorisations, cell subsampling and penalty tuning
happen inside the fold) and predicts the held-out donors. Repeats reshuffle the folds.

Scoring: a donor's error is its absolute error averaged over repeats; a model's CV MAE is the mean
over donors, with a percentile bootstrap interval over donors. Two models are compared on the same
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
    return {
        "null": {},
        "elastic_net": {**enet, "max_cells": P.get("en_max_cells")},
        "pseudobulk_elastic_net": enet,
        "pseudocell_elastic_net": {**enet, **P["pseudocells"]},
        "svd_ridge": {"n_components": P["svd_k"], "n_alphas": P["probe_alphas"], "n_splits": inner,
                      "max_cells": P.get("max_cells"), "linalg_backend": backend},
        "mlp": {**mlp, "max_cells": P.get("max_cells")},
        "nmf_mlp": {"n_components": P["nmf_k"], "max_iter": P["nmf_iter"], "max_cells": P.get("max_cells"),
                    "linalg_backend": backend, "mlp": mlp},
        "vae_latent_pseudobulk": {"likelihood": V["likelihood"], "hidden": V["hidden"], "latent": V["latent"],
                                  "epochs": V["epochs"], "batch_size": P["batch_size"], "max_cells": V["max_cells"],
                                  "probe_alphas": P["probe_alphas"], "probe_splits": inner, "amp": P.get("amp", False)},
    }[key]


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
        tr, held = data.cells(train), data.cells(test)
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
    return table, skipped, seconds


def _donor_errors(predictions: pd.DataFrame, model: str) -> pd.Series:
    """Per donor: the absolute error averaged over repeats."""
    sub = predictions[predictions["model"] == model]
    return (sub["predicted"] - sub["age"]).abs().groupby(sub["donor_id"]).mean()


def cv_summary(predictions: pd.DataFrame, params: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{model: {mae, mae_ci95, folds, repeats, n_donors, mae_repeats, r, predictions}}``, scored by
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
            "mae": e["mae"], "mae_ci95": e["mae_ci95"], "folds": int(params["folds"]),
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
