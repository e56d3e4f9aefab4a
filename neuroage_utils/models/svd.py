r"""Truncated SVD of z-scored expression, and how strongly each component tracks age.

With every gene z-scored on the training cells,

.. math::

    Z = (X - \mathbf{1}\mu^\top)\,D^{-1}, \qquad D = \mathrm{diag}(\sigma),

the truncated SVD :math:`Z \approx U_k S_k V_k^\top` is PCA of the z-scores: the scores of a cell
are :math:`z V_k` and the rows of :math:`V_k^\top` are gene loadings. The paper ran scikit-learn's
``TruncatedSVD`` (100 components) on the z-scored data of all donors and reported a top
component-age Pearson r of 0.43; here the factorisation is fitted on training donors only and
applied to the others.

:math:`Z` is never formed. ARPACK (``scipy.sparse.linalg.svds``) only needs products with it, and

.. math::

    Z v = X (D^{-1} v) - \mathbf{1}\,(\mu^\top D^{-1} v), \qquad
    Z^\top u = D^{-1} (X^\top u) - D^{-1}\mu\,(\mathbf{1}^\top u),

so a sparse ``X`` stays sparse and is not even copied: the result is the exact truncated SVD of
:math:`Z`, not an approximation. Products run in ``X``'s dtype (float32 for counts), since mixing
in float64 would make scipy copy the whole matrix at every product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse.linalg import LinearOperator, svds

from neuroage_utils.data.checks import as_matrix, donor_ages
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import column_moments

__all__ = ["SVDModel", "fit_svd", "component_age_correlations", "top_loadings", "chance_best_abs_r", "chance_note",
           "DonorScores", "donor_score_correlations", "donor_score_chance"]


def _zscore_operator(X, mean: np.ndarray, scale: np.ndarray) -> LinearOperator:
    """``Z = (X - 1 mean^T) / scale`` as a linear operator (products only, nothing densified)."""
    dtype = X.dtype
    inv = (1.0 / scale).astype(dtype)
    shift = (mean / scale).astype(dtype)

    def matmat(V):
        V = np.asarray(V, dtype=dtype).reshape(X.shape[1], -1)
        return np.asarray(X @ (inv[:, None] * V)) - shift @ V

    def rmatmat(U):
        U = np.asarray(U, dtype=dtype).reshape(X.shape[0], -1)
        return inv[:, None] * np.asarray(X.T @ U) - shift[:, None] * U.sum(axis=0)

    return LinearOperator(
        X.shape, dtype=dtype,
        matvec=lambda v: matmat(v).ravel(), rmatvec=lambda u: rmatmat(u).ravel(),
        matmat=matmat, rmatmat=rmatmat,
    )


@dataclass
class SVDModel:
    """A truncated SVD (PCA) of z-scored expression fitted on training cells.

    Attributes
    ----------
    components_
        Gene loadings, components x genes (orthonormal rows, z-score units), strongest first.
        Signs are fixed so that each row's largest-magnitude loading is positive.
    singular_values_
        :math:`S_k`, decreasing.
    explained_variance_ratio_
        Share of the total variance of the z-scores carried by each component.
    mean_, scale_
        Training per-gene mean and standard deviation (1 for constant genes; the z-scoring).
    backend
        The solver that fitted it: ``"arpack"`` (exact) or ``"torch"`` (randomised).
    """

    components_: np.ndarray
    singular_values_: np.ndarray
    explained_variance_ratio_: np.ndarray
    mean_: np.ndarray
    scale_: np.ndarray
    backend: str = "arpack"

    @property
    def n_components(self) -> int:
        return int(self.components_.shape[0])

    def transform(self, X) -> np.ndarray:
        r"""Component scores (cells x components) of new cells, z-scored with the training statistics.

        :math:`(x - \mu) D^{-1} V_k = x\,(D^{-1} V_k) - \mu^\top D^{-1} V_k`: one product with ``X``.
        """
        X = as_matrix(X, "SVDModel.transform")
        if X.shape[1] != len(self.scale_):
            raise DataValidationError(
                f"the SVD was fitted on {len(self.scale_)} genes but X has {X.shape[1]}: "
                "pass the same genes, in the same order"
            )
        weights = (self.components_ / self.scale_).T  # genes x components
        offset = self.mean_ @ weights
        return np.asarray(X @ weights.astype(X.dtype)) - offset.astype(X.dtype)


def fit_svd(X_train, n_components: int = 100, seed: int = 0, scale: bool = True, backend: str = "arpack",
            device: str | None = None) -> SVDModel:
    """Truncated SVD of the z-scored training cells (exact, via ARPACK; see the module notes).

    Parameters
    ----------
    X_train
        Training cells x genes, CSR or dense: log-normalised counts in the book
        (:func:`neuroage_utils.data.features.log_normalize`), or any continuous expression values.
    n_components
        Number of components; ARPACK needs it below ``min(cells, genes)``.
    seed
        Seeds ARPACK's starting vector (the result is deterministic given the seed).
    scale
        Divide genes by their standard deviation (z-scoring, as in the paper); False gives plain
        PCA of the centred values, dominated by the most variable genes.
    backend, device
        ``"arpack"`` (default, exact) or ``"torch"``: randomised SVD with power iterations on
        ``device`` (:func:`neuroage_utils.models.device_linalg.zscore_svd`; the leading components agree
        with ARPACK, trailing ones of a flat spectrum less so); ``"sklearn"`` is ARPACK (the reference
        a profile's ``linalg_backend`` names), ``"auto"`` is torch when ``device`` is CUDA, else ARPACK
        (:func:`~neuroage_utils.models.device_linalg.choose_backend`).
    """
    X = as_matrix(X_train, "fit_svd")
    limit = min(X.shape) - 1
    if not 1 <= n_components <= limit:
        raise DataValidationError(
            f"fit_svd: n_components={n_components} must be between 1 and min(cells, genes) - 1 = "
            f"{limit}: lower n_components"
        )
    mean, var = column_moments(X)
    scale_ = np.sqrt(var)
    scale_[scale_ == 0] = 1.0  # constant genes: all-zero z-scores rather than NaN
    if not scale:
        scale_ = np.ones_like(scale_)
    total_variance = float((var / scale_**2).sum()) * X.shape[0]  # squared Frobenius norm of Z
    if backend not in ("auto", "arpack", "sklearn", "torch"):
        raise DataValidationError(f"fit_svd: unknown backend={backend!r}: use 'auto', 'arpack' or 'torch'")
    if backend == "auto":
        from neuroage_utils.models.device_linalg import choose_backend

        backend = choose_backend(backend, device, step="svd")
    backend = "arpack" if backend == "sklearn" else backend
    if backend == "torch":
        from neuroage_utils.models.device_linalg import zscore_svd

        s, vt = zscore_svd(X, mean, scale_, n_components, seed=seed, device=device)
    else:
        v0 = np.random.default_rng(seed).uniform(-1, 1, min(X.shape)).astype(X.dtype)
        _, s, vt = svds(_zscore_operator(X, mean, scale_), k=n_components, v0=v0)
    order = np.argsort(s)[::-1]  # svds returns ascending singular values
    s, vt = s[order].astype(float), vt[order].astype(float)
    # deterministic signs: the largest-|loading| gene of each component is positive
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    ratio = s**2 / total_variance if total_variance > 0 else np.zeros_like(s)
    return SVDModel(
        components_=vt, singular_values_=s, explained_variance_ratio_=ratio, mean_=mean, scale_=scale_,
        backend=backend,
    )


def _pearson_columns(M: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``M`` with ``y``; NaN where a column (or ``y``) is constant."""
    M = np.asarray(M, dtype=float)
    y = np.asarray(y, dtype=float)
    Mc = M - M.mean(axis=0)
    yc = y - y.mean()
    denom = np.sqrt((Mc**2).sum(axis=0) * (yc**2).sum())
    num = Mc.T @ yc
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def component_age_correlations(scores, ages, donors) -> pd.DataFrame:
    """How each component (or factor) tracks age, at the cell and at the donor level.

    Parameters
    ----------
    scores
        Cells x components (from :meth:`SVDModel.transform` or an NMF ``transform``).
    ages, donors
        One age (years) and donor id per cell.

    Returns
    -------
    DataFrame with one row per component: ``component`` (0-based column of ``scores``), ``r_cell``
    (Pearson r of the cell scores with the cells' ages) and ``r_donor`` (Pearson r of each donor's
    mean score with the donor's age). ``r_cell`` counts a donor with many cells many times; ``r_donor``
    weighs donors equally and is the one that matters for a donor-level clock. NaN where a
    component is constant.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2:
        raise DataValidationError(f"scores must be cells x components, got {scores.ndim} dimension(s)")
    n = scores.shape[0]
    ages = np.asarray(ages, dtype=float).ravel()
    donors = np.asarray(donors).astype(str).ravel()
    if len(ages) != n or len(donors) != n:
        raise DataValidationError(
            f"component_age_correlations needs one age and donor per cell: got {len(ages)} ages and "
            f"{len(donors)} donors for {n} cells"
        )
    if not np.isfinite(ages).all() or not np.isfinite(scores).all():
        raise DataValidationError("component_age_correlations: NaN or infinite ages or scores: remove them")
    ids, inverse = np.unique(donors, return_inverse=True)
    counts = np.bincount(inverse)
    donor_scores = np.zeros((len(ids), scores.shape[1]))
    np.add.at(donor_scores, inverse, scores)
    donor_scores /= counts[:, None]
    donor_age = donor_ages(ages, donors, "component_age_correlations").to_numpy()  # sorted like ids
    return pd.DataFrame(
        {
            "component": np.arange(scores.shape[1]),
            "r_cell": _pearson_columns(scores, ages),
            "r_donor": _pearson_columns(donor_scores, donor_age),
        }
    )


@dataclass
class DonorScores:
    """What the correlations of components with age read, without a cells x components array.

    Ages are constant within a donor, so the cell-level Pearson r of a component with age needs only
    each donor's cell count and mean score and, over all cells, each component's sum of squares about
    its mean; the donor-level r needs the donor means. A streamed pass accumulates these block by block
    (``models.streamed.streamed_donor_summary``); :meth:`from_cells` computes them from cell scores.
    """

    ids: np.ndarray  # donor ids (str), sorted
    ages: np.ndarray  # one age per donor (years)
    counts: np.ndarray  # cells per donor
    means: np.ndarray  # donors x components: mean score of each donor's cells
    ss_cells: np.ndarray  # per component: sum over cells of (score - mean over cells)^2

    @property
    def n_components(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def from_cells(cls, scores, ages, donors, what: str = "DonorScores") -> "DonorScores":
        """The summary of cell ``scores`` (cells x components) with one age and donor id per cell
        (``what`` names the caller in the error about a donor with two ages)."""
        scores = np.asarray(scores, dtype=float)
        ids, inverse = np.unique(np.asarray(donors).astype(str).ravel(), return_inverse=True)
        counts = np.bincount(inverse)
        means = np.zeros((len(ids), scores.shape[1]))
        np.add.at(means, inverse, scores)
        means /= counts[:, None]
        donor_age = donor_ages(ages, donors, what).to_numpy()  # sorted like ids
        return cls(ids=ids, ages=donor_age, counts=counts, means=means,
                   ss_cells=((scores - scores.mean(0)) ** 2).sum(0))


def donor_score_correlations(summary: DonorScores) -> pd.DataFrame:
    """:func:`component_age_correlations` from a :class:`DonorScores` (the same table, the same r over
    cells and over donors, up to rounding): the correlations of a streamed pass over every cell."""
    counts = summary.counts.astype(float)
    n = counts.sum()
    grand = (counts @ summary.means) / n
    age_c = summary.ages - (counts @ summary.ages) / n  # each cell's age about the cells' mean age
    cov = (age_c * counts) @ (summary.means - grand)
    denom = np.sqrt(float(counts @ age_c**2) * summary.ss_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_cell = np.clip(np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), np.nan), -1.0, 1.0)
    return pd.DataFrame({"component": np.arange(summary.n_components), "r_cell": r_cell,
                         "r_donor": _pearson_columns(summary.means, summary.ages)})


def top_loadings(components, gene_names, n_top: int = 10) -> pd.DataFrame:
    """The ``n_top`` genes with the largest ``|loading|`` of every component (long format).

    Columns: ``component``, ``rank`` (1 = largest), ``gene``, ``loading``.
    """
    components = np.asarray(components)
    names = np.asarray(gene_names).astype(str)
    if len(names) != components.shape[1]:
        raise DataValidationError(
            f"top_loadings got {len(names)} gene names for {components.shape[1]} genes: "
            "pass the names of the genes the factorisation was fitted on"
        )
    n_top = min(n_top, components.shape[1])
    order = np.argsort(-np.abs(components), axis=1, kind="stable")[:, :n_top]
    rows = np.repeat(np.arange(components.shape[0]), n_top)
    cols = order.ravel()
    return pd.DataFrame(
        {
            "component": rows,
            "rank": np.tile(np.arange(1, n_top + 1), components.shape[0]),
            "gene": names[cols],
            "loading": components[rows, cols],
        }
    )


def top_components(corr: pd.DataFrame) -> dict:
    """The component with the largest |r| over cells and the one over donors, from
    :func:`component_age_correlations`."""
    cell = corr.loc[corr["r_cell"].abs().idxmax()]
    donor = corr.loc[corr["r_donor"].abs().idxmax()]
    return {"abs_r_cell": float(abs(cell["r_cell"])), "component_cell": int(cell["component"]),
            "abs_r_donor": float(abs(donor["r_donor"])), "component_donor": int(donor["component"])}


def chance_best_abs_r(scores, ages, donors, n_perm: int = 1000, seed: int = 0, observed: dict | None = None) -> dict:
    """What "the best of k components" reaches by chance: donors' ages shuffled among donors
    ``n_perm`` times (each donor's cells keep their donor), and each time the largest |r| of any
    component with age, over cells and over donors, as :func:`component_age_correlations` computes it.

    Returns ``mean_cell``, ``q95_cell``, ``mean_donor``, ``q95_donor`` (mean and 95th percentile of
    the shuffled best |r|), ``n_perm``, and with ``observed`` (:func:`top_components`) the
    permutation p-values ``p_cell`` and ``p_donor`` (share of shuffles at least as high, counting the
    observed one). With k components and n donors the best of k random correlations is far from
    zero (about 0.4 for k = 100, n = 49), so an observed best |r| means something only above it.
    """
    summary = DonorScores.from_cells(scores, ages, donors, "chance_best_abs_r")
    return donor_score_chance(summary, n_perm=n_perm, seed=seed, observed=observed)


def donor_score_chance(summary: DonorScores, n_perm: int = 1000, seed: int = 0, observed: dict | None = None) -> dict:
    """:func:`chance_best_abs_r` from a :class:`DonorScores` (what it reads: donor means, cell counts,
    the cells' sums of squares), so that a streamed pass over every cell has its chance level too."""
    counts = summary.counts.astype(float)
    means, donor_age, ss_cells = summary.means, summary.ages, summary.ss_cells
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(len(summary.ids)) for _ in range(int(n_perm))])
    shuffled = donor_age[perm]  # n_perm x donors

    # over donors: Pearson r of each donor's mean score with its (shuffled) age
    zd = means - means.mean(0)
    norm_d = np.sqrt((zd ** 2).sum(0))
    za = shuffled - shuffled.mean(1, keepdims=True)
    r_donor = (za @ zd) / (np.sqrt((za ** 2).sum(1))[:, None] * np.where(norm_d > 0, norm_d, np.nan))
    # over cells: every cell takes its donor's shuffled age; from donor sums, without a pass over cells
    n = counts.sum()
    grand = (counts @ means) / n
    age_mean = (shuffled @ counts) / n
    centred = shuffled - age_mean[:, None]
    cov = (centred * counts) @ (means - grand)
    ss_age = (centred ** 2) @ counts
    r_cell = cov / (np.sqrt(ss_age)[:, None] * np.sqrt(np.where(ss_cells > 0, ss_cells, np.nan)))
    best_cell = np.nanmax(np.abs(r_cell), axis=1)
    best_donor = np.nanmax(np.abs(r_donor), axis=1)
    out = {"mean_cell": float(best_cell.mean()), "q95_cell": float(np.quantile(best_cell, 0.95)),
           "mean_donor": float(best_donor.mean()), "q95_donor": float(np.quantile(best_donor, 0.95)),
           "n_perm": int(n_perm), "n_components": int(summary.n_components), "n_donors": int(len(summary.ids))}
    if observed is not None:
        out["p_cell"] = float((1 + (best_cell >= observed["abs_r_cell"] - 1e-12).sum()) / (1 + n_perm))
        out["p_donor"] = float((1 + (best_donor >= observed["abs_r_donor"] - 1e-12).sum()) / (1 + n_perm))
    return out


def top_components_table(top: dict, n_components: int, paper_components=None, paper_abs_r=None,
                         chance: dict | None = None) -> pd.DataFrame:
    """:func:`top_components` as a table, ours beside the paper's (which reports the top |r| only);
    each row written for reading (counts as integers, correlations with two decimals)."""
    def r(v):
        return "not reported" if v is None else f"{float(v):.2f}"

    def n(v):
        return "not reported" if v is None else f"{int(v):,}"

    table = pd.DataFrame({
        "ours": [n(n_components), r(top["abs_r_cell"]), n(top["component_cell"]), r(top["abs_r_donor"]),
                 n(top["component_donor"])],
        "paper": [n(paper_components), r(paper_abs_r), "not reported", "not reported", "not reported"],
    }, index=["components", "top |r| over cells", "its component", "top |r| over donors", "its component"])
    if chance is None:
        return table
    # the yardstick beside each "best of k": what shuffled donor ages reach (not reported by the paper)
    rows = pd.DataFrame({
        "ours": [f"{chance['mean_cell']:.2f} (95th percentile {chance['q95_cell']:.2f})",
                 _p_text(chance.get("p_cell"), chance["n_perm"]),
                 f"{chance['mean_donor']:.2f} (95th percentile {chance['q95_donor']:.2f})",
                 _p_text(chance.get("p_donor"), chance["n_perm"])],
        "paper": ["not reported"] * 4,
    }, index=["top |r| over cells by chance¹", "p, top |r| over cells¹", "top |r| over donors by chance¹",
              "p, top |r| over donors¹"])
    return pd.concat([table.iloc[:3], rows.iloc[:2], table.iloc[3:], rows.iloc[2:]])


def _p_text(p, n_perm: int) -> str:
    if p is None:
        return "not computed"
    floor = 1 / (n_perm + 1)
    return f"< {floor:.3f}" if p <= floor + 1e-12 else f"{p:.3f}"


def chance_note(chance: dict) -> str:
    """The footnote of the chance rows: how the chance level was computed."""
    return (f"¹ Chance: the donors' ages shuffled among the {chance['n_donors']} donors {chance['n_perm']:,} times "
            f"(each donor's cells keep their donor); each time the largest |r| of any of the "
            f"{chance['n_components']} components with age. Mean and 95th percentile of those maxima; p is the share "
            f"of shuffles reaching the observed top |r|.")


def fit_component_ridge(scores, ages, alphas):
    """Ridge regression of cell ages on component scores, its penalty chosen by (efficient
    leave-one-out) cross-validation over ``alphas``; returns the fitted ``RidgeCV``."""
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=np.asarray(alphas, dtype=float)).fit(scores, ages)

