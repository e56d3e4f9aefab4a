"""The annotations of a simulated cohort: ``obs`` (per cell), ``var`` (per gene, with the truth), ``uns``.

Shared by the in-memory simulator and the block writer, so both files carry the same tables.
What each field means is on the book's page *The simulated cohort* (``book/simulation.md``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuroage_utils.data.simulate_model import (
    AGE_HIGH, AGE_LOW, CALIBRATION, CELL_TYPES, DEFAULT_PARAMETERS, EXTRA_YEARS, N_GENES_FULL,
)

__all__ = ["cell_names", "obs_columns", "make_obs", "make_var", "make_uns"]


def cell_names(cohort: pd.DataFrame, cells: dict, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Cell names ``<donor>-<j>`` (``j`` counts within the donor) of cells ``start:stop``."""
    d = cells["donor_idx"][start:stop]
    donor_ids = cohort["donor_id"].to_numpy().astype(str)
    first = np.cumsum(cells["n_per_donor"]) - cells["n_per_donor"]  # each donor's first cell
    within = np.arange(start, start + len(d)) - first[d]
    return np.array([f"{donor_ids[i]}-{j}" for i, j in zip(d, within)], dtype=object)


def obs_columns(cohort: pd.DataFrame, cells: dict, n_counts: np.ndarray) -> dict:
    """The obs columns (everything but the cell names), in order."""
    d, t = cells["donor_idx"], cells["type_idx"]
    donor_ids = cohort["donor_id"].to_numpy().astype(str)
    type_names = [n for n, *_ in CELL_TYPES]
    return {
        "donor_id": pd.Categorical.from_codes(pd.factorize(donor_ids)[0][d], pd.unique(donor_ids)),
        "age": cohort["age"].to_numpy(dtype=float)[d],
        "sex": _categorical(cohort["sex"].to_numpy().astype(str), d),
        "cell_type": pd.Categorical.from_codes(t, type_names),
        "split": _categorical(cohort["split"].to_numpy().astype(str), d),
        "n_counts": n_counts,
    }


def _categorical(per_donor: np.ndarray, d: np.ndarray) -> pd.Categorical:
    """Per-cell categorical of a per-donor column (sorted categories), built from codes: no string per cell."""
    categories, codes = np.unique(per_donor, return_inverse=True)
    return pd.Categorical.from_codes(codes[d], categories)


def make_obs(cohort: pd.DataFrame, cells: dict, n_counts: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(obs_columns(cohort, cells, n_counts), index=pd.Index(cell_names(cohort, cells), name="cell"))


def make_var(genes: dict, kept: np.ndarray, mean_expression: np.ndarray) -> pd.DataFrame:
    beta = genes["age_beta"][kept]
    return pd.DataFrame(
        {
            "mean_expression": mean_expression,
            "dispersion": genes["theta"][kept],
            "age_effect": beta / ((AGE_HIGH - AGE_LOW) / 10.0),
            "age_gene": beta != 0,
            "age_pattern": genes["age_pattern"][kept].astype(str),
            "age_subtype": genes["age_subtype"][kept].astype(str),
            "sex_effect": genes["sex_lfc"][kept],
        },
        index=pd.Index([f"GENE{g + 1:05d}" for g in kept], name="gene"),
    )


def _oracle(cohort: pd.DataFrame, bio_age: np.ndarray) -> tuple[float, dict, str]:
    err = np.abs(bio_age - cohort["age"].to_numpy(dtype=float))
    split = cohort["split"].to_numpy()
    by_split = {str(s): float(err[split == s].mean()) for s in pd.unique(split)}
    scope = "test" if "test" in by_split else "all"
    value = by_split["test"] if scope == "test" else float(err.mean())
    who = "the test donors" if scope == "test" else "all donors"
    definition = (
        f"Mean over {who} of |biological age - chronological age|: the donor MAE of a model that "
        "recovers each donor's biological age (the only age the expression encodes) exactly."
    )
    by_split["all"] = float(err.mean())
    return value, by_split, definition


def make_uns(sim: dict, var: pd.DataFrame, n_counts: np.ndarray, nnz: int) -> dict:
    cohort, truth, cells = sim["cohort"], sim["truth"], sim["cells"]
    s = sim["settings"]
    p, seed, cell_fraction, n_genes = s["p"], s["seed"], s["cell_fraction"], s["n_genes"]
    min_cells_per_donor, kept_share = s["min_cells_per_donor"], s["kept_share"]
    n_cells = len(n_counts)
    value, by_split, definition = _oracle(cohort, truth["biological_age"])
    type_names = [n for n, *_ in CELL_TYPES]
    simulation = {
        "generator": "neuroage_utils.data.simulate.simulate_cohort",
        "seed": int(seed),
        "cell_fraction": float(cell_fraction),
        "n_genes": int(n_genes),
        "n_genes_full": N_GENES_FULL,
        "min_cells_per_donor": int(min_cells_per_donor),
        "parameters": p.as_dict(),
        "cell_types": {
            "name": type_names,
            "class": [c for _, c, _, _ in CELL_TYPES],
            "proportion": [float(w) for *_, w, _ in CELL_TYPES],
            "library_factor": [float(f) for *_, f in CELL_TYPES],
        },
        "kept_umi_share": kept_share,
        "donors": {
            "donor_id": cohort["donor_id"].astype(str).to_list(),
            "age": cohort["age"].astype(float).to_list(),
            "biological_age": [float(a) for a in truth["biological_age"]],
            EXTRA_YEARS: [float(a) for a in cohort.get(EXTRA_YEARS, pd.Series(0.0, index=cohort.index))],
            "sex": cohort["sex"].astype(str).to_list(),
            "split": cohort["split"].astype(str).to_list(),
            "n_cells": [int(n) for n in cells["n_per_donor"]],
            "depth_log_offset": [float(x) for x in truth["depth"]],
        },
        # donors x cell types (rows: donors order, columns: cell_types["name"]): expected shares
        "donor_composition": truth["composition"].astype(float),
        "summary": {
            "n_cells": int(n_cells),
            "n_genes": int(len(var)),
            "n_age_genes": int(var["age_gene"].sum()),
            "median_umis_per_cell": float(np.median(n_counts)),
            "fraction_zeros": float(1.0 - nnz / (n_cells * len(var))),
        },
        "calibration": {**CALIBRATION, "measured_with_these_parameters": p == DEFAULT_PARAMETERS},
    }
    return {"simulation": simulation, "oracle_donor_mae": float(value), "oracle_donor_mae_by_split": by_split,
            "oracle_definition": definition}
