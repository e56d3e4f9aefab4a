r"""Factorisations at scale: the SVD and HALS NMF of a streamed cohort, products accumulated per block.

Both read a :class:`~neuroage_utils.data.stream.StreamedCohort` in row blocks and never hold the
cells x genes matrix, so memory is one block plus genes x genes (or genes x k) products.

**SVD of the z-scores.** With :math:`Z = (X - \mathbf 1\mu^\top) D^{-1}` on the training cells,
:math:`Z^\top Z = D^{-1}(X^\top X - n\,\mu\mu^\top)D^{-1}`, and :math:`X^\top X = \sum_b X_b^\top X_b`
is one pass (dense per-block products, float64 sums). Its eigenvectors are the right singular
vectors and the square roots of its eigenvalues the singular values: the exact truncated SVD that
ARPACK computes in memory (``models.svd.fit_svd``), to rounding. Above ``gram_genes`` genes the
genes x genes matrix is too large, and a randomised subspace iteration on the same operator takes
its place: each pass computes :math:`Z^\top (Z Q)` block by block, a genes x (k + oversampling)
product, then a Rayleigh-Ritz step on the last basis (:func:`fit_streamed_svd`).

**NMF by HALS.** ``models.device_linalg.nmf_hals`` alternates HALS sweeps on the usages :math:`W`
(given :math:`XH^\top`, :math:`HH^\top`) and on the programmes :math:`H` (given :math:`W^\top X`,
:math:`W^\top W`). The usage update is row by row, so one pass over the blocks updates each
block's :math:`W_b` and accumulates :math:`W_b^\top X_b` and :math:`W_b^\top W_b` with the new
:math:`W_b`; :math:`H` is then updated from the sums. :math:`W` (cells x k) lives in a memory-mapped
file, and the objective :math:`\lVert X\rVert^2 - 2\langle W^\top X, H\rangle + \langle W^\top W, HH^\top\rangle`
comes from the same sums for free. From the same start it follows the in-memory HALS to within
the inner-loop stopping rule (tested against it).

**Scores of every cell.** A fitted factorisation scores cells block by block (``model.transform`` of
each block): :func:`streamed_donor_summary` keeps per donor the cell count and the sum of scores,
and over all cells each component's sum of squares (combined across blocks by Chan's update), which
is all that the correlations with age and their chance level read (``models.svd.DonorScores``).

**A ridge on the scores of every training cell.** :func:`fit_streamed_ridge` is scikit-learn's
``RidgeCV`` (penalty chosen by exact leave-one-out error, unpenalised intercept) from two passes:
the first sums :math:`S^\top S`, :math:`S^\top y` and the means; with :math:`C = V\Lambda V^\top` the
centred Gram matrix, the second gives every cell's leave-one-out residual for every penalty,
:math:`e_i / (1 - h_i)` with :math:`h_i = 1/n + \sum_j P_{ij}^2/(\lambda_j + \alpha)`, :math:`P = (S - \bar s) V`.
A linear model's donor-mean prediction is its prediction of the donor-mean scores, so donors are
scored from the summary, with no third pass.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils.errors import DataValidationError
from neuroage_utils.models.svd import DonorScores, SVDModel

__all__ = ["fit_streamed_svd", "streamed_donor_scores", "fit_streamed_nmf", "streamed_donor_summary",
           "fit_streamed_ridge", "StreamedRidge"]

#: Up to this many genes the SVD uses the exact genes x genes Gram matrix (6,000 genes: 288 MB).
GRAM_GENES = 6000


def _zscore_stats(stream, rows, scale: bool):
    mean, var = stream.column_moments(rows)
    scale_ = np.sqrt(var)
    scale_[scale_ == 0] = 1.0
    if not scale:
        scale_ = np.ones_like(scale_)
    return mean, var, scale_


def _selected_blocks(stream, rows, normalise: bool = True):
    """The blocks of the selected rows (possibly empty blocks skipped), as dense float64 arrays."""
    for a, block in stream.blocks(normalise=normalise, needed=rows):
        part = block[rows[a : a + block.shape[0]]]
        if part.shape[0]:
            yield a, part


def fit_streamed_svd(stream, rows, n_components: int = 100, seed: int = 0, scale: bool = True,
                     gram_genes: int = GRAM_GENES, n_iter: int = 7, oversample: int = 20) -> SVDModel:
    """Truncated SVD of the z-scored log-normalised cells in boolean ``rows`` (see the module notes).

    Returns the :class:`~neuroage_utils.models.svd.SVDModel` of ``fit_svd`` (``backend`` says which
    streamed solver ran); ``transform`` and ``streamed_donor_scores`` then score new cells.
    """
    rows = np.asarray(rows, dtype=bool)
    n, p = int(rows.sum()), stream.n_genes
    if not 1 <= n_components <= min(n, p) - 1:
        raise DataValidationError(
            f"fit_streamed_svd: n_components={n_components} must be between 1 and min(cells, genes) - 1 = "
            f"{min(n, p) - 1}: lower n_components"
        )
    mean, var, scale_ = _zscore_stats(stream, rows, scale)
    total_variance = float((var / scale_**2).sum()) * n
    inv, shift = 1.0 / scale_, mean / scale_
    if p <= gram_genes:
        gram = np.zeros((p, p))
        for _, block in _selected_blocks(stream, rows):
            dense = block.toarray()
            gram += dense.T @ dense  # float32 product per block, float64 sum over blocks
        cov = (gram - n * np.outer(mean, mean)) * np.outer(inv, inv)
        values, vectors = np.linalg.eigh(cov)
        top = np.argsort(values)[::-1][:n_components]
        s, vt = np.sqrt(np.maximum(values[top], 0.0)), vectors[:, top].T
        backend = "streamed-gram"
    else:
        rng = np.random.default_rng(seed)
        Q = np.linalg.qr(rng.standard_normal((p, n_components + oversample)))[0]

        def gram_times(V):  # Z^T Z V, one pass
            out = np.zeros_like(V)
            weights, offset = inv[:, None] * V, shift @ V
            for _, block in _selected_blocks(stream, rows):
                zv = np.asarray(block @ weights.astype(np.float32)) - offset  # Z_b V
                out += inv[:, None] * np.asarray(block.T @ zv) - np.outer(shift, zv.sum(axis=0))
            return out

        for _ in range(n_iter):
            Q = np.linalg.qr(gram_times(Q))[0]
        small = Q.T @ gram_times(Q)
        values, vectors = np.linalg.eigh((small + small.T) / 2)
        top = np.argsort(values)[::-1][:n_components]
        s, vt = np.sqrt(np.maximum(values[top], 0.0)), (Q @ vectors[:, top]).T
        backend = "streamed-randomised"
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    ratio = s**2 / total_variance if total_variance > 0 else np.zeros_like(s)
    return SVDModel(components_=vt, singular_values_=s, explained_variance_ratio_=ratio, mean_=mean, scale_=scale_,
                    backend=backend)


def _scored_blocks(score, stream, rows, normalise: bool):
    """``(first_row, kept, scores)`` of every block with a selected row: ``score`` (a fitted model's
    ``transform``) of the block's selected cells, raw counts or log-normalised (``normalise``)."""
    for a, block in stream.blocks(normalise=normalise, needed=rows):
        keep = rows[a : a + block.shape[0]]
        if keep.any():
            yield a, keep, np.asarray(score(block[keep]), dtype=np.float64)


