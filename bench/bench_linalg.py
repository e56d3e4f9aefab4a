"""NMF, truncated SVD and elastic-net CV: ours (torch, neuroage_utils.models.device_linalg) vs scikit-learn.

    .venv/bin/python bench/bench_linalg.py [--device cpu] [--cells 10000] [--genes 2000]

On simulated counts (the book's simulator; 10,000 cells x 2,000 genes by default):
* NMF, k = 100, raw counts: scikit-learn's coordinate descent for 200 iterations (its default
  max_iter) against accelerated HALS with its default stopping rule; time and objective
  ||X - WH||_F, and HALS's first checked iteration within 0.5% of scikit-learn's objective.
* SVD, k = 100 of the z-scored log-normalised matrix: ARPACK (the book's default) against the
  randomised SVD; time, singular-value error and the subspace agreement of the leading components.
* Elastic net with donor-grouped 5-fold CV, 4 mixing ratios x 20 penalties, on a cell subset
  (single-threaded scikit-learn, as in the book) against the batched FISTA path; time, chosen
  penalty and held-out-fold MSE.
Prints one JSON object.
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn):
    tic = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - tic, 2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--cells", type=int, default=10_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--enet-cells", type=int, default=4000)
    p.add_argument("--enet-genes", type=int, default=500)
    p.add_argument("--skip", nargs="*", default=[], choices=["nmf", "svd", "enet"])
    args = p.parse_args(argv)
    import torch
    from sklearn.decomposition import NMF
    from sklearn.linear_model import ElasticNetCV
    from threadpoolctl import threadpool_limits

    from neuroage_utils.models import device_linalg as dl
    from neuroage_utils.data.features import column_moments, log_normalize
    from neuroage_utils.models import svd
    from neuroage_utils.models.linear import column_scale, grouped_folds
    from neuroage_utils.data.simulate import simulate_cohort

    adata = simulate_cohort(cell_fraction=args.cells / 189_423 * 1.02, n_genes=args.genes, seed=0)
    keep = np.random.default_rng(0).permutation(adata.n_obs)[: args.cells]
    keep.sort()
    X = sp.csr_matrix(adata.X)[keep]
    ages = adata.obs["age"].to_numpy(float)[keep]
    donors = adata.obs["donor_id"].astype(str).to_numpy()[keep]
    out = {"shape": list(X.shape), "density": round(X.nnz / np.prod(X.shape), 3), "device": args.device,
           "torch_threads": torch.get_num_threads()}

    if "nmf" not in args.skip:
        Xd = X.toarray()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref, t_ref = timed(lambda: NMF(args.k, max_iter=200, random_state=0).fit(Xd))
        fit, t_ours = timed(lambda: dl.nmf_hals(Xd, args.k, max_iter=200, seed=0, device=args.device))
        target = ref.reconstruction_err_ * 1.005
        within = [i * 5 for i, h in enumerate(fit["history"]) if h <= target]  # history every 5 iterations
        out["nmf"] = {
            "k": args.k, "sklearn_cd": {"seconds": t_ref, "iterations": int(ref.n_iter_),
                                        "objective": float(ref.reconstruction_err_)},
            "torch_hals": {"seconds": t_ours, "iterations": fit["n_iter"], "objective": fit["reconstruction_err"],
                           "first_iteration_within_0.5pct": within[0] if within else None},
            "speedup": round(t_ref / t_ours, 2),
            "objective_ratio": round(fit["reconstruction_err"] / float(ref.reconstruction_err_), 5),
        }
        print(json.dumps(out["nmf"]), flush=True)
        del Xd

    if "svd" not in args.skip:
        L = log_normalize(X)
        ref, t_ref = timed(lambda: svd.fit_svd(L, args.k))
        ours, t_ours = timed(lambda: svd.fit_svd(L, args.k, backend="torch", device=args.device))
        rel = np.abs(ours.singular_values_ / ref.singular_values_ - 1)
        cos10 = np.linalg.svd(ours.components_[:10] @ ref.components_[:10].T, compute_uv=False)
        out["svd"] = {
            "k": args.k, "arpack_seconds": t_ref, "torch_randomised_seconds": t_ours, "speedup": round(t_ref / t_ours, 2),
            "max_rel_error_top10_singular_values": float(rel[:10].max()),
            "max_rel_error_all_singular_values": float(rel.max()),
            "variance_captured_ratio": float((ours.singular_values_**2).sum() / (ref.singular_values_**2).sum()),
            "min_cosine_top10_subspace": float(cos10.min()),
        }
        print(json.dumps(out["svd"]), flush=True)

    if "enet" not in args.skip:
        rng = np.random.default_rng(1)
        rows = np.sort(rng.permutation(X.shape[0])[: args.enet_cells])
        L = log_normalize(X[rows])
        genes = np.argsort(-np.asarray(L.mean(axis=0)).ravel())[: args.enet_genes]
        L = L[:, np.sort(genes)]
        Z = L.toarray() / column_scale(L)
        y, g = ages[rows], donors[rows]
        folds = grouped_folds(g, 5)
        l1 = [0.1, 0.5, 0.9, 1.0]

        def sk():
            with threadpool_limits(1):
                return ElasticNetCV(l1_ratio=l1, alphas=20, cv=folds, max_iter=10_000, tol=1e-4).fit(Z, y)

        ref, t_ref = timed(sk)
        ours, t_ours = timed(lambda: dl.elastic_net_cv(Z, y, folds, l1_ratios=l1, n_alphas=20, device=args.device))
        mse_ref = np.asarray(ref.mse_path_).mean(axis=-1).min()
        out["enet"] = {
            "shape": list(Z.shape), "folds": 5, "l1_ratios": l1, "n_alphas": 20,
            "sklearn_seconds_1_thread": t_ref, "torch_fista_seconds": t_ours, "speedup": round(t_ref / t_ours, 3),
            "sklearn_alpha_l1": [float(ref.alpha_), float(ref.l1_ratio_)],
            "torch_alpha_l1": [ours["alpha_"], ours["l1_ratio_"]],
            "best_cv_mse_sklearn": float(mse_ref), "best_cv_mse_torch": float(ours["mse_path_"].mean(axis=-1).min()),
            "max_abs_coef_diff": float(np.abs(ref.coef_ - ours["coef_"]).max()),
            "max_abs_coef": float(np.abs(ref.coef_).max()),
        }
        print(json.dumps(out["enet"]), flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
