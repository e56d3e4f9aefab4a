"""The simulated cohort: the study's 69 real donors with simulated neuron transcriptomes.

The study's expression data are access-controlled, so the book's default data set is simulated on
the study's real donors (age, sex, split, cells). The generative model, its equations, ground truth,
oracle and calibration are on the book's page *The simulated cohort* (``book/simulation.md``).

- :func:`simulate_cohort`: the cohort in memory (an AnnData);
- :func:`write_simulated_h5ad` (``simulate_write``): the same cells written to an .h5ad block by
  block, memory flat in the number of cells (millions of cells on a laptop);
- :func:`ensure_simulated`: a profile's cohort, cached; :func:`ground_truth`: what it knows.

Modules: ``simulate_model`` (parameters, genes, donors, the cells' design), ``simulate_counts``
(negative-binomial draws per 128-cell block), ``simulate_write`` (the block writer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils import profiles
from neuroage_utils.data.simulate_tables import make_obs, make_uns, make_var
from neuroage_utils.data.simulate_counts import assemble_csr, make_design, sample_blocks
from neuroage_utils.data.simulate_model import (
    AGE_PATTERNS,
    CELL_TYPES,
    DEFAULT_PARAMETERS,
    EXTRA_YEARS,
    N_GENES_FULL,
    SimulationParameters,
    _cells,
    _donor_log_profiles,
    _donor_truth,
    _gene_universe,
    _kept_genes,
    _rng,
    _validate_donors,
    age_shape,
)
from neuroage_utils.errors import DataValidationError
from neuroage_utils.paper import load_paper_cohort
from neuroage_utils.results import atomic_path

__all__ = [
    "N_GENES_FULL",
    "EXTRA_YEARS",
    "CELL_TYPES",
    "AGE_PATTERNS",
    "SimulationParameters",
    "DEFAULT_PARAMETERS",
    "load_paper_cohort",
    "simulated_path",
    "ensure_simulated",
    "ground_truth",
    "age_shape",
    "simulate_cohort",
    "write_simulated_h5ad",
]


# --------------------------------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------------------------------


def _prepare(cell_fraction, n_genes, seed, min_cells_per_donor, donors, chunk_cells, params) -> dict:
    """Everything but the counts: donors, genes, donor truth, the cells' design (shared by both writers)."""
    p = DEFAULT_PARAMETERS if params is None else params
    if not isinstance(p, SimulationParameters):
        raise TypeError("params must be a SimulationParameters")
    _check_arguments(cell_fraction, n_genes, seed, min_cells_per_donor, chunk_cells)
    seed, n_genes = int(seed), int(n_genes)
    cohort = load_paper_cohort() if donors is None else _validate_donors(donors, _rng(seed, "donor_sex"))
    cohort = cohort.reset_index(drop=True)

    genes = _gene_universe(seed, p)
    kept, kept_share = _kept_genes(genes, n_genes)
    truth = _donor_truth(cohort, seed, p)
    log_profiles = _donor_log_profiles(cohort, truth, genes, kept, seed, p)
    cells = _cells(cohort, truth, float(cell_fraction), min_cells_per_donor, seed, p)
    design = make_design(cells, log_profiles, genes["programs"][:, kept], genes["theta"][kept], seed)
    settings = {"p": p, "seed": seed, "cell_fraction": cell_fraction, "n_genes": n_genes,
                "min_cells_per_donor": min_cells_per_donor, "kept_share": kept_share}
    return {"cohort": cohort, "genes": genes, "kept": kept, "truth": truth, "cells": cells, "design": design,
            "settings": settings}


def simulate_cohort(
    cell_fraction: float = 1.0,
    n_genes: int = N_GENES_FULL,
    seed: int = 0,
    min_cells_per_donor: int = 20,
    donors: pd.DataFrame | None = None,
    chunk_cells: int = 4096,
    progress: bool = False,
    *,
    params: SimulationParameters | None = None,
    n_threads: int | None = None,
):
    """Simulate raw UMI counts of neurons for a cohort of donors (default: the study's 69).

    Parameters
    ----------
    cell_fraction
        Cells per donor = max(min_cells_per_donor, round(n_cells * cell_fraction)) (half rounds
        up), ``n_cells`` being the donor's neuron count in the study (or in ``donors``). Above 1 the
        cohort is larger than the study's (10: about 1.9 million cells).
    n_genes
        Genes kept: the ``n_genes`` most expressed of the 17,658-gene universe (in universe order).
        UMIs per cell shrink accordingly (the dropped genes' UMIs are not redistributed).
    seed
        Everything is a function of the seed. The donor- and gene-level truth does not depend on
        ``cell_fraction``, ``n_genes`` or ``chunk_cells``; the matrix does not depend on
        ``chunk_cells``.
    min_cells_per_donor
        Floor on the cells of every donor (small fractions would leave some donors nearly empty).
    donors
        Optional cohort: columns ``donor_id``, ``age`` (years), ``n_cells``; optional ``sex``
        (female/male; drawn at random if absent) and ``split`` ('unassigned' if absent).
    chunk_cells
        Cells per work unit (rounded up to whole blocks of 128 cells, each with its own random
        stream) and progress step. Work arrays are per 128-cell block, so memory hardly depends
        on it; the matrix never does.
    progress
        Show a tqdm bar over chunks.
    params
        The generative model's numbers (default :data:`DEFAULT_PARAMETERS`).
    n_threads
        Worker threads (default: the CPU cores available to this process). The output does not
        depend on it.

    Returns
    -------
    AnnData with ``X`` raw counts (CSR float32), ``obs`` (donor_id, age, sex, cell_type, split,
    n_counts), ``var`` (mean_expression, dispersion, age_effect, age_gene, age_pattern, age_subtype,
    sex_effect), ``uns['simulation']`` (all parameters, per-donor truth, summary, calibration) and
    ``uns['oracle_donor_mae']`` / ``uns['oracle_definition']``.
    """
    import anndata as ad
    from tqdm import tqdm  # plain text bar: tqdm.auto warns in a kernel without ipywidgets

    sim = _prepare(cell_fraction, n_genes, seed, min_cells_per_donor, donors, chunk_cells, params)
    n_cells, kept = len(sim["cells"]["donor_idx"]), sim["kept"]
    pieces, mu_sum = [], np.zeros(len(kept))
    with tqdm(total=n_cells, disable=not progress, desc="simulating cells", unit="cell") as bar:
        for row_nnz, cols, counts, unit_mu in sample_blocks(sim["design"], chunk_cells, n_threads):
            pieces.append((row_nnz, cols, counts))
            mu_sum += unit_mu
            bar.update(int(row_nnz.size))
    X = assemble_csr(pieces, n_cells, len(kept))
    n_counts = np.asarray(X.sum(axis=1)).ravel().astype(np.int64)
    var = make_var(sim["genes"], kept, mu_sum / n_cells)
    adata = ad.AnnData(X=X, obs=make_obs(sim["cohort"], sim["cells"], n_counts), var=var)
    adata.uns.update(make_uns(sim, var, n_counts, X.nnz))
    return adata


