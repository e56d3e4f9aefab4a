"""Clocks on donor-level data (the real-donor chapter): every chapter model that accepts continuous
donor-level values, evaluated where every split is a split of donors.

Models are built by the one registry (:mod:`neuroage_utils.evaluation.recipes`, level ``"donors"``).

* repeated K-fold cross-validation stratified by age (:func:`repeated_stratified_folds`); a donor's
  error is its mean absolute out-of-fold error over the repeats;
* cross-cohort: train on two datasets, test on the third, each in turn (:func:`cohort_folds`);
* the published clock shipped with the data, applied to the same donors (:func:`published_clock`).

The files themselves (fetch, checks, loading) are in :mod:`neuroage_utils.data.realdata`.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pandas as pd

from neuroage_utils import metrics
from neuroage_utils.data.realdata import CELL_TYPES, CLOCK_FILES, CellTypeData, RealData
from neuroage_utils.evaluation import recipes
from neuroage_utils.evaluation.crossval import repeated_folds
from neuroage_utils.report.tables import format_r
from neuroage_utils.train.workers import run_tasks, worker_count

#: Names of the real-donor models for readers (from the one registry).
MODEL_LABELS = recipes.names("donors")

__all__ = ["DECLINED", "MODEL_LABELS", "repeated_stratified_folds", "cohort_folds", "run_cell_type", "run_all",
           "published_clock", "cv_table", "cross_table", "findings", "by_cohort_findings", "within_cohort_folds",
           "centre_by_cohort", "skipped_models"]


#: Chapter models that cannot run on these files, and why.
DECLINED = {
    "vae_poisson": "a Poisson likelihood needs raw UMI counts; the files hold log1p(CPM)",
    "vae_nb": "a negative-binomial likelihood needs raw UMI counts; the files hold log1p(CPM)",
    "dae_poisson": "the denoising Poisson VAE needs raw UMI counts; the files hold log1p(CPM)",
    "dae": "the denoising VAE corrupts counts per cell; with one log-CPM profile per donor it adds "
           "nothing the Gaussian VAE does not test",
    "pseudobulk_elastic_net": "it sums a donor's cell counts; these rows already are per-donor pseudobulk "
                              "profiles (log1p(CPM)), so the elastic net here is the pseudobulk clock",
    "pseudocell_elastic_net": "it sums random groups of a donor's cells; the files hold no cells",
}


def skipped_models(reason: str) -> dict:
    """The ``models`` block when the files are absent: every group skipped with the reason."""
    return {f"{key}{suffix}": {"skipped": reason} for key in CELL_TYPES for suffix in ("", "_cross")}


# --------------------------------------------------------------------------------------------------
# Splits of donors
# --------------------------------------------------------------------------------------------------


def repeated_stratified_folds(ages, n_splits: int = 5, n_repeats: int = 1, seed: int = 0):
    """``(repeat, fold, train_index, test_index)`` for ``n_repeats`` K-fold splits stratified by age:
    the book's one age-stratified donor split (:func:`neuroage_utils.evaluation.crossval.repeated_folds`)
    on row positions (each row is a donor). Each donor is tested exactly once per repeat."""
    ages = pd.Series(np.asarray(ages, dtype=float))
    for r, f, train, test in repeated_folds(ages, n_splits=n_splits, n_repeats=n_repeats, seed=seed):
        yield r, f, np.sort(train.astype(int)), np.sort(test.astype(int))


def cohort_folds(datasets):
    """``(held_out_dataset, train_index, test_index)``: train on the other datasets, test on one."""
    datasets = np.asarray(datasets).astype(str)
    for name in sorted(np.unique(datasets)):
        test = np.flatnonzero(datasets == name)
        train = np.flatnonzero(datasets != name)
        yield name, train, test


# --------------------------------------------------------------------------------------------------
# The models: fit on training donors, predict held-out donors
# --------------------------------------------------------------------------------------------------


def donor_settings(key: str, P: dict) -> dict:
    """The registry settings (:mod:`neuroage_utils.evaluation.recipes`, level ``"donors"``) of model
    ``key`` from the real-donor section's parameters ``P``."""
    backend = {"linalg_backend": P.get("linalg_backend", "auto")}
    if key == "nmf_mlp":
        M = P["nmf_mlp"]
        mlp = {k: M[k] for k in ("hidden", "dropout", "epochs", "lr", "batch_size", "weight_decay") if k in M}
        return {"n_components": M["n_components"], "max_iter": M["max_iter"], "mlp": mlp, **backend}
    if key == "svd_ridge":
        return {**P["svd_ridge"], **backend}
    if key == "vae_gaussian":
        return {**P["vae_gaussian"], "log_normalize": False}  # the values already are log1p(CPM): only z-scored
    return dict(P.get(key, {}))


