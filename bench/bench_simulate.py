"""Time and peak memory of simulate_cohort (and optionally of writing the .h5ad).

    python bench/bench_simulate.py                                   # paper scale: 189,423 x 17,658
    python bench/bench_simulate.py --cell-fraction 0.05 --n-genes 2000
    python bench/bench_simulate.py --write /tmp/sim.h5ad --progress

Peak memory is the process's maximum resident set size (resource.getrusage, kilobytes on Linux),
so it includes Python, numpy and anndata themselves; run each configuration in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neuroage_utils.data.simulate import N_GENES_FULL, simulate_cohort  # noqa: E402


def peak_rss_gib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux (bytes on macOS)
    return kb / (1024**3 if sys.platform == "darwin" else 1024**2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell-fraction", type=float, default=1.0)
    parser.add_argument("--n-genes", type=int, default=N_GENES_FULL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-cells-per-donor", type=int, default=0)
    parser.add_argument("--chunk-cells", type=int, default=4096)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--write", metavar="PATH", help="also write the AnnData to this .h5ad")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    baseline = peak_rss_gib()
    wall, cpu = time.perf_counter(), time.process_time()
    adata = simulate_cohort(
        cell_fraction=args.cell_fraction,
        n_genes=args.n_genes,
        seed=args.seed,
        min_cells_per_donor=args.min_cells_per_donor,
        chunk_cells=args.chunk_cells,
        progress=args.progress,
        n_threads=args.n_threads,
    )
    report = {
        "cell_fraction": args.cell_fraction,
        "n_genes": args.n_genes,
        "n_threads": args.n_threads or len(os.sched_getaffinity(0)),
        "n_cells": adata.n_obs,
        "nnz": int(adata.X.nnz),
        "matrix_gib": round((adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes) / 1024**3, 3),
        "fraction_zeros": round(adata.uns["simulation"]["summary"]["fraction_zeros"], 4),
        "median_umis_per_cell": adata.uns["simulation"]["summary"]["median_umis_per_cell"],
        "simulate_wall_s": round(time.perf_counter() - wall, 1),
        "simulate_cpu_s": round(time.process_time() - cpu, 1),
        "rss_before_gib": round(baseline, 3),
        "peak_rss_after_simulate_gib": round(peak_rss_gib(), 3),
    }
    if args.write:
        wall = time.perf_counter()
        adata.write_h5ad(args.write)
        report["write_wall_s"] = round(time.perf_counter() - wall, 1)
        report["file_gib"] = round(Path(args.write).stat().st_size / 1024**3, 3)
        report["peak_rss_after_write_gib"] = round(peak_rss_gib(), 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
