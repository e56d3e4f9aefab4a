"""Ground truth on simulated data: do a model's age genes match the genes the simulator made age?

The simulated cohort records its planted age genes (``adata.var['age_gene']``). A model that ranks
genes (elastic-net |coefficient|, loading on the NMF programmes that track age, decoder response along
a VAE's latent age direction) is scored by precision and recall at k of that ranking, against the
chance values of a random ranking (precision = share of age genes among all genes, recall = k / genes)
and a one-sided hypergeometric p-value of the hits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from neuroage_utils.errors import DataValidationError

__all__ = ["truth_mask", "rank_genes", "recovery_at_k", "nmf_gene_scores", "NO_GROUND_TRUTH"]

NO_GROUND_TRUTH = "No ground truth on these data: they are not simulated, so no gene is known to change with age."


def truth_mask(adata) -> np.ndarray | None:
    """Boolean planted-age-gene mask of a simulated cohort, or None when the data carry no truth."""
    if "simulation" not in getattr(adata, "uns", {}) or "age_gene" not in adata.var:
        return None
    return adata.var["age_gene"].to_numpy(dtype=bool)


def rank_genes(scores, seed: int = 0) -> np.ndarray:
    """Gene indices by decreasing score; ties (e.g. the zeros of a sparse model) in random order,
    so that genes a model did not choose count as a random choice."""
    scores = np.asarray(scores, dtype=float)
    perm = np.random.default_rng(seed).permutation(len(scores))
    return perm[np.argsort(-scores[perm], kind="stable")]


def recovery_at_k(ranking, truth, ks) -> pd.DataFrame:
    """Precision and recall at each k of a gene ranking, beside their chance values.

    ``ranking``: gene indices, best first (at least max(ks) long); ``truth``: boolean mask over genes.
    Columns: ``k, hits, precision, chance_precision, recall, chance_recall, enrichment, p_value``.
    """
    truth = np.asarray(truth, dtype=bool)
    ranking = np.asarray(ranking, dtype=int)
    n_genes, n_true = len(truth), int(truth.sum())
    if n_true == 0:
        raise DataValidationError("recovery_at_k: no planted age gene in the truth mask")
    rows = []
    for k in ks:
        k = int(min(k, len(ranking)))
        hits = int(truth[ranking[:k]].sum())
        chance = n_true / n_genes
        rows.append({"k": k, "hits": hits, "precision": hits / k, "chance_precision": chance,
                     "recall": hits / n_true, "chance_recall": k / n_genes,
                     "enrichment": (hits / k) / chance, "p_value": float(hypergeom.sf(hits - 1, n_genes, n_true, k))})
    return pd.DataFrame(rows)


def nmf_gene_scores(components, usages, ages, donors, n_programmes: int = 3):
    """Gene scores from the NMF programmes whose donor-mean usage correlates most with age.

    Each programme's loadings are divided by its largest loading; a gene's score is its largest
    scaled loading over the ``n_programmes`` programmes with the highest |r| with age over donors.
    Returns ``(scores, programme table)``.
    """
    from neuroage_utils.models.svd import component_age_correlations

    corr = component_age_correlations(usages, ages, donors)
    corr = corr.assign(abs_r=corr["r_donor"].abs()).sort_values("abs_r", ascending=False, na_position="last")
    chosen = corr["component"].to_numpy()[:n_programmes]
    H = np.asarray(components, dtype=float)[chosen]
    peak = H.max(axis=1, keepdims=True)
    scaled = np.divide(H, peak, out=np.zeros_like(H), where=peak > 0)
    return scaled.max(axis=0), corr.head(n_programmes).reset_index(drop=True)


def gene_rankings(data, train_donors, params: dict, seed: int = 0, vae_clock=None) -> tuple[dict, dict]:
    """Gene rankings of three models fitted on ``train_donors`` only (a :class:`~neuroage_utils.evaluation.crossval.CVData`):
    the cell elastic net's |coefficient|, the NMF programmes most correlated with age over donors
    (:func:`nmf_gene_scores`) and, when given, a fitted VAE clock's decoder response along its latent
    age direction. Returns ``(rankings, notes)``; a model that cannot run on the data is left out,
    with its reason in ``notes``."""
    from neuroage_utils.data.cohort import subsample_cells
    from neuroage_utils.evaluation.crossval import build_model
    from neuroage_utils.models.nmf import fit_nmf

    P = params
    rankings, notes = {}, {}
    train = data.cells(train_donors)  # the cross-validation's elastic net (the registry's), on these donors
    enet = build_model("elastic_net", P, seed, "cpu").fit(data.X_norm[train], data.ages[train], data.donors[train]).clock_
    rankings["elastic net |coefficient|"] = rank_genes(np.abs(enet.coef_), seed=seed)
    notes["elastic net |coefficient|"] = f"{enet.n_nonzero_} non-zero genes; genes beyond them in random order"
    cells = subsample_cells(data.cells(train_donors), P.get("max_cells"), seed=seed)
    try:
        k = int(min(P["nmf_k"], data.X.shape[1] - 1, int(cells.sum()) - 1))
        nmf = fit_nmf(data.X[cells], n_components=k, seed=seed, max_iter=P["nmf_iter"])
        scores, programmes = nmf_gene_scores(nmf.components_, nmf.transform(data.X[cells]), data.ages[cells],
                                             data.donors[cells])
        rankings["NMF programmes most correlated with age"] = rank_genes(scores, seed=seed)
        notes["NMF programmes most correlated with age"] = (
            f"{k} programmes; top {len(programmes)} by |r| over donors: "
            + ", ".join(f"#{int(c)} (r {r:+.2f})" for c, r in zip(programmes['component'], programmes['r_donor'])))
    except DataValidationError as err:
        notes["NMF programmes most correlated with age"] = f"skipped: {err}"
    if vae_clock is not None:
        scores = vae_clock.gene_age_scores()
        label = "VAE decoder along the latent age direction"
        rankings[label] = rank_genes(scores, seed=seed)
        notes[label] = ("the elastic net kept no latent dimension: the ranking is random" if not scores.any()
                        else f"{int(np.count_nonzero(vae_clock.probe_.direction_))} latent dimensions in the age direction")
    return rankings, notes