def _fit_predict(key: str, P: dict, Xtr, ytr, dtr, Xte, seed: int, device: str) -> np.ndarray:
    """Fit model ``key`` (settings ``P``) on training donors; predicted ages of the test donors."""
    recipe = recipes.get(key, level="donors")
    model = recipe.build(donor_settings(key, P), device=device, seed=seed,
                         **({"progress": False} if recipe.torch else {}))
    model.fit(Xtr, ytr, donors=dtr)
    return model.predict(Xte)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score(donors, ages, predicted: np.ndarray, split: str, seed: int = 0, **extra) -> dict:
    """A results entry from :func:`neuroage_utils.metrics.repeated_entry` (the book's one scorer of
    out-of-fold predictions). ``predicted`` is donors x repeats; ``predicted`` in the entry is the
    repeat mean, and ``mae_per_repeat`` is kept only when there are several repeats."""
    predicted = np.asarray(predicted, float)
    entry = {"split": split, **metrics.repeated_entry(donors, ages, predicted, seed=seed)}
    if predicted.ndim == 1 or predicted.shape[1] == 1:
        del entry["mae_per_repeat"]
    entry.update(extra)
    return entry


def _task(key, P, X, y, donors, train, test, seed, device):
    """One fit on the training donors and its predictions for the test donors, with its seconds
    (run by :func:`neuroage_utils.train.workers.run_tasks`, single-threaded in a worker)."""
    start = time.perf_counter()
    pred = _fit_predict(key, P, X[train], y[train], donors[train], X[test], seed, device)
    return pred, time.perf_counter() - start


