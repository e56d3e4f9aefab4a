"""Repeated donor-grouped cross-validation over all donors, and paired comparisons of its errors.

A single split scores a model on 11 test donors; the interval of such an MAE spans years. Here every
donor is held out once per repeat: donors are dealt into age-stratified folds (sorted by age, each
consecutive block of ``n_splits`` donors spread over the folds at random), each model is refitted on
the other folds' donors **only** (gene scaling, factorisations, cell subsampling and penalty tuning
happen inside the fold) and predicts the held-out donors. Repeats reshuffle the folds.

Scoring: a donor's prediction is its prediction averaged over repeats and its error the absolute
error of that prediction; a model's CV MAE is the mean over donors (the MAE of the reported
predictions; ``mae_repeats`` keeps each repeat's own MAE), with a percentile bootstrap interval
over donors. Two models are compared on the same
donors by the paired bootstrap of their per-donor errors. The bootstrap treats the fitted models as
fixed, so the intervals show donor-to-donor variation, not the variation of refitting.

Model recipes are functions ``recipe(data, train_donors, test_donors, params, seed, device) ->
pandas.Series`` (predicted age per held-out donor); :data:`RECIPES` holds the book's models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroage_utils import metrics
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import log_normalize
from neuroage_utils.train.workers import run_tasks

__all__ = ["CVData", "age_stratified_folds", "repeated_folds", "RECIPES", "run_cv", "fit_cells", "cell_split_cv",
           "cv_summary", "paired_cv_difference", "cv_comparisons", "NeedsCounts"]


class NeedsCounts(DataValidationError):
    """A model that sums or models raw counts was given values that are not counts."""


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
    """``[(repeat, fold, train_donor_ids, test_donor_ids), ...]`` for every repeat and fold."""
    out = []
    for repeat in range(n_repeats):
        folds = age_stratified_folds(donor_ages, n_splits, seed=seed * 1000 + repeat)
        for fold in range(n_splits):
            test = folds.index[folds == fold].astype(str).to_numpy()
            train = folds.index[folds != fold].astype(str).to_numpy()
            out.append((repeat, fold, train, test))
    return out


# --------------------------------------------------------------------------------------------------
# Model recipes: fit on the training fold's donors, predict the held-out donors
# --------------------------------------------------------------------------------------------------


def fit_cells(data: CVData, train, P, seed) -> np.ndarray:
    """The training cells every model of a fold is fitted on: the cells of the ``train`` donors, at
    most ``P['cells_per_donor']`` per donor (None: all of them), drawn with the fold's ``seed``, which
    every model of the fold shares. Equal data: no model sees more or other cells than another."""
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


def _fit_cells(data: CVData, train, P, seed):
    return fit_cells(data, train, P, seed)


def _donor_mean(pred, donors) -> pd.Series:
    s = pd.Series(np.asarray(pred, float)).groupby(np.asarray(donors)).mean()
    s.index.name = "donor_id"
    return s.rename("predicted")


def _require_counts(data: CVData, what: str):
    if not data.is_counts:
        raise NeedsCounts(f"{what} sums raw counts and the data are not raw counts")


def _inner(train, P) -> int:
    return int(min(P.get("inner_splits", 5), len(train)))


def recipe_null(data, train, test, P, seed, device):
    ages = data.donor_ages()
    return pd.Series(float(ages.loc[train].mean()), index=pd.Index(sorted(test), name="donor_id"), name="predicted")


def recipe_elastic_net(data, train, test, P, seed, device):
    from neuroage_utils.models.linear import fit_elastic_net

    cells, held = _fit_cells(data, train, P, seed), data.cells(test)
    clock = fit_elastic_net(data.X_norm[cells], data.ages[cells], data.donors[cells], l1_ratios=P["en_l1"],
                            n_alphas=P["en_alphas"], n_splits=_inner(train, P), seed=seed)
    return clock.predict_donors(data.X_norm[held], data.donors[held])


def _aggregated_clock(fit, what: str, data, train, test, P, seed, **options):
    """An elastic net on summed counts (pseudobulk or pseudocells) fitted on the training donors."""
    _require_counts(data, what)
    tr, held = _fit_cells(data, train, P, seed), data.cells(test)
    clock = fit(data.X[tr], data.ages[tr], data.donors[tr], l1_ratios=P["en_l1"], n_alphas=P["en_alphas"],
                n_splits=_inner(train, P), seed=seed, **options)
    return clock.predict_donors(data.X[held], data.donors[held])


def recipe_pseudobulk(data, train, test, P, seed, device):
    from neuroage_utils.models.linear import fit_pseudobulk_elastic_net

    return _aggregated_clock(fit_pseudobulk_elastic_net, "the pseudobulk elastic net", data, train, test, P, seed)


def recipe_pseudocell(data, train, test, P, seed, device):
    from neuroage_utils.models.linear import fit_pseudocell_elastic_net

    return _aggregated_clock(fit_pseudocell_elastic_net, "the pseudocell elastic net", data, train, test, P, seed,
                             **P["pseudocells"])


def recipe_svd_ridge(data, train, test, P, seed, device):
    from neuroage_utils.models.svd import fit_svd
    from neuroage_utils.models.probe import probe_scores

    cells = _fit_cells(data, train, P, seed)
    k = int(min(P["svd_k"], min(int(cells.sum()), data.X_norm.shape[1]) - 2))
    svd = fit_svd(data.X_norm[cells], n_components=max(k, 1), seed=seed, **_linalg(P, device))
    used = data.cells(np.concatenate([train, test]))
    return probe_scores(svd.transform(data.X_norm[used]), data.donors[used], data.ages[used], train, test,
                        kind="ridge", n_alphas=P["probe_alphas"], n_splits=_inner(train, P), seed=seed)


def _linalg(P, device) -> dict:
    """NMF / SVD solver of the recipes: the profile's ``linalg_backend`` ("auto": torch on CUDA; on a CPU
    HALS for NMF, ARPACK for the SVD) on the run's device."""
    return {"backend": P.get("linalg_backend", "auto"), "device": device}


