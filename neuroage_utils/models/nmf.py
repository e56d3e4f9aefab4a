"""Non-negative matrix factorisation of the training cells (the paper's NMF features).

NMF approximates the non-negative cells x genes matrix by two non-negative factors,

.. math::

    X \\approx W H, \\qquad W \\in \\mathbb{R}_{\\ge 0}^{\\text{cells} \\times k},\\;
    H \\in \\mathbb{R}_{\\ge 0}^{k \\times \\text{genes}},

minimising :math:`\\tfrac12\\lVert X - WH\\rVert_F^2` (scikit-learn's default loss and coordinate-
descent solver). Rows of ``H`` are gene programmes, rows of ``W`` a cell's usage of each programme;
the usages are the features the paper's age MLP reads. For new cells ``H`` is held fixed and ``W``
solved for (``transform``), so the test cells never shape the programmes.

The paper fitted NMF (k = 100, scikit-learn defaults) to the **raw** counts of the training and
validation donors: ``transform="raw"`` reproduces that. On raw counts the Frobenius loss is dominated
by highly expressed genes and by library size; ``transform="log1p"`` factorises ``log(1 + x)``
instead, which compresses that range (pass raw counts; log-normalised input with ``"raw"`` works
too). The default is the paper's ``"raw"``; a chapter that uses ``"log1p"`` says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from neuroage_utils.data.checks import as_matrix, require_non_negative
from neuroage_utils.errors import DataValidationError
from neuroage_utils.models.svd import component_age_correlations, top_loadings

__all__ = ["NMFModel", "fit_nmf", "factor_age_correlations", "top_loadings", "INPUT_TRANSFORMS"]

#: How the input is transformed before factorising: as given (the paper), or log(1 + x).
INPUT_TRANSFORMS = ("raw", "log1p")


def _prepare(X, transform: str, dense_limit_gb: float, what: str):
    """Validate (finite, non-negative), apply the input transform, densify when small.

    scikit-learn's coordinate-descent NMF runs about twice as fast on a dense array as on a CSR
    matrix of 30% density, so matrices that fit in ``dense_limit_gb`` are densified; larger ones
    stay sparse, which scikit-learn supports.
    """
    if transform not in INPUT_TRANSFORMS:
        raise DataValidationError(f"unknown NMF transform={transform!r}: use one of {INPUT_TRANSFORMS}")
    X = as_matrix(X, what)
    require_non_negative(X, "NMF")
    densified = sp.issparse(X) and X.shape[0] * X.shape[1] * X.dtype.itemsize <= dense_limit_gb * 2**30
    if densified:
        X = X.toarray()
    if transform == "log1p":
        if sp.issparse(X):
            X = X.copy()
            np.log1p(X.data, out=X.data)
        elif densified:
            np.log1p(X, out=X)  # our own copy: transform in place
        else:
            X = np.log1p(X)  # never modify the caller's array
    return X


@dataclass
class NMFModel:
    """A fitted NMF: ``components_`` (k x genes) are the gene programmes.

    Attributes
    ----------
    nmf
        The fitted :class:`sklearn.decomposition.NMF`.
    input_transform
        ``"raw"`` or ``"log1p"``: applied to any matrix given to :meth:`transform`.
    converged
        False when the solver stopped at ``max_iter`` before reaching ``tol``.
    backend, device
        The solver that fitted it: ``"sklearn"`` (coordinate descent) or ``"torch"`` (HALS on
        ``device``, which then also computes :meth:`transform`).
    """

    nmf: NMF
    input_transform: str
    converged: bool = True
    dense_limit_gb: float = 1.0
    backend: str = "sklearn"
    device: object = None

    @classmethod
    def from_hals(cls, fit: dict, transform: str = "raw", max_iter: int = 200, tol: float = 1e-4, seed: int = 0,
                  device=None, dense_limit_gb: float = 1.0) -> "NMFModel":
        """The model of a HALS fit (``device_linalg.nmf_hals`` or ``models.streamed.fit_streamed_nmf``: a dict
        with ``H``, ``reconstruction_err``, ``n_iter``, ``converged``); its :meth:`transform` solves usages by
        HALS with the programmes fixed, on ``device``."""
        H = np.asarray(fit["H"])
        # a fitted scikit-learn NMF holding the torch factors, so that NMFModel is unchanged
        nmf = NMF(n_components=H.shape[0], max_iter=max_iter, tol=tol, random_state=seed)
        nmf.components_, nmf.n_components_ = H, H.shape[0]
        nmf.reconstruction_err_, nmf.n_iter_, nmf.n_features_in_ = fit["reconstruction_err"], fit["n_iter"], H.shape[1]
        return cls(nmf=nmf, input_transform=transform, converged=fit["converged"], dense_limit_gb=dense_limit_gb,
                   backend="torch", device=device)

    @property
    def n_components(self) -> int:
        return int(self.nmf.n_components_)

    @property
    def components_(self) -> np.ndarray:
        """Gene programmes H (k x genes), non-negative."""
        return self.nmf.components_

    @property
    def reconstruction_err_(self) -> float:
        """Frobenius norm of ``X - WH`` on the training matrix (after the input transform)."""
        return float(self.nmf.reconstruction_err_)

    def transform(self, X) -> np.ndarray:
        """Programme usages W (cells x k) of new cells, with the programmes held fixed."""
        X = _prepare(X, self.input_transform, self.dense_limit_gb, "NMFModel.transform")
        if X.shape[1] != self.components_.shape[1]:
            raise DataValidationError(
                f"the NMF was fitted on {self.components_.shape[1]} genes but X has {X.shape[1]}: "
                "pass the same genes, in the same order"
            )
        if self.backend == "torch":  # usages by HALS with H fixed, on the fit's device
            from neuroage_utils.models.device_linalg import nmf_transform

            return nmf_transform(X, self.components_, max_iter=self.nmf.max_iter, tol=self.nmf.tol,
                                 device=self.device)
        with warnings.catch_warnings():
            # transform re-runs the solver for W; hitting max_iter there is expected and harmless
            warnings.simplefilter("ignore", ConvergenceWarning)
            return np.asarray(self.nmf.transform(X))


def fit_nmf(
    X_train,
    n_components: int = 100,
    seed: int = 0,
    max_iter: int = 200,
    init: str | None = None,
    transform: str = "raw",
    tol: float = 1e-4,
    dense_limit_gb: float = 1.0,
    backend: str = "sklearn",
    device: str | None = None,
) -> NMFModel:
    """Fit scikit-learn's NMF (default loss and solver) to non-negative training cells.

    Parameters
    ----------
    X_train
        Training cells x genes, CSR or dense, non-negative: raw counts (the paper) or
        log-normalised counts. Negative values (z-scores) raise :class:`DataValidationError`.
    n_components
        Number of programmes k (the paper: 100); at most ``min(cells, genes)``.
    seed
        Random state of the initialisation and solver.
    max_iter, tol
        Solver limits (scikit-learn defaults: 200, 1e-4). On 10k cells x 2000 genes with k = 100
        an iteration takes about 0.4 s on 2 cores.
    init
        scikit-learn's ``init``; ``None`` is its default (NNDSVDa here since k <= min(cells, genes)).
    transform
        ``"raw"`` (factorise the values as given) or ``"log1p"`` (factorise ``log(1 + x)``).
    dense_limit_gb
        Densify a sparse input for speed when it fits in this many GB.
    backend, device
        ``"sklearn"`` (default: coordinate descent) or ``"torch"``: the same objective minimised by
        accelerated HALS on ``device`` (:func:`neuroage_utils.models.device_linalg.nmf_hals`; NNDSVDa
        start, ``init`` must be None); ``"auto"``: torch, which is the faster one on a CPU too
        (:func:`~neuroage_utils.models.device_linalg.choose_backend`). The model's ``transform`` solves the
        usages with the same backend (HALS with the programmes fixed, or scikit-learn's).
    """
    X = _prepare(X_train, transform, dense_limit_gb, "fit_nmf")
    if not 1 <= n_components <= min(X.shape):
        raise DataValidationError(
            f"fit_nmf: n_components={n_components} must be between 1 and min(cells, genes) = "
            f"{min(X.shape)}: lower n_components"
        )
    if (X.data if sp.issparse(X) else X).max(initial=0) <= 0:
        raise DataValidationError("fit_nmf: the matrix is all zeros: pass expression values")
    if backend not in ("auto", "sklearn", "torch"):
        raise DataValidationError(f"fit_nmf: unknown backend={backend!r}: use 'auto', 'sklearn' or 'torch'")
    if backend == "auto":
        from neuroage_utils.models.device_linalg import choose_backend

        backend = choose_backend(backend, device, step="nmf")
    nmf = NMF(n_components=n_components, init=init, max_iter=max_iter, tol=tol, random_state=seed)
    if backend == "torch":
        from neuroage_utils.models.device_linalg import nmf_hals

        if init is not None:
            raise DataValidationError("fit_nmf: backend='torch' starts from NNDSVDa: leave init=None")
        fit = nmf_hals(X, n_components, max_iter=max_iter, tol=tol, seed=seed, device=device)
        return NMFModel.from_hals(fit, transform=transform, max_iter=max_iter, tol=tol, seed=seed, device=device,
                                  dense_limit_gb=dense_limit_gb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        nmf.fit(X)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return NMFModel(nmf=nmf, input_transform=transform, converged=converged, dense_limit_gb=dense_limit_gb)


def factor_age_correlations(usages, ages, donors):
    """Cell- and donor-level Pearson r of each NMF factor's usage with age.

    Same table as :func:`neuroage_utils.models.svd.component_age_correlations` (``component`` is the
    factor index); a factor no cell uses gives NaN.
    """
    return component_age_correlations(usages, ages, donors)