def run_cell_type(ct: CellTypeData, P: dict, seed: int = 0, device: str = "cpu", progress=None) -> tuple[dict, dict]:
    """Every model by repeated stratified CV and across cohorts on one cell type.

    Returns ``(cv_models, cross_models)``: results entries keyed by model. Cross-cohort entries pool
    the donors of every held-out dataset (each predicted once, by the model trained on the other
    datasets) and break the MAE down per dataset in ``by_dataset``. The fits are independent, so with
    ``P['n_jobs'] > 1`` they run in that many worker processes, one thread each (same seeds, so the
    same splits and the same models).
    """
    keys = list(P["models"])
    if P.get("max_donors") or P.get("max_genes"):
        ct = subsample(ct, P.get("max_donors") or ct.n_donors, seed, max_genes=P.get("max_genes"))
    X, y, donors = ct.X, ct.ages, ct.donors
    n_rep, n_splits = int(P["n_repeats"]), int(P["n_splits"])
    folds = list(repeated_stratified_folds(y, n_splits=n_splits, n_repeats=n_rep, seed=seed))
    cross = list(cohort_folds(ct.datasets))
    # (what, repeat or held-out dataset, train, test, fit seed, model)
    tasks = [("cv", r, train, test, seed + 100 * r + f, k) for r, f, train, test in folds for k in keys]
    tasks += [("cross", name, train, test, seed, k) for name, train, test in cross for k in keys]
    # By cohort (a few models): CV inside each cohort alone, and leave-one-cohort-out on genes centred
    # per cohort, which removes any cohort-wide shift of expression (a batch effect) before fitting.
    by_keys = [k for k in P.get("by_cohort_models", ()) if k in keys]
    within = list(within_cohort_folds(ct.datasets, y, n_splits, n_rep, seed)) if by_keys else []
    tasks += [("within", r, train, test, seed + 100 * r + f, k) for r, f, train, test in within for k in by_keys]
    tasks += [("centred", name, train, test, seed, k) for name, train, test in cross for k in by_keys]
    Xc = centre_by_cohort(X, ct.datasets) if by_keys else None
    outputs = run_tasks(_task, [(k, P, Xc if what == "centred" else X, y, donors, train, test, s, device)
                                for what, _, train, test, s, k in tasks],
                        worker_count(device, int(P.get("n_jobs", 1))),
                        progress=(lambda done, total: progress(done, total, ct.key)) if progress else None)
    cv_pred = {k: np.full((len(y), n_rep), np.nan) for k in keys}
    cross_pred = {k: np.full(len(y), np.nan) for k in keys}
    within_pred = {k: np.full((len(y), n_rep), np.nan) for k in by_keys}
    centred_pred = {k: np.full(len(y), np.nan) for k in by_keys}
    seconds = {k: 0.0 for k in keys}
    for (what, where, _, test, _, k), (pred, took) in zip(tasks, outputs):
        if what == "cv":
            cv_pred[k][test, where] = pred
            seconds[k] += took
        elif what == "within":
            within_pred[k][test, where] = pred
        elif what == "centred":
            centred_pred[k][test] = pred
        else:
            cross_pred[k][test] = pred
    cv_models = {k: score(donors, y, cv_pred[k], "cv", seed=seed, n_splits=n_splits, n_repeats=n_rep,
                          stratified_by="age", fit_seconds=round(seconds[k], 2)) for k in keys}
    cross_models = {}
    for k in keys:
        cross_models[k] = score(donors, y, cross_pred[k], "test", seed=seed, trained_on="the other datasets",
                                by_dataset=_by_dataset(ct, cross_pred[k], seed))
    if by_keys:
        scored = np.isin(np.arange(len(y)), np.concatenate([t for _, _, _, t in within])) if within else np.zeros(len(y), bool)
        by_cohort = {}
        if scored.any():
            sub = _subset(ct, scored)
            by_cohort["within"] = {k: score(donors[scored], y[scored], within_pred[k][scored], "cv", seed=seed,
                                            n_splits=n_splits, n_repeats=n_rep, stratified_by="age, within each dataset",
                                            by_dataset=_by_dataset(sub, within_pred[k][scored].mean(axis=1), seed))
                                   for k in by_keys}
        by_cohort["cross_centred"] = {k: score(donors, y, centred_pred[k], "test", seed=seed,
                                               trained_on="the other datasets, genes centred per dataset",
                                               by_dataset=_by_dataset(ct, centred_pred[k], seed)) for k in by_keys}
        cross_models["__by_cohort__"] = by_cohort
    return cv_models, cross_models


def within_cohort_folds(datasets, ages, n_splits: int, n_repeats: int, seed: int = 0):
    """``(repeat, fold, train_index, test_index)`` of age-stratified CV inside each dataset alone
    (datasets with fewer than ``2 * n_splits`` donors are left out: too few to cross-validate)."""
    datasets, ages = np.asarray(datasets).astype(str), np.asarray(ages, float)
    for name in sorted(np.unique(datasets)):
        idx = np.flatnonzero(datasets == name)
        if len(idx) < 2 * n_splits:
            continue
        for r, f, train, test in repeated_stratified_folds(ages[idx], n_splits, n_repeats, seed):
            yield r, f, idx[train], idx[test]


def centre_by_cohort(X, datasets) -> np.ndarray:
    """Each dataset's genes centred on that dataset's own donor means (no ages read): what is left
    is the variation within each cohort; a cohort-wide shift of expression (batch) is removed."""
    X = np.asarray(X, dtype=np.float32).copy()
    datasets = np.asarray(datasets).astype(str)
    for name in np.unique(datasets):
        m = datasets == name
        X[m] -= X[m].mean(axis=0, keepdims=True)
    return X