def write_simulated_h5ad(path, cell_fraction: float = 1.0, n_genes: int = N_GENES_FULL, seed: int = 0,
                         min_cells_per_donor: int = 20, donors: pd.DataFrame | None = None,
                         chunk_cells: int = 4096, progress: bool = False, *,
                         params: SimulationParameters | None = None, n_threads: int | None = None) -> Path:
    """:func:`simulate_cohort` written straight to ``path`` (.h5ad) block by block: the same cells.

    The matrix never sits in memory: its CSR is appended to the file block by block (int64
    ``indptr`` once the non-zeros pass 2^31 - 1), so memory stays at the per-cell design (about 80
    bytes a cell) plus a few blocks, whatever the size. Written atomically.
    """
    from neuroage_utils.data.simulate_write import write_blocks

    sim = _prepare(cell_fraction, n_genes, seed, min_cells_per_donor, donors, chunk_cells, params)
    path = Path(path)
    with atomic_path(path) as tmp:
        write_blocks(tmp, sim, chunk_cells, n_threads, progress)
    return path


def _check_arguments(cell_fraction, n_genes, seed, min_cells_per_donor, chunk_cells) -> None:
    if not (np.isfinite(cell_fraction) and cell_fraction > 0):
        raise DataValidationError(f"cell_fraction must be a positive number, got {cell_fraction!r}")
    if int(n_genes) != n_genes or not 1 <= n_genes <= N_GENES_FULL:
        raise DataValidationError(f"n_genes must be a whole number in [1, {N_GENES_FULL}], got {n_genes!r}")
    if int(seed) != seed or seed < 0:
        raise DataValidationError(f"seed must be a whole number >= 0, got {seed!r}")
    if int(min_cells_per_donor) != min_cells_per_donor or min_cells_per_donor < 0:
        raise DataValidationError(f"min_cells_per_donor must be a whole number >= 0, got {min_cells_per_donor!r}")
    if int(chunk_cells) != chunk_cells or chunk_cells < 1:
        raise DataValidationError(f"chunk_cells must be a whole number >= 1, got {chunk_cells!r}")


# --------------------------------------------------------------------------------------------------
# The cached simulated cohort of a profile
# --------------------------------------------------------------------------------------------------


def simulated_path(profile: str, seed: int, out_dir) -> Path:
    """Where the simulated cohort of ``profile`` and ``seed`` is cached."""
    return Path(out_dir) / "data" / f"simulated-{profile}-seed{seed}.h5ad"


def ensure_simulated(profile: str, seed: int, out_dir, progress: bool = False) -> Path:
    """Simulate the profile's cohort once and cache it as .h5ad (written atomically)."""
    path = simulated_path(profile, seed, out_dir)
    if path.exists():
        return path
    params = profiles.section_params(profile, "simulate")
    adata = simulate_cohort(seed=seed, progress=progress, **params)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression=None)
    return path


def ground_truth(adata) -> dict:
    """What a simulated cohort knows about itself: age genes per pattern, the oracle's donor MAE."""
    var = adata.var
    table = (var[var["age_gene"]].groupby(["age_pattern", "age_subtype"], observed=False).size().rename("genes").reset_index())
    return {"n_age_genes": int(var["age_gene"].sum()), "n_genes": len(var),
            "oracle_mae": float(adata.uns["oracle_donor_mae"]),
            "oracle_definition": adata.uns.get("oracle_definition", ""), "table": table}


def main(argv=None) -> int:
    """``python -m neuroage_utils.data.simulate OUT.h5ad [--cell-fraction F] [--n-genes G]``: block-written."""
    p = argparse.ArgumentParser(prog="python -m neuroage_utils.data.simulate",
                                description="Write the simulated cohort to an .h5ad block by block (flat memory).")
    p.add_argument("out", help="the .h5ad to write")
    p.add_argument("--cell-fraction", type=float, default=1.0, help="cells per donor relative to the study (10: ~1.9M cells)")
    p.add_argument("--n-genes", type=int, default=N_GENES_FULL)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-cells-per-donor", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    try:
        write_simulated_h5ad(args.out, cell_fraction=args.cell_fraction, n_genes=args.n_genes, seed=args.seed,
                             min_cells_per_donor=args.min_cells_per_donor, n_threads=args.threads, progress=args.progress)
    except DataValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