def streamed_donor_summary(score, stream, rows, normalise: bool = True) -> DonorScores:
    """The :class:`~neuroage_utils.models.svd.DonorScores` of the cells in ``rows``, scored block by block
    by ``score`` (e.g. ``SVDModel.transform`` on log-normalised blocks, ``NMFModel.transform`` on raw
    counts with ``normalise=False``): per donor its cell count and mean score, over the cells each
    component's sum of squares. Memory: donors x components."""
    rows = np.asarray(rows, dtype=bool)
    sums = count = mean = m2 = None
    n = 0
    for a, keep, scores in _scored_blocks(score, stream, rows, normalise):
        if sums is None:
            sums, mean, m2 = np.zeros((stream.n_donors, scores.shape[1])), np.zeros(scores.shape[1]), np.zeros(scores.shape[1])
        np.add.at(sums, stream.donor_codes[a : a + len(keep)][keep], scores)
        # Chan's update of the cells' mean and sum of squares: no cancellation on far-from-zero scores
        m, block_mean = len(scores), scores.mean(axis=0)
        delta = block_mean - mean
        m2 += ((scores - block_mean) ** 2).sum(axis=0) + delta**2 * n * m / (n + m)
        mean += delta * m / (n + m)
        n += m
    if sums is None:
        raise DataValidationError("streamed_donor_summary: no cell selected: pass a mask with cells")
    count = np.bincount(stream.donor_codes[rows], minlength=stream.n_donors)
    present = np.flatnonzero(count)
    ids = stream.donor_table["donor_id"].to_numpy().astype(str)[present]
    order = np.argsort(ids, kind="stable")  # sorted by id, as DonorScores.from_cells
    present = present[order]
    return DonorScores(ids=ids[order], ages=stream.donor_table["age"].to_numpy(dtype=float)[present],
                       counts=count[present], means=sums[present] / count[present, None], ss_cells=m2)