def _subset(ct: CellTypeData, mask) -> CellTypeData:
    return CellTypeData(key=ct.key, label=ct.label, X=ct.X[mask], ages=ct.ages[mask], donors=ct.donors[mask],
                        datasets=ct.datasets[mask], genes=ct.genes, path=ct.path, sha256=ct.sha256)


def subsample(ct: CellTypeData, max_donors: int, seed: int = 0, max_genes: int | None = None) -> CellTypeData:
    """At most ``max_donors`` donors, drawn at random within each dataset in proportion, and at most
    ``max_genes`` genes, the most variable (an unsupervised choice: ages are not looked at). For
    smoke runs, which prove the plumbing, not the science."""
    keep = np.arange(ct.n_donors)
    if ct.n_donors > max_donors:
        rng = np.random.default_rng(seed)
        parts = []
        for name in np.unique(ct.datasets):
            idx = np.flatnonzero(ct.datasets == name)
            n = max(5, int(round(len(idx) * max_donors / ct.n_donors)))
            parts.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
        keep = np.sort(np.concatenate(parts))
    genes = np.arange(len(ct.genes))
    if max_genes and len(genes) > max_genes:
        genes = np.sort(np.argsort(-ct.X.var(axis=0), kind="stable")[:max_genes])
    return CellTypeData(key=ct.key, label=ct.label, X=ct.X[np.ix_(keep, genes)], ages=ct.ages[keep],
                        donors=ct.donors[keep], datasets=ct.datasets[keep], genes=ct.genes[genes], path=ct.path,
                        sha256=ct.sha256)


def _by_dataset(ct: CellTypeData, pred: np.ndarray, seed: int) -> dict:
    """Per held-out dataset: MAE, interval, r, donors, training donors and the mean signed error
    (``bias``: predicted minus true; a large bias is a shift of the whole cohort, not noise)."""
    out = {}
    for name in sorted(np.unique(ct.datasets)):
        m = ct.datasets == name
        e = score(ct.donors[m], ct.ages[m], pred[m], "test", seed=seed)
        out[name] = {k: e[k] for k in ("mae", "mae_ci95", "r", "n_donors")} | {
            "n_train": int((~m).sum()), "bias": float(np.mean(pred[m] - ct.ages[m]))}
    return out


# --------------------------------------------------------------------------------------------------
# The package's published clock
# --------------------------------------------------------------------------------------------------


def published_clock(rd: RealData, ct: CellTypeData, seed: int = 0) -> dict:
    """The package's published ridge clock on the same donors, or ``{"skipped": reason}``.

    Loaded only from files that match the manifest of the checked wheel (unpickling runs code).
    The scaler and ridge weights are read out and applied with numpy, so the prediction does not
    depend on the pickle's scikit-learn version (1.6.1) matching ours.
    """
    folder = rd.folder / CELL_TYPES[ct.key][2].split("/", 1)[1]
    if not rd.verified:
        return {"skipped": "its files were not installed from the checked wheel, so the pickle is not loaded"}
    if not all((folder / f).exists() for f in CLOCK_FILES):
        return {"skipped": f"the published clock's files are absent from {folder}"}
    import joblib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unpickling from version 1.6.1": only the arrays are used
        pipe = joblib.load(folder / "model_V1.pkl")
    scaler, ridge = pipe.steps[0][1], pipe.steps[-1][1]
    features = (folder / "feature_names_V1.txt").read_text().split()
    meta = json.loads((folder / "metadata.json").read_text())
    index = {g: i for i, g in enumerate(ct.genes)}
    missing = [g for g in features if g not in index]
    if missing:
        return {"skipped": f"{len(missing)} of its {len(features)} genes are not in the file"}
    Xf = ct.X[:, [index[g] for g in features]].astype(float)
    pred = ((Xf - scaler.mean_) / scaler.scale_) @ np.ravel(ridge.coef_) + float(np.ravel(ridge.intercept_)[0])
    trained = meta.get("training_data", "unknown")
    overlap = sorted({d for d in np.unique(ct.datasets) if d.lower() in trained.lower()})
    return score(ct.donors, ct.ages, pred, "test", seed=seed, trained_on=trained,
                 model=f"{meta.get('model_type', 'ridge')} on {len(features)} genes, version {meta.get('version')}",
                 datasets_in_its_training=overlap, by_dataset=_by_dataset(ct, pred, seed),
                 sklearn_version_of_pickle=getattr(pipe, "_sklearn_version", None))


