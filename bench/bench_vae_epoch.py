"""Seconds per training epoch of the paper's Poisson VAE on this machine, measured and extrapolated.

The paper's final model: Poisson VAE, encoder [300, 150], latent 100, age head [20, 20], Adam,
batch 4096, 1000 epochs, on 189,423 cells x 17,658 genes. This script trains that exact
architecture (through ``VAEAgeRegressor``, i.e. the book's own code path) on synthetic sparse counts
with the full gene count and a subset of the cells, times whole epochs after a warm-up epoch, and
extrapolates linearly in cells to the paper's 189,423 (an epoch is a fixed number of identical
batches, so its cost is linear in the number of batches; the extrapolation is labelled as such).

By default the batches are densified from CSR per batch, as they must be at paper scale (the dense
float32 matrix, 13.4 GB, exceeds the 2 GiB densify-once cap); ``--dense`` times the densify-once
path instead.

    .venv/bin/python bench/bench_vae_epoch.py                      # 12,288 cells x 17,658 genes
    .venv/bin/python bench/bench_vae_epoch.py --cells 4096 --genes 2000 --likelihood nb
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAPER_CELLS, PAPER_GENES = 189_423, 17_658


def synthetic_counts(n_cells: int, n_genes: int, density: float, seed: int = 0) -> sp.csr_matrix:
    """Sparse UMI-like counts: ``density`` of the entries non-zero, geometric values >= 1 (mean 2)."""
    rng = np.random.default_rng(seed)
    nnz_per_row = rng.binomial(n_genes, density, size=n_cells).clip(1, n_genes)
    indptr = np.concatenate([[0], np.cumsum(nnz_per_row)])
    indices = np.concatenate([np.sort(rng.choice(n_genes, k, replace=False)) for k in nnz_per_row])
    data = rng.geometric(0.5, size=indptr[-1]).astype(np.float32)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n_cells, n_genes))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=3 * 4096, help="cells in the measured subset")
    parser.add_argument("--genes", type=int, default=PAPER_GENES)
    parser.add_argument("--density", type=float, default=0.1, help="fraction of non-zero counts")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--likelihood", default="poisson", choices=["poisson", "nb", "gaussian"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 150])
    parser.add_argument("--latent", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--dense", action="store_true", help="densify the matrix once (if under 2 GiB)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--omp-wait-policy", choices=["passive", "inherit"], default="passive",
                        help="passive (default): set OMP_WAIT_POLICY=PASSIVE unless already set; on a CPU shared "
                             "with other processes, spinning OpenMP threads make 2-thread torch 10x+ slower")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    if args.omp_wait_policy == "passive":
        if "torch" in sys.modules:
            print("note: torch already imported; --omp-wait-policy has no effect")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when OpenMP starts (torch import)
    import torch

    from neuroage_utils.models.vae import VAEAgeRegressor
    from neuroage_utils.train import DEFAULT_MAX_DENSE_BYTES

    tic = time.perf_counter()
    X = synthetic_counts(args.cells, args.genes, args.density)
    ages = np.random.default_rng(1).uniform(24, 94, args.cells)
    built = time.perf_counter() - tic
    model = VAEAgeRegressor(
        likelihood=args.likelihood, hidden=args.hidden, latent=args.latent, age_hidden=(20, 20),
        epochs=1 + args.epochs, batch_size=args.batch_size, device=args.device, progress=False,
        max_dense_bytes=DEFAULT_MAX_DENSE_BYTES if args.dense else 0,
    )
    tic = time.perf_counter()
    model.fit(X, ages)
    total = time.perf_counter() - tic
    epoch_seconds = model.history_["seconds"].to_numpy()
    per_epoch = float(np.mean(epoch_seconds[1:]))  # the first epoch pays one-off start-up costs
    n_batches = -(-args.cells // args.batch_size)
    paper_epoch = per_epoch * PAPER_CELLS / args.cells

    result = {
        "likelihood": args.likelihood, "hidden": args.hidden, "latent": args.latent, "batch_size": args.batch_size,
        "cells": args.cells, "genes": args.genes, "density": args.density, "nnz": int(X.nnz),
        "batches_per_epoch": n_batches, "storage": "dense once" if args.dense else "CSR, densified per batch",
        "device": args.device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "epoch_seconds": [round(float(s), 3) for s in epoch_seconds],
        "seconds_per_epoch": round(per_epoch, 3), "seconds_per_batch": round(per_epoch / n_batches, 3),
        "fit_seconds_total": round(total, 2), "synthetic_data_seconds": round(built, 2),
        "paper_cells": PAPER_CELLS, "paper_epoch_seconds_extrapolated": round(paper_epoch, 1),
        "paper_1000_epochs_hours_extrapolated": round(paper_epoch * 1000 / 3600, 1),
    }
    print(f"{args.likelihood} VAE {args.hidden} latent {args.latent}, batch {args.batch_size}, "
          f"{result['storage']}, {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={result['OMP_WAIT_POLICY']}")
    print(f"measured: {args.cells:,} cells x {args.genes:,} genes (density {args.density}): "
          f"{per_epoch:.2f} s/epoch ({per_epoch / n_batches:.2f} s per batch of {args.batch_size}), "
          f"epochs {result['epoch_seconds']} s (first = warm-up, excluded)")
    if result["load_average_1min_at_end"] is not None and result["load_average_1min_at_end"] > os.cpu_count():
        print(f"warning: load average {result['load_average_1min_at_end']} > {os.cpu_count()} CPUs: other processes "
              "shared the CPU, so these times are upper bounds")
    if args.genes == PAPER_GENES:
        print(f"extrapolated (linear in cells, NOT measured): {PAPER_CELLS:,} cells -> {paper_epoch:.0f} s/epoch, "
              f"{result['paper_1000_epochs_hours_extrapolated']} h for the paper's 1000 epochs")
    else:
        print(f"(no paper-scale extrapolation printed: the paper has {PAPER_GENES:,} genes, this run {args.genes:,})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