def streamed_donor_scores(model, stream, rows) -> pd.DataFrame:
    """Mean component scores per donor over the cells in ``rows`` (donors x components), streamed:
    the donor-level view of a factorisation without a cells x components array."""
    summary = streamed_donor_summary(model.transform, stream, rows, normalise=True)
    table = pd.DataFrame(summary.means, index=pd.Index(summary.ids, name="donor_id"))
    table.columns = [f"component {i + 1}" for i in range(table.shape[1])]
    return table


class StreamedRidge:
    """A ridge regression of ages on component scores fitted by :func:`fit_streamed_ridge`: the
    ``coef_``, ``intercept_`` and ``alpha_`` of scikit-learn's ``RidgeCV`` on the same cells, and
    ``loo_mse_`` (the leave-one-out mean squared error of every penalty tried)."""

    def __init__(self, coef, intercept: float, alpha: float, alphas, loo_mse, n_cells: int):
        self.coef_, self.intercept_, self.alpha_ = np.asarray(coef), float(intercept), float(alpha)
        self.alphas, self.loo_mse_, self.n_cells = np.asarray(alphas, dtype=float), np.asarray(loo_mse), int(n_cells)

    def predict(self, scores) -> np.ndarray:
        """Ages of cells (or of donors, from their mean scores) from their component scores."""
        return np.asarray(scores, dtype=float) @ self.coef_ + self.intercept_


def fit_streamed_ridge(score, stream, rows, alphas, normalise: bool = True) -> StreamedRidge:
    """``RidgeCV(alphas).fit(scores, ages)`` over the cells in ``rows``, their scores computed block by
    block by ``score`` (see the module notes: two passes, memory components x components)."""
    rows = np.asarray(rows, dtype=bool)
    alphas = np.asarray(alphas, dtype=float)
    ages = np.asarray(stream.ages, dtype=float)
    n, sum_y, sum_s, sts, sty = 0, 0.0, None, None, None
    for a, keep, scores in _scored_blocks(score, stream, rows, normalise):
        y = ages[a : a + len(keep)][keep]
        if sum_s is None:
            k = scores.shape[1]
            sum_s, sts, sty = np.zeros(k), np.zeros((k, k)), np.zeros(k)
        n += len(y)
        sum_y += float(y.sum())
        sum_s += scores.sum(axis=0)
        sts += scores.T @ scores
        sty += scores.T @ y
    if n < 2:
        raise DataValidationError(f"fit_streamed_ridge: {n} cell(s) selected: a ridge needs at least 2")
    mean_s, mean_y = sum_s / n, sum_y / n
    values, vectors = np.linalg.eigh(sts - n * np.outer(mean_s, mean_s))
    values = np.maximum(values, 0.0)
    q = vectors.T @ (sty - n * mean_s * mean_y)
    inv = 1.0 / (values[:, None] + alphas[None, :])  # components x penalties
    sq_err = np.zeros(len(alphas))
    for a, keep, scores in _scored_blocks(score, stream, rows, normalise):
        y = ages[a : a + len(keep)][keep]
        P = (scores - mean_s) @ vectors
        residual = (y - mean_y)[:, None] - (P * q) @ inv
        leverage = 1.0 / n + (P**2) @ inv
        sq_err += ((residual / (1.0 - leverage)) ** 2).sum(axis=0)
    loo = sq_err / n
    best = int(np.argmin(loo))  # the first of equal errors, as RidgeCV keeps the first best
    coef = vectors @ (q * inv[:, best])
    return StreamedRidge(coef, mean_y - mean_s @ coef, alphas[best], alphas, loo, n)