# --------------------------------------------------------------------------------------------------
# Tables and sentences for the page
# --------------------------------------------------------------------------------------------------


def _ci(e) -> str:
    return f"{e['mae_ci95'][0]:.2f}-{e['mae_ci95'][1]:.2f}"


def cv_table(models: dict) -> pd.DataFrame:
    """One row per model and cell type: cross-validated MAE, interval, r; declined models listed."""
    rows = []
    for ct in CELL_TYPES:
        group = models.get(ct, {})
        if "skipped" in group:
            continue
        for k, e in group.items():
            if "skipped" in e:
                continue
            rows.append({"cell type": ct.upper(), "model": MODEL_LABELS.get(k, k), "split": e["split"],
                         "MAE (years)": round(e["mae"], 2), "95% CI": _ci(e),
                         "r": None if e["r"] is None else round(e["r"], 2), "donors": e["n_donors"]})
    return pd.DataFrame(rows)


def _mae_text(e: dict) -> str:
    """``10.57 (9.0–12.1), n 99``: an MAE with its 95% interval and donors, for a table cell."""
    return f"{e['mae']:.2f} ({e['mae_ci95'][0]:.1f}–{e['mae_ci95'][1]:.1f}), n {e['n_donors']}"


def cross_table(models: dict) -> pd.DataFrame:
    """Cross-cohort MAE per held-out dataset (columns) and pooled, per model and cell type:
    ``MAE (95% interval), n donors``."""
    rows = []
    for ct in CELL_TYPES:
        group = models.get(f"{ct}_cross", {})
        if "skipped" in group:
            continue
        for k, e in group.items():
            if "skipped" in e:
                continue
            row = {"cell type": ct.upper(), "model": MODEL_LABELS.get(k, k)}
            for name, d in e.get("by_dataset", {}).items():
                row[name] = _mae_text(d)
            row["all donors"] = _mae_text(e)
            rows.append(row)
    return pd.DataFrame(rows)


def declined_table() -> pd.DataFrame:
    return pd.DataFrame([{"model": k, "why not run": v} for k, v in DECLINED.items()])


def _verdict(comparison: dict, other: str) -> str:
    """Better, worse or indistinguishable, from a paired difference (ours minus ``other``)."""
    if not comparison["excludes_zero"]:
        return f"the interval includes zero: not distinguishable from {other}"
    return f"the interval excludes zero: {'better' if comparison['difference'] < 0 else 'worse'} than {other}"


def findings(models: dict, seed: int = 0) -> str:
    """Markdown bullets computed from the entries: best model vs null, per cell type, CV and cross."""
    lines = []
    for ct, (label, _, _) in CELL_TYPES.items():
        for suffix, what in (("", "cross-validation"), ("_cross", "across cohorts")):
            group = {k: e for k, e in models.get(ct + suffix, {}).items() if isinstance(e, dict) and "mae" in e}
            ours = {k: e for k, e in group.items() if k not in ("null", "published_clock")}
            if not ours or "null" not in group:
                continue
            best = min(ours, key=lambda k: ours[k]["mae"])
            cmp = metrics.paired_difference(ours[best], group["null"], seed=seed)
            verdict = _verdict(cmp, "the null")
            lines.append(
                f"- **{label}, {what}**: lowest of our {len(ours)} models is the {MODEL_LABELS[best]} at "
                f"{ours[best]['mae']:.2f} years "
                f"(95% CI {_ci(ours[best])}) against {group['null']['mae']:.2f} ({_ci(group['null'])}) for the null; "
                f"paired difference {cmp['difference']:+.2f} years ({cmp['ci95'][0]:+.2f} to {cmp['ci95'][1]:+.2f}), {verdict}.")
            if "published_clock" in group:
                pc = group["published_clock"]
                c2 = metrics.paired_difference(ours[best], pc, seed=seed)
                side = "lower" if c2["difference"] < 0 else "higher"
                lines.append(
                    f"  The published clock on the same donors: {pc['mae']:.2f} years ({_ci(pc)}); our best's MAE is "
                    f"{abs(c2['difference']):.2f} years {side} ({c2['ci95'][0]:+.2f} to {c2['ci95'][1]:+.2f}), "
                    f"{_verdict(c2, 'the published clock')}.")
            if suffix == "_cross":
                worst = max(group[best]["by_dataset"].items(), key=lambda kv: kv[1]["mae"])
                lines.append(f"  Hardest held-out dataset for it: `{worst[0]}` ({worst[1]['n_donors']} donors, "
                             f"MAE {worst[1]['mae']:.2f}, mean predicted minus true age {worst[1]['bias']:+.1f} years).")
    return "\n".join(lines)


