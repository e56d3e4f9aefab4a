"""New data in the clock's genes: matched by name, missing genes at their training mean, never zero.

A clock multiplies each of its genes by a coefficient. A gene absent from the new data cannot be set
to zero (zero expression is a strong statement: the gene is off, which moves the prediction by
``-coef x mean / sd``); it is set to its **training mean** in feature space, so it adds what an
average training row adds and the prediction rests on the genes that are there.

Missing genes also shrink the library size that normalisation divides by. So the counts of the
missing genes are estimated per row from the present genes, using the share of training UMIs the
missing genes held, and put in one extra "rest" column that counts towards each cell's total but
is not a feature. With every gene present the rest column is zero and the features are exactly
those of training.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.data.features import log_normalize, pseudobulk, pseudocells
from neuroage_utils.errors import DataValidationError

__all__ = ["MISSING_WARN", "GeneOverlapWarning", "align_genes", "feature_rows"]

#: Share of a clock's genes missing from new data above which a warning is raised.
MISSING_WARN = 0.20


class GeneOverlapWarning(UserWarning):
    """Many of the clock's genes are absent from the data: predictions lean on training means."""


def align_genes(X, gene_names, clock_genes, count_share: np.ndarray | None, what: str = "the data"):
    """``(aligned, missing)``: ``X`` with the clock's genes as columns, in the clock's order (zeros
    where absent), plus one last "rest" column holding the estimated counts of the missing genes
    when ``count_share`` (each clock gene's share of the training UMIs) is given; ``missing`` is a
    boolean mask over the clock's genes.

    No shared gene at all is a :class:`DataValidationError`; more than :data:`MISSING_WARN` missing
    a :class:`GeneOverlapWarning`.
    """
    names = pd.Index(np.asarray(gene_names).astype(str))
    clock_genes = pd.Index(np.asarray(clock_genes).astype(str))
    first = ~names.duplicated()  # a duplicated name: its first column counts
    position = pd.Series(np.flatnonzero(first), index=names[first])
    found = clock_genes.isin(position.index)
    if not found.any():
        example = ", ".join(map(str, names[:3]))
        raise DataValidationError(
            f"{what} share no gene with the clock ({len(clock_genes)} genes, e.g. {clock_genes[0]}; the data have "
            f"e.g. {example}): pass data with the clock's gene names in var_names")
    missing = ~found
    share = float(missing.mean())
    if share > MISSING_WARN:
        warnings.warn(f"{share:.0%} of the clock's {len(clock_genes)} genes are missing from {what}: they are set "
                      "to their training mean, and predictions rest on the remaining genes", GeneOverlapWarning,
                      stacklevel=3)
    X = sp.csr_matrix(X)
    columns = np.full(len(clock_genes), -1)
    columns[found] = position.loc[clock_genes[found]].to_numpy()
    # select present columns, then scatter them to the clock's order with a sparse selection matrix
    pick = sp.csr_matrix((np.ones(int(found.sum())), (columns[found], np.flatnonzero(found))),
                         shape=(X.shape[1], len(clock_genes)))
    aligned = (X @ pick).astype(X.dtype)
    if count_share is not None:
        missing_share = float(np.asarray(count_share)[missing].sum())
        present = np.asarray(aligned.sum(axis=1), dtype=float).ravel()
        # the missing genes' expected counts, rounded: summed-count features check for whole counts
        rest = np.round(present * missing_share / max(1.0 - missing_share, 1e-12))
        aligned = sp.hstack([aligned, sp.csr_matrix(rest[:, None].astype(X.dtype))], format="csr")
    return sp.csr_matrix(aligned), missing


def feature_rows(aligned, donors, normalisation: str, model: str, extra: dict, has_rest: bool):
    """``(rows, owners)``: the clock's features from aligned data (the rest column dropped after
    normalisation), computed by the same functions as in training."""
    donors = np.asarray(donors).astype(str)
    if model == "pseudobulk_elastic_net":
        rows, owners = pseudobulk(aligned, donors, "log_cpm")
    elif model == "pseudocell_elastic_net":
        rows, owners = pseudocells(aligned, donors, extra["cells_per_pseudocell"], extra["n_per_donor"],
                                   seed=extra["seed"], normalise="log_cpm", replace=extra["replace"])
    elif normalisation == "log1p_cp10k":
        rows, owners = log_normalize(aligned), donors
    else:
        rows, owners = aligned, donors
    rows = sp.csr_matrix(rows) if sp.issparse(rows) else np.asarray(rows)
    if has_rest:
        rows = rows[:, :-1]
    return rows, np.asarray(owners).astype(str)