def fit_streamed_nmf(stream, rows, n_components: int = 100, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                     transform: str = "raw", init=None, inner_sweeps: int = 2, check_every: int = 5,
                     workdir=None, normalise: bool = False) -> dict:
    """HALS NMF of the cells in ``rows`` read block by block (see the module notes).

    ``transform``: ``"raw"`` counts (the paper) or ``"log1p"``, of the counts or, with ``normalise``, of the
    log-normalised values (the NMF chapter's ``input: log1p`` factorises those as given). ``init`` ``(W, H)`` (W: selected
    cells x k) starts from given factors; the default is scikit-learn's ``"random"`` start
    (uniform scaled by :math:`\\sqrt{\\bar X / k}`). Returns ``H`` (k x genes), ``reconstruction_err``
    (:math:`\\lVert X - WH\\rVert_F`), ``n_iter``, ``converged``, ``history`` and ``W_path`` (the
    memory-mapped usages, cells x k float32, in ``workdir``: a temporary folder by default).
    """
    import torch

    from neuroage_utils.models.device_linalg import _hals_sweeps

    if transform not in ("raw", "log1p"):
        raise DataValidationError(f"unknown NMF transform={transform!r}: use one of ('raw', 'log1p')")
    rows = np.asarray(rows, dtype=bool)
    n, p, k = int(rows.sum()), stream.n_genes, int(n_components)

    def blocks():
        pos = 0
        for a, block in _selected_blocks(stream, rows, normalise=normalise):
            block = block.astype(np.float32)
            if transform == "log1p":
                np.log1p(block.data, out=block.data)
            yield pos, block
            pos += block.shape[0]

    x_sq = x_sum = 0.0
    for _, block in blocks():
        x_sq += float(np.dot(block.data.astype(np.float64), block.data))
        x_sum += float(block.data.sum(dtype=np.float64))
    workdir = Path(tempfile.mkdtemp(prefix="neuroage-nmf-") if workdir is None else workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    W = np.lib.format.open_memmap(workdir / "W.npy", mode="w+", dtype=np.float32, shape=(n, k))
    if init is None:
        rng = np.random.default_rng(seed)
        avg = math.sqrt(x_sum / (n * p) / k)
        H = (avg * np.abs(rng.standard_normal((k, p)))).astype(np.float32)
        for start in range(0, n, stream.block_rows):
            stop = min(start + stream.block_rows, n)
            W[start:stop] = avg * np.abs(rng.standard_normal((stop - start, k)))
    else:
        W[:] = np.asarray(init[0], dtype=np.float32)
        H = np.asarray(init[1], dtype=np.float32).copy()
    Ht = torch.from_numpy(H)
    history, converged, it = [], False, 0
    for it in range(1, max_iter + 1):
        HHt = Ht @ Ht.T
        WtX = torch.zeros((k, p), dtype=torch.float64)
        WtW = torch.zeros((k, k), dtype=torch.float64)
        for pos, block in blocks():
            m = block.shape[0]
            A = torch.from_numpy(np.asarray(block @ H.T, dtype=np.float32))          # X_b H^T   m x k
            Wb = _hals_sweeps(torch.from_numpy(np.ascontiguousarray(W[pos : pos + m].T)), A.T.contiguous(), HHt,
                              inner_sweeps, 0.01)                                      # k x m
            W[pos : pos + m] = Wb.T.numpy()
            WtX += torch.from_numpy(np.asarray(block.T @ Wb.T.numpy())).T.double()   # W_b^T X_b
            WtW += (Wb @ Wb.T).double()
        Ht = _hals_sweeps(Ht, WtX.float(), WtW.float(), inner_sweeps, 0.01)
        H = Ht.numpy()
        objective = x_sq - 2 * float((WtX * Ht.double()).sum()) + float((WtW * (Ht @ Ht.T).double()).sum())
        history.append(math.sqrt(max(objective, 0.0)))
        if it % check_every == 0 and len(history) > check_every:
            if history[-1 - check_every] - history[-1] <= tol * history[-1 - check_every] * check_every:
                converged = True
                break
    W.flush()
    return {"H": H.copy(), "reconstruction_err": history[-1], "n_iter": it, "converged": converged,
            "history": history, "W_path": workdir / "W.npy"}