def by_cohort_findings(models: dict, seed: int = 0) -> str:
    """Markdown bullets: per cell type, each cohort's own CV against the null, and leave-one-cohort-out
    with and without per-cohort gene centring (is the collapse across cohorts a batch effect?)."""
    lines = []
    for ct, (label, _, _) in CELL_TYPES.items():
        within, centred = models.get(f"{ct}_within", {}), models.get(f"{ct}_cross_centred", {})
        cross = models.get(f"{ct}_cross", {})
        if "elastic_net" not in centred or "mae" not in cross.get("elastic_net", {}):
            continue
        if "mae" in within.get("elastic_net", {}) and "mae" in within.get("null", {}):
            per = "; ".join(f"`{d}` {v['mae']:.2f} vs null {within['null']['by_dataset'][d]['mae']:.2f} ({v['n_donors']} donors)"
                            for d, v in within["elastic_net"]["by_dataset"].items())
            cmp = metrics.paired_difference(within["elastic_net"], within["null"], seed=seed)
            lines.append(f"- **{label}, CV inside each cohort alone** (no cohort can stand in for age): elastic net "
                         f"{within['elastic_net']['mae']:.2f} against the null's {within['null']['mae']:.2f} "
                         f"(paired {cmp['difference']:+.2f}, {cmp['ci95'][0]:+.2f} to {cmp['ci95'][1]:+.2f}); per cohort: {per}.")
        raw, cen, null = cross["elastic_net"], centred["elastic_net"], cross["null"]
        d = metrics.paired_difference(cen, raw, seed=seed)
        dn = metrics.paired_difference(cen, null, seed=seed)
        if d["ci95"][1] < 0:
            verdict = ("centring each cohort's genes lowers the error with an interval below zero: part of the "
                       "collapse is a cohort-wide shift of expression (a batch effect)")
        elif d["ci95"][0] > 0:
            verdict = "centring makes it worse: the cohort-wide shifts carried age information, not only batch"
        else:
            verdict = "centring does not change it beyond the noise of these donors: the collapse is not explained by a cohort-wide shift alone"
        beats = ("beats the null" if dn["ci95"][1] < 0 else
                 "is still worse than the null" if dn["ci95"][0] > 0 else "is not distinguishable from the null")
        lines.append(f"- **{label}, leave one cohort out, genes centred per cohort**: elastic net {cen['mae']:.2f} against "
                     f"{raw['mae']:.2f} uncentred (paired {d['difference']:+.2f}, {d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}) "
                     f"and {null['mae']:.2f} for the null (the centred clock {beats}); {verdict}. Centring also removes each held-out cohort's mean age difference, so a centred "
                     f"clock can at best rank donors within a cohort.")
    return "\n".join(lines)