def _mlp(P, seed, device):
    from neuroage_utils.models.mlp import MLPRegressor

    return MLPRegressor(hidden=P["mlp_hidden"], epochs=P["mlp_epochs"], batch_size=P["batch_size"], dropout=0.4,
                        device=device, seed=seed, progress=False, amp=P.get("amp", False))


def recipe_mlp(data, train, test, P, seed, device):
    cells, held = _fit_cells(data, train, P, seed), data.cells(test)
    model = _mlp(P, seed, device).fit(data.X_norm[cells], data.ages[cells], donors=data.donors[cells])
    return _donor_mean(model.predict(data.X_norm[held]), data.donors[held])


def recipe_nmf_mlp(data, train, test, P, seed, device):
    from neuroage_utils.models.nmf import fit_nmf

    cells, held = _fit_cells(data, train, P, seed), data.cells(test)
    k = int(min(P["nmf_k"], data.X.shape[1] - 1, int(cells.sum()) - 1))
    nmf = fit_nmf(data.X[cells], n_components=k, seed=seed, max_iter=P["nmf_iter"],  # raw input, as the paper
                  **_linalg(P, device))
    model = _mlp(P, seed, device).fit(nmf.transform(data.X[cells]), data.ages[cells], donors=data.donors[cells])
    return _donor_mean(model.predict(nmf.transform(data.X[held])), data.donors[held])


def vae_clock_from_params(P, seed, device):
    from neuroage_utils.models.vae_clock import VAELatentClock

    V = P["vae"]
    return VAELatentClock(likelihood=V["likelihood"], hidden=V["hidden"], latent=V["latent"], epochs=V["epochs"],
                          batch_size=P["batch_size"], max_cells=V.get("max_cells"), probe="elastic_net",
                          probe_alphas=P["probe_alphas"], probe_splits=P.get("inner_splits", 5),
                          kl_cycle={"zero_epochs": 1, "rise_epochs": max(1, V["epochs"] // 3), "hold_epochs": V["epochs"]},
                          T_0=max(2, V["epochs"]), device=device, seed=seed, amp=P.get("amp", False))


def recipe_vae_clock(data, train, test, P, seed, device):
    tr, held = _fit_cells(data, train, P, seed), data.cells(test)
    # in the CV the clock's VAE trains on the fold's cells, like every other model
    clock = vae_clock_from_params({**P, "vae": {**P["vae"], "max_cells": None}}, seed, device)
    clock.fit(data.X[tr], data.ages[tr], data.donors[tr])
    return clock.predict_donors(data.X[held], data.donors[held])


RECIPES = {
    "null": recipe_null,
    "elastic_net": recipe_elastic_net,
    "pseudobulk_elastic_net": recipe_pseudobulk,
    "pseudocell_elastic_net": recipe_pseudocell,
    "svd_ridge": recipe_svd_ridge,
    "mlp": recipe_mlp,
    "nmf_mlp": recipe_nmf_mlp,
    "vae_latent_pseudobulk": recipe_vae_clock,
}



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
    """The CV's elastic net fitted on cells drawn at random (their donors also have cells in the
    test fold): per-donor mean prediction of the held-out cells and their number."""
    from neuroage_utils.models.linear import fit_elastic_net

    clock = fit_elastic_net(data.X_norm[train_cells], data.ages[train_cells], data.donors[train_cells],
                            l1_ratios=P["en_l1"], n_alphas=P["en_alphas"], n_splits=P.get("inner_splits", 5), seed=seed)
    pred = clock.predict(data.X_norm[test_cells])
    frame = pd.DataFrame({"donor_id": data.donors[test_cells], "predicted": pred})
    return frame.groupby("donor_id")["predicted"].agg(["sum", "count"])


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
    """``{model: {mae, cells_fitted, mae_ci95, folds, repeats, n_donors, mae_repeats, r, predictions}}``.

    ``cells_fitted`` is the mean number of training cells of a per-fold fit (the table's
    ``attrs['cells_fitted']``, set by :func:`run_cv`: the same for every model).

    ``mae_repeats`` is the MAE of each repeat (the spread from refolding); ``r`` the Pearson r of
    the repeat-averaged prediction with age (None when undefined); ``predictions`` the
    repeat-averaged prediction per donor.
    """
    out = {}
    for model in predictions["model"].unique():
        sub = predictions[predictions["model"] == model]
        errors = _donor_errors(predictions, model)
        mean_pred = sub.groupby("donor_id").agg(age=("age", "first"), predicted=("predicted", "mean"))
        per_repeat = sub.assign(err=(sub["predicted"] - sub["age"]).abs()).groupby("repeat")["err"].mean()
        r = None
        if mean_pred["predicted"].std() > 0:
            r = float(np.corrcoef(mean_pred["age"], mean_pred["predicted"])[0, 1])
        out[model] = {
            "mae": float(errors.mean()),
            "cells_fitted": predictions.attrs.get("cells_fitted"),
            "mae_ci95": metrics.bootstrap_mean_ci(errors.to_numpy(), n_boot=n_boot, seed=seed),
            "folds": int(params["folds"]),
            "repeats": int(params["repeats"]),
            "n_donors": int(len(errors)),
            "mae_repeats": [float(v) for v in per_repeat],
            "r": r,
            "predictions": [{"donor_id": d, "age": float(row.age), "predicted": float(row.predicted)}
                            for d, row in mean_pred.iterrows()],
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
