"""Benchmark: the paper-scale data path (simulate or read, validate, split, normalise, scale).

    python bench/bench_data_path.py [--cell-fraction 1.0] [--n-genes 17658] [--h5ad PATH]

Measures wall time per step and the peak resident memory of the process (budget: 8 GB at paper
scale, 189,423 cells x 17,658 genes). With ``--h5ad`` the cohort is written there first and read
back, as a chapter would.
"""

import argparse
import json
import resource
import time

import numpy as np


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cell-fraction", type=float, default=1.0)
    p.add_argument("--n-genes", type=int, default=17658)
    p.add_argument("--h5ad", default=None)
    args = p.parse_args()
    from neuroage_utils.data.cohort import load_cohort
    from neuroage_utils.data.features import SparseStandardScaler, log_normalize
    from neuroage_utils.data.simulate import simulate_cohort

    steps = {}
    t = time.perf_counter()
    adata = simulate_cohort(cell_fraction=args.cell_fraction, n_genes=args.n_genes, seed=0, progress=True)
    steps["simulate_s"] = time.perf_counter() - t
    steps["peak_after_simulate_gb"] = peak_gb()
    if args.h5ad:
        t = time.perf_counter()
        adata.write_h5ad(args.h5ad)
        del adata
        steps["write_s"] = time.perf_counter() - t
        source = args.h5ad
    else:
        source = adata
    t = time.perf_counter()
    cohort = load_cohort(source)
    steps["load_validate_split_s"] = time.perf_counter() - t
    t = time.perf_counter()
    normed = log_normalize(cohort.X)
    scaler = SparseStandardScaler().fit(normed, rows=cohort.mask("train"))
    batch = scaler.transform(normed[:4096])
    steps["normalise_scale_s"] = time.perf_counter() - t
    report = {
        "cells": cohort.n_cells, "genes": cohort.n_genes, "nnz": int(cohort.X.nnz),
        "fraction_zero": round(1 - cohort.X.nnz / np.prod(cohort.X.shape), 4),
        "median_umis": float(np.median(np.asarray(cohort.X.sum(axis=1)).ravel())),
        "batch_shape": list(batch.shape),
        **{k: round(v, 2) for k, v in steps.items()},
        "peak_rss_gb": round(peak_gb(), 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