def run_all(rd: RealData, P: dict, seed: int = 0, device: str = "auto", progress: bool = True) -> dict:
    """The ``models`` block of ``results/realdata.json``: per cell type the CV entries
    (``models['cd4t']``) and the cross-cohort entries with the published clock (``models['cd4t_cross']``);
    every group skipped with the reason when the files are absent."""
    if not rd.available:
        return skipped_models(rd.reason)
    bar = None
    if progress:
        from tqdm import tqdm  # plain text bar: tqdm.auto warns in a kernel without ipywidgets

        bar = tqdm(total=1, desc="real donors", unit="fit")

    def tick(done, total, what):
        bar.total = total * len(rd.cell_types)
        bar.n = done + offset[0]
        bar.set_postfix_str(what, refresh=False)
        bar.refresh()

    models, offset = {}, [0]
    for key, ct in rd.cell_types.items():
        cv, cross = run_cell_type(ct, P, seed=seed, device=device, progress=tick if bar else None)
        by_cohort = cross.pop("__by_cohort__", {})
        for what, group in by_cohort.items():
            models[f"{key}_{what}"] = group
        offset[0] += (len(cv) * (P["n_splits"] * P["n_repeats"]) + len(cross) * len(np.unique(ct.datasets)))
        # the same donors as our models (a smoke run subsamples them); all of its genes
        same_donors = subsample(ct, P.get("max_donors") or ct.n_donors, seed)
        cross["published_clock"] = published_clock(rd, same_donors, seed=seed)
        models[key], models[f"{key}_cross"] = cv, cross
    if bar:
        bar.close()
    for key in DECLINED:  # declined models are listed under each cell type with the reason
        for ct in rd.cell_types:
            models[ct][key] = {"skipped": DECLINED[key]}
    return models


def published_clock_note(models: dict) -> str:
    """What the published clock is, whether these donors trained it, and how it did (or why it did not run)."""
    lines = []
    for ct, (label, _, _) in CELL_TYPES.items():
        e = models.get(f"{ct}_cross", {}).get("published_clock") if "skipped" not in models.get(f"{ct}_cross", {}) else None
        if e is None:
            continue
        if "skipped" in e:
            lines.append(f"- {label}: not run ({e['skipped']}).")
            continue
        overlap = e.get("datasets_in_its_training") or []
        trained = (f"its metadata names {', '.join(overlap)} among its training data, so those donors may have trained it"
                   if overlap else "none of these datasets is among them, so these donors are out of sample for it")
        per = "; ".join(f"`{d}` {v['mae']:.2f}" for d, v in e["by_dataset"].items())
        lines.append(f"- {label}: {e['model']}, trained on {e['trained_on']} (its `metadata.json`); {trained}. "
                     f"MAE {e['mae']:.2f} years (95% CI {_ci(e)}), r {format_r(e['r'])}; per dataset: {per}.")
    return "\n".join(lines) if lines else "The published clock did not run: the real-donor files are absent."


def settings_table(P: dict) -> pd.DataFrame:
    """The configuration that runs under this profile, one row per model."""
    EN, M, S, N, V = P["elastic_net"], P["mlp"], P["svd_ridge"], P["nmf_mlp"], P["vae_gaussian"]
    rows = {
        "splits": f"{P['n_repeats']} x {P['n_splits']}-fold CV stratified by age; each dataset held out in turn; "
                  f"{P.get('n_jobs', 1)} worker process(es)"
                  + (f"; {P['max_donors']} donors at most" if P.get("max_donors") else ""),
        "elastic_net": f"{EN['n_alphas']} penalties down to {EN['eps']:g} x the largest, L1 ratios {EN['l1_ratios']}, "
                       f"inner {EN['n_splits']}-fold CV, random coordinate order",
        "mlp": f"widths {M['hidden']}, dropout {M['dropout']}, {M['epochs']} epochs, batch {M['batch_size']}, Adam {M['lr']:g}",
        "svd_ridge": f"{S['n_components']} components, ridge penalty by leave-one-out CV over 30 values",
        "nmf_mlp": f"k = {N['n_components']}, {N['max_iter']} iterations; MLP widths {N['hidden']}, {N['epochs']} epochs",
        "vae_gaussian": f"encoder {V['hidden']}, latent {V['latent']}, age head {V['age_hidden']}, {V['epochs']} epochs, "
                        f"batch {V['batch_size']}, cyclical KL",
    }
    return pd.DataFrame({"setting": rows}).rename_axis("model")
