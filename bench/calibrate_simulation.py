"""Calibrate the simulated cohort against the study (numbers quoted in book/simulation.md and simulate_model.CALIBRATION).

Reports, for each seed, on the ``quick`` size (cell_fraction=0.05, n_genes=2000) unless told
otherwise:

- median UMIs per cell and the fraction of zero entries;
- the largest |Pearson r| between age and the 100 truncated-SVD components of the z-scored
  log-normalised matrix (all cells, as the paper's exploratory SVD), at cell level and after
  averaging each component per donor;
- the test-donor MAE of a cell-level elastic net (sklearn ElasticNetCV, l1_ratio 0.5, 10 alphas,
  donor-grouped 5-fold CV, trained on train+val donors, z-scored log-normalised counts, test donors
  scored by averaging their cells' predictions) and of a pseudobulk elastic net (one profile per
  donor: summed counts, log-normalised, z-scored; same CV on donors);
- the null MAE (mean age of the training donors) and the oracle MAE (simulated biological age).

The study's targets: best SVD |r| 0.43 (cell level), linear baselines 8-13 years on the 11 test
donors, null 15.3 years.

    python bench/calibrate_simulation.py --seeds 0 1 2
    python bench/calibrate_simulation.py --set age_lfc_median=0.8 --set biological_age_sd=6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neuroage_utils.data.features import log_normalize  # noqa: E402
from neuroage_utils.data.simulate import DEFAULT_PARAMETERS, simulate_cohort  # noqa: E402


def zscore(train: np.ndarray, *others: np.ndarray):
    mean, sd = train.mean(axis=0), train.std(axis=0)
    sd[sd == 0] = 1.0
    return [(a - mean) / sd for a in (train, *others)]


def pearson(x, y) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def svd_age_correlation(Z: np.ndarray, ages: np.ndarray, donors: np.ndarray, n_components: int, seed: int):
    from sklearn.decomposition import TruncatedSVD

    scores = TruncatedSVD(n_components=n_components, random_state=seed).fit_transform(Z)
    cell_r = np.array([pearson(scores[:, k], ages) for k in range(scores.shape[1])])
    uniq, inv = np.unique(donors, return_inverse=True)
    counts = np.bincount(inv)
    donor_scores = np.stack([np.bincount(inv, weights=scores[:, k]) / counts for k in range(scores.shape[1])], axis=1)
    donor_age = np.bincount(inv, weights=ages) / counts
    donor_r = np.array([pearson(donor_scores[:, k], donor_age) for k in range(scores.shape[1])])
    return {
        "svd_top_abs_r_cell": float(np.abs(cell_r).max()),
        "svd_top_component_cell": int(np.abs(cell_r).argmax()),
        "svd_top_abs_r_donor_mean": float(np.abs(donor_r).max()),
        "svd_median_abs_r_cell": float(np.median(np.abs(cell_r))),
    }


def elastic_net_mae(X_train, y_train, groups, X_test, test_donors, test_ages, seed: int):
    from sklearn.linear_model import ElasticNetCV
    from sklearn.model_selection import GroupKFold

    cv = list(GroupKFold(n_splits=5).split(X_train, y_train, groups))
    model = ElasticNetCV(l1_ratio=0.5, alphas=10, cv=cv, max_iter=2000, tol=1e-3, random_state=seed)
    model.fit(X_train, y_train)
    pred = model.predict(X_test)
    uniq, inv = np.unique(test_donors, return_inverse=True)
    donor_pred = np.bincount(inv, weights=pred) / np.bincount(inv)
    donor_age = np.bincount(inv, weights=test_ages) / np.bincount(inv)
    return float(np.mean(np.abs(donor_pred - donor_age))), int(np.sum(model.coef_ != 0)), float(model.alpha_)


def pseudobulk(X: sp.csr_matrix, donors: np.ndarray):
    uniq, inv = np.unique(donors, return_inverse=True)
    indicator = sp.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    return uniq, log_normalize(indicator @ X, target_sum=1e6).toarray()


def calibrate(seed: int, cell_fraction: float, n_genes: int, params, n_components: int = 100) -> dict:
    t0 = time.perf_counter()
    adata = simulate_cohort(cell_fraction=cell_fraction, n_genes=n_genes, seed=seed, params=params)
    t_sim = time.perf_counter() - t0
    X = adata.X
    obs = adata.obs
    ages = obs["age"].to_numpy(dtype=float)
    donors = obs["donor_id"].astype(str).to_numpy()
    split = obs["split"].astype(str).to_numpy()
    out = {
        "seed": seed,
        "n_cells": int(X.shape[0]),
        "n_genes": int(X.shape[1]),
        "simulate_seconds": round(t_sim, 1),
        "median_umis_per_cell": float(np.median(obs["n_counts"])),
        "median_genes_per_cell": float(np.median(np.diff(X.indptr))),
        "fraction_zeros": float(1 - X.nnz / (X.shape[0] * X.shape[1])),
        "oracle_test_mae": float(adata.uns["oracle_donor_mae"]),
    }
    L = log_normalize(X).toarray()
    (Z_all,) = zscore(L)
    out.update(svd_age_correlation(Z_all, ages, donors, min(n_components, X.shape[1] - 1), seed))

    train = np.isin(split, ["train", "val"])
    test = split == "test"
    donor_age = obs.groupby("donor_id", observed=True)["age"].first()
    donor_split = obs.groupby("donor_id", observed=True)["split"].first().astype(str)
    test_ages_d = donor_age[donor_split == "test"].to_numpy()
    for name, pool in (("null_mae_train_mean", ["train"]), ("null_mae_trainval_mean", ["train", "val"])):
        out[name] = float(np.mean(np.abs(test_ages_d - donor_age[donor_split.isin(pool)].mean())))

    Z_train, Z_test = zscore(L[train], L[test])
    t0 = time.perf_counter()
    mae, n_coef, alpha = elastic_net_mae(Z_train, ages[train], donors[train], Z_test, donors[test], ages[test], seed)
    out.update(en_cell_test_mae=mae, en_cell_nonzero_coef=n_coef, en_cell_alpha=alpha,
               en_cell_seconds=round(time.perf_counter() - t0, 1))

    names, P = pseudobulk(X, donors)
    d_split = donor_split.loc[names].to_numpy()
    d_age = donor_age.loc[names].to_numpy()
    ptrain, ptest = np.isin(d_split, ["train", "val"]), d_split == "test"
    P_train, P_test = zscore(P[ptrain], P[ptest])
    mae, n_coef, alpha = elastic_net_mae(P_train, d_age[ptrain], names[ptrain], P_test, names[ptest], d_age[ptest], seed)
    out.update(en_pseudobulk_test_mae=mae, en_pseudobulk_nonzero_coef=n_coef)
    return out


def parse_overrides(items) -> dict:
    fields = {f.name: f for f in dataclasses.fields(DEFAULT_PARAMETERS)}
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown parameter {key!r}; known: {', '.join(fields)}")
        current = getattr(DEFAULT_PARAMETERS, key)
        out[key] = tuple(float(v) for v in value.split(",")) if isinstance(current, tuple) else type(current)(value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cell-fraction", type=float, default=0.05)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a SimulationParameters field")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    params = dataclasses.replace(DEFAULT_PARAMETERS, **parse_overrides(args.set))
    rows = []
    for seed in args.seeds:
        row = calibrate(seed, args.cell_fraction, args.n_genes, params)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "seed" and isinstance(rows[0][k], (int, float))]
    summary = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
    print("mean over seeds:", json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"params": params.as_dict(), "runs": rows, "mean": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
