r"""Heavy linear algebra in torch, on any ``torch.device``: NMF, truncated SVD, elastic-net paths.

scikit-learn stays the reference and the CPU default; these are the device versions the book can
switch to (``fit_nmf(..., backend="torch")``, ``fit_svd(..., backend="torch")``) and that
``bench/bench_linalg.py`` times against it. Each is tested against scikit-learn on small data.

* :func:`nmf_hals` minimises scikit-learn's Frobenius objective :math:`\tfrac12\lVert X-WH\rVert_F^2`
  by *accelerated HALS* (Gillis & Glineur, 2012): the costly products :math:`XH^\top` and
  :math:`W^\top X` are formed once per outer iteration and reused by several cheap column sweeps
  (cost cells x k^2 each), so each pass over the data buys more descent than one sweep of
  scikit-learn's coordinate descent. The objective is computed without forming :math:`WH`.
* :func:`randomized_svd` is a randomised range finder with power iterations (Halko et al., 2011) on
  the z-scored matrix given only as products (the sparse counts stay sparse, on the device too).
* :func:`enet_path_gram` solves scikit-learn's elastic-net objective along a penalty path by FISTA
  on the Gram matrix, batched over CV folds and mixing ratios (matrix products, which a GPU does
  well, instead of scikit-learn's sequential coordinate updates); :func:`elastic_net_cv` adds the
  grouped cross-validation and the final refit.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "to_device_matrix",
    "nmf_hals",
    "nmf_transform",
    "nmf_objective",
    "randomized_svd",
    "zscore_svd",
    "enet_path_gram",
    "elastic_net_cv",
    "choose_backend",
    "LINALG_BACKENDS",
]

#: What a profile's ``linalg_backend`` may say.
LINALG_BACKENDS = ("auto", "sklearn", "torch")

_EPS = 1e-10


def _device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Steps whose torch version is also the faster one on a CPU, measured on 2 cores (bench/results.json,
#: `bench/bench_linalg.py`): HALS NMF reaches a lower Frobenius objective than scikit-learn's coordinate
#: descent in about half its time or less at the book's sizes (10,000 x 2,000 counts, 100 components;
#: the quick cohort's 15 s against 29 s); on tiny matrices (the smoke profile) it is a little slower. The elastic net is faster with scikit-learn there. The SVD
#: is faster randomised too (bench: 2.6x), but ARPACK's exact one takes seconds at the book's sizes on
#: a CPU, so a CPU run keeps the reference.
CPU_TORCH_STEPS = frozenset({"nmf"})


def choose_backend(choice: str, device=None, step: str | None = None) -> str:
    """``"torch"`` or ``"sklearn"`` for a factorisation ``step`` (``"nmf"`` or ``"svd"``) on ``device``.

    ``"auto"`` takes the torch version on CUDA, and on a CPU where it is measured faster there
    (:data:`CPU_TORCH_STEPS`); scikit-learn's (the reference; ARPACK for the SVD) otherwise.
    ``"sklearn"`` and ``"torch"`` force one.
    """
    if choice not in LINALG_BACKENDS:
        from neuroage_utils.errors import DataValidationError

        raise DataValidationError(f"unknown linalg_backend {choice!r}: use one of {', '.join(LINALG_BACKENDS)}")
    if choice != "auto":
        return choice
    if _device(device).type == "cuda" or step in CPU_TORCH_STEPS:
        return "torch"
    return "sklearn"


def backends_used(choice: str, device=None) -> dict:
    """What each factorisation step runs on under ``choice`` (for results files)."""
    return {step: choose_backend(choice, device, step) for step in ("nmf", "svd")}


def to_device_matrix(X, device=None, dtype=torch.float32, dense: bool | None = None) -> torch.Tensor:
    """``X`` (CSR or ndarray) as a torch tensor on ``device``: sparse CSR stays sparse unless ``dense``."""
    device = _device(device)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    if torch.is_tensor(X):
        return X.to(device=device, dtype=dtype)
    if sp.issparse(X):
        if dense:
            return torch.from_numpy(np.asarray(X.toarray(), dtype=np_dtype)).to(device=device, dtype=dtype)
        X = sp.csr_matrix(X)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are tested
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(X.indptr.astype(np.int64)), torch.from_numpy(X.indices.astype(np.int64)),
                torch.from_numpy(X.data.astype(np.float32)), size=X.shape, check_invariants=False,
            ).to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np_dtype)).to(device=device, dtype=dtype)


def _mm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    return A @ B


def _sq_norm(X: torch.Tensor) -> float:
    values = X.values() if X.layout == torch.sparse_csr else X
    return float((values.double() ** 2).sum())


# --------------------------------------------------------------------------------------------------
# NMF (Frobenius), accelerated HALS
# --------------------------------------------------------------------------------------------------


def _nndsvda(X: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVDa initialisation (Boutsidis & Gallopoulos 2008; scikit-learn's default for NMF).

    The leading singular triplets come from :func:`randomized_svd` (scikit-learn also uses a
    randomised SVD here), zeros are filled with the matrix mean.
    """
    U, S, V = randomized_svd(lambda v: _mm(X, v), lambda u: _rmatmul(X, u), tuple(X.shape), k, seed=seed,
                             n_iter=4, device=X.device, dtype=X.dtype)
    W = torch.zeros(X.shape[0], k, device=X.device, dtype=X.dtype)
    H = torch.zeros(k, X.shape[1], device=X.device, dtype=X.dtype)
    W[:, 0] = S[0].sqrt() * U[:, 0].abs()
    H[0] = S[0].sqrt() * V[:, 0].abs()
    for j in range(1, k):
        x, y = U[:, j], V[:, j]
        xp, xn, yp, yn = x.clamp(min=0), (-x).clamp(min=0), y.clamp(min=0), (-y).clamp(min=0)
        xpn, ypn, xnn, ynn = xp.norm(), yp.norm(), xn.norm(), yn.norm()
        mp, mn = xpn * ypn, xnn * ynn
        if mp > mn:
            u, v, sigma = xp / xpn, yp / ypn, mp
        else:
            u, v, sigma = xn / xnn, yn / ynn, mn
        lbd = (S[j] * sigma).sqrt()
        W[:, j] = lbd * u
        H[j] = lbd * v
    mean = (X.values().sum() if X.layout == torch.sparse_csr else X.sum()) / (X.shape[0] * X.shape[1])
    W[W < _EPS] = mean
    H[H < _EPS] = mean
    return W, H


def _rmatmul(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``X^T U``; for CSR, ``(U^T X)^T`` avoids building a transposed copy of ``X``."""
    if X.layout == torch.sparse_csr:
        return _csr_rmm(X, U)
    return X.T @ U


def _csr_rmm(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    # torch has no CSR^T @ dense kernel on every device; the transpose of a CSR is a CSC with the
    # same buffers, which torch multiplies directly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        Xt = torch.sparse_csc_tensor(X.crow_indices(), X.col_indices(), X.values(),
                                     size=(X.shape[1], X.shape[0]), check_invariants=False)
        return Xt @ U


def nmf_objective(X: torch.Tensor, W: torch.Tensor, H: torch.Tensor, x_sq: float | None = None) -> float:
    r""":math:`\lVert X - WH\rVert_F` (scikit-learn's ``reconstruction_err_``) without forming ``WH``."""
    x_sq = _sq_norm(X) if x_sq is None else x_sq
    cross = float((W.double() * _mm(X, H.T).double()).sum())
    gram = float(((W.T @ W).double() * (H @ H.T).double()).sum())
    return math.sqrt(max(x_sq - 2 * cross + gram, 0.0))


def _hals_sweeps(Ft: torch.Tensor, At: torch.Tensor, G: torch.Tensor, sweeps: int, tol_inner: float) -> torch.Tensor:
    """HALS sweeps for min 1/2||X - F B||^2 over F >= 0, given ``At = (X B^T)^T``, ``G = B B^T``.

    Factors are held transposed (k x n) so that each component is a contiguous row: column access
    of an n x k tensor is strided and several times slower. A sweep costs n k^2 (one GEMV per
    component); the inner loop stops early when a sweep changes ``F`` much less than the first.
    """
    k = Ft.shape[0]
    inv_diag = (1.0 / G.diagonal().clamp(min=_EPS)).tolist()  # one host read per call, not per row
    Fcols = Ft.T  # n x k view: addmv reads it as the GEMV's matrix
    first = None
    for s in range(sweeps):
        check = tol_inner > 0 and s + 1 < sweeps
        before = Ft.clone() if check else None
        for j in range(k):
            # F_j <- max(F_j + (A_j - G_j F) / G_jj, eps): one GEMV and two in-place passes per row
            step = torch.addmv(At[j], Fcols, G[j], alpha=-1.0)
            Ft[j].add_(step, alpha=inv_diag[j]).clamp_(min=_EPS)
        if check:
            change = float(torch.sub(Ft, before).square_().sum())  # one host sync per sweep
            if first is None:
                first = change
            elif change <= tol_inner * first:
                break
    return Ft


def nmf_hals(
    X,
    n_components: int,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    device=None,
    inner_sweeps: int = 2,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    check_every: int = 5,
) -> dict:
    r"""NMF with scikit-learn's Frobenius objective by accelerated HALS, on ``device``.

    Parameters
    ----------
    X
        Non-negative cells x genes (CSR, ndarray or tensor); CSR is kept sparse on the device.
    max_iter, tol
        Outer iterations at most; stop when the objective falls by less than ``tol`` (relative) per
        iteration, averaged over the last ``check_every`` iterations.
    inner_sweeps
        HALS sweeps per factor per outer iteration, reusing ``X H^T`` / ``W^T X`` (at most; an inner
        loop also stops when a sweep changes the factor much less than the first did). On a CPU a
        sweep (memory-bound GEMVs) costs more than the products, so 2 is the best time to a given
        objective there: on 10,000 x 2,000 counts, k = 100, 2 sweeps reached 0.07% above
        scikit-learn's 200-iteration objective in 5.3 s, 3 sweeps 0.09% below it in 7.4 s, and 1
        sweep stopped 0.5% above it (bench/bench_linalg.py).
    init
        ``(W, H)`` to start from; default NNDSVDa as scikit-learn.

    Returns
    -------
    dict with ``W`` (cells x k), ``H`` (k x genes) as numpy float32, ``reconstruction_err``
    (:math:`\lVert X-WH\rVert_F`), ``n_iter``, ``converged``, ``history`` (objective per check).
    """
    device = _device(device)
    Xt = to_device_matrix(X, device)
    x_sq = _sq_norm(Xt)
    if init is None:
        W, H = _nndsvda(Xt, n_components, seed)
    else:
        W = torch.as_tensor(np.asarray(init[0], dtype=np.float32), device=device).clone()
        H = torch.as_tensor(np.asarray(init[1], dtype=np.float32), device=device).clone()
    Wt = W.T.contiguous()  # k x cells: components as contiguous rows (see _hals_sweeps)
    history = [nmf_objective(Xt, W, H, x_sq)]
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        At = _mm(Xt, H.T).T                  # (X H^T)^T     k x cells
        Wt = _hals_sweeps(Wt, At, H @ H.T, inner_sweeps, 0.01)
        Bt = _mm(Wt, Xt) if Xt.layout != torch.sparse_csr else _rmatmul(Xt, Wt.T).T  # W^T X   k x genes
        H = _hals_sweeps(H, Bt, Wt @ Wt.T, inner_sweeps, 0.01)
        if it % check_every == 0 or it == max_iter:
            history.append(nmf_objective(Xt, Wt.T, H, x_sq))
            # relative decrease per iteration, averaged over the window since the last check
            if history[-2] - history[-1] <= tol * history[-2] * check_every:
                converged = True
                break
    W = Wt.T
    return {
        "W": W.float().cpu().numpy(), "H": H.float().cpu().numpy(),
        "reconstruction_err": nmf_objective(Xt, W, H, x_sq), "n_iter": it, "converged": converged,
        "history": history,
    }


def nmf_transform(X, H: np.ndarray, max_iter: int = 200, tol: float = 1e-4, device=None) -> np.ndarray:
    """Usages ``W`` of new cells with the programmes ``H`` held fixed (HALS on ``W`` only)."""
    device = _device(device)
    Xt = to_device_matrix(X, device)
    Ht = torch.as_tensor(np.asarray(H, dtype=np.float32), device=device).T.contiguous()
    At, G = _mm(Xt, Ht).T.contiguous(), Ht.T @ Ht
    Wt = (At / G.diagonal().clamp(min=_EPS)[:, None]).clamp(min=_EPS) / Ht.shape[1]
    Wt = _hals_sweeps(Wt, At, G, max_iter, tol)
    return Wt.T.cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Truncated SVD, randomised
# --------------------------------------------------------------------------------------------------


def _orth(Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of a tall ``Y`` (reduced QR)."""
    with _lapack_threads(Y.device):
        return torch.linalg.qr(Y)[0]


@contextlib.contextmanager
def _lapack_threads(device: torch.device):
    """One thread for the small dense factorisations (QR, SVD of a q x n block) on a CPU.

    LAPACK's many short parallel regions wait on each other: on the 2-core development machine a QR of
    2,000 x 120 took 230 ms with 2 threads and 2.4 ms with 1 when the other core was busy. The large
    products around them keep every thread.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def randomized_svd(matmat, rmatmat, shape, k: int, seed: int = 0, n_iter: int = 7, oversample: int = 20,
                   device=None, dtype=torch.float32):
    r"""Top-``k`` SVD of an operator given by ``matmat(V) = A V`` and ``rmatmat(U) = A^T U``.

    Range finder with ``n_iter`` QR-normalised power iterations (Halko, Martinsson & Tropp 2011);
    returns ``U`` (m x k), ``S`` (k, decreasing), ``V`` (n x k) as tensors.
    """
    m, n = shape
    device = _device(device)
    q = min(k + oversample, min(m, n))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    Q = torch.randn(n, q, generator=gen, dtype=dtype).to(device)
    Q = _orth(matmat(Q))
    for _ in range(n_iter):
        Q = _orth(rmatmat(Q))
        Q = _orth(matmat(Q))
    B = rmatmat(Q).T                          # q x n = Q^T A
    with _lapack_threads(B.device):
        Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
    U = Q @ Ub
    return U[:, :k], S[:k], Vh[:k].T


def zscore_svd(X, mean: np.ndarray, scale: np.ndarray, k: int, seed: int = 0, n_iter: int = 12,
               oversample: int = 100, device=None, dense_limit_gb: float = 1.0):
    r"""Top-``k`` SVD of :math:`Z = (X - 1\mu^\top) D^{-1}` without forming ``Z`` (``X`` stays sparse).

    Products as in :mod:`neuroage_utils.models.svd`: :math:`Zv = X(D^{-1}v) - 1(\mu^\top D^{-1} v)`.
    A sparse ``X`` that fits densely in ``dense_limit_gb`` is densified on the device (dense products
    are several times faster than torch's sparse ones); larger ones stay CSR. The defaults (12 power
    iterations, 100 extra columns) keep every singular value of a z-scored 10,000 x 2,000 expression
    matrix within 0.4% of ARPACK's and the leading ones within 1e-6 (bench/bench_linalg.py).
    Returns numpy ``(singular_values, Vt)`` in float64, strongest first.
    """
    device = _device(device)
    dense = X.shape[0] * X.shape[1] * 4 <= dense_limit_gb * 2**30
    Xt = to_device_matrix(X, device, dense=dense)
    inv = torch.as_tensor(1.0 / np.asarray(scale, dtype=np.float64), dtype=torch.float32, device=device)
    shift = torch.as_tensor(np.asarray(mean, dtype=np.float64) / np.asarray(scale, dtype=np.float64),
                            dtype=torch.float32, device=device)

    def matmat(V):
        return _mm(Xt, inv[:, None] * V) - (shift @ V)[None, :]

    def rmatmat(U):
        return inv[:, None] * _rmatmul(Xt, U) - shift[:, None] * U.sum(dim=0)[None, :]

    _, S, V = randomized_svd(matmat, rmatmat, tuple(Xt.shape), k, seed=seed, n_iter=n_iter,
                             oversample=oversample, device=device)
    return S.double().cpu().numpy(), V.T.double().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Elastic net: FISTA on the Gram matrix, batched over folds and mixing ratios
# --------------------------------------------------------------------------------------------------


def enet_path_gram(G: torch.Tensor, c: torch.Tensor, alphas: torch.Tensor, l1_ratio: torch.Tensor,
                   max_iter: int = 5000, tol: float = 1e-6, check_every: int = 20) -> torch.Tensor:
    r"""Elastic-net coefficients along a path, for a batch of problems given by their Gram matrices.

    Minimises (scikit-learn's objective with centred data, :math:`G = X^\top X/n`,
    :math:`c = X^\top y/n`)

    .. math:: \tfrac12 w^\top G w - c^\top w + \alpha\rho\lVert w\rVert_1 + \tfrac{\alpha(1-\rho)}2\lVert w\rVert_2^2

    by FISTA with restart, warm-started from one penalty to the next (decreasing ``alphas``).

    Shapes: ``G`` (B, p, p), ``c`` (B, p), ``alphas`` (B, A) decreasing, ``l1_ratio`` (B,).
    Returns coefficients (B, A, p). A problem stops when the largest coefficient change over an
    iteration is below ``tol`` times the largest coefficient (checked every ``check_every``).
    """
    Bn, p, _ = G.shape
    lmax = torch.linalg.eigvalsh(G)[:, -1].clamp(min=_EPS)  # (B,) Lipschitz constant of the smooth part
    w = torch.zeros(Bn, p, dtype=G.dtype, device=G.device)
    out = torch.empty(Bn, alphas.shape[1], p, dtype=G.dtype, device=G.device)
    for a in range(alphas.shape[1]):
        alpha = alphas[:, a]
        l2 = alpha * (1 - l1_ratio)
        L = lmax + l2
        thresh = (alpha * l1_ratio / L)[:, None]
        z, t = w.clone(), 1.0
        for it in range(max_iter):
            grad = torch.bmm(G, z[:, :, None])[:, :, 0] - c + l2[:, None] * z
            u = z - grad / L[:, None]
            w_new = torch.sign(u) * (u.abs() - thresh).clamp(min=0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z = w_new + ((t - 1) / t_new) * (w_new - w)
            if (it + 1) % check_every == 0:
                delta = (w_new - w).abs().amax(dim=1)
                scale = w_new.abs().amax(dim=1).clamp(min=_EPS)
                if bool((delta <= tol * scale).all()):
                    w = w_new
                    break
            w, t = w_new, t_new
        out[:, a] = w
    return out


def _alpha_grid(Xc: torch.Tensor, yc: torch.Tensor, l1_ratio: float, n_alphas: int, eps: float = 1e-3) -> np.ndarray:
    """scikit-learn's grid: ``alpha_max = max|X^T y| / (n * l1_ratio)``, log-spaced down by ``eps``."""
    n = Xc.shape[0]
    alpha_max = float((Xc.T @ yc).abs().max()) / (n * max(l1_ratio, 1e-3))
    return np.logspace(math.log10(alpha_max), math.log10(alpha_max * eps), n_alphas)


def elastic_net_cv(X, y, folds, l1_ratios=(0.1, 0.5, 0.9, 1.0), n_alphas: int = 20, device=None,
                   max_iter: int = 5000, tol: float = 1e-6, dtype=torch.float64) -> dict:
    """Elastic net with the penalty and mixing chosen by CV over given folds (e.g. donor-grouped).

    ``X`` (n x p, dense or CSR, already scaled as the caller wants), ``y`` (n,), ``folds`` a list of
    ``(train_index, test_index)``. Mirrors :class:`sklearn.linear_model.ElasticNetCV` (same alpha
    grid per mixing ratio, computed on all rows; held-out MSE averaged over folds; refit on all rows
    at the chosen pair). All folds x mixing ratios run as one batch on ``device``.

    Returns dict: ``alpha_``, ``l1_ratio_``, ``coef_``, ``intercept_``, ``alphas_`` (L x A),
    ``mse_path_`` (L x A x folds).
    """
    device = _device(device)
    Xd = to_device_matrix(X, device, dtype=dtype, dense=True)
    yd = torch.as_tensor(np.asarray(y, dtype=np.float64), device=device).to(dtype)
    l1 = list(l1_ratios)
    n_folds = len(folds)
    Xm, ym = Xd.mean(0), yd.mean()
    alphas = np.stack([_alpha_grid(Xd - Xm, yd - ym, r, n_alphas) for r in l1])  # (L, A)
    Gs, cs, stats = [], [], []
    for train, _ in folds:
        tr = torch.as_tensor(np.asarray(train), device=device)
        Xt, yt = Xd.index_select(0, tr), yd.index_select(0, tr)
        mx, my = Xt.mean(0), yt.mean()
        Xc = Xt - mx
        Gs.append(Xc.T @ Xc / len(train))
        cs.append(Xc.T @ (yt - my) / len(train))
        stats.append((mx, my))
    # batch index b = l * n_folds + f
    G = torch.stack(Gs).repeat(len(l1), 1, 1)
    c = torch.stack(cs).repeat(len(l1), 1)
    alpha_b = torch.as_tensor(np.repeat(alphas, n_folds, axis=0), device=device, dtype=dtype)
    l1_b = torch.as_tensor(np.repeat(l1, n_folds), device=device, dtype=dtype)
    coefs = enet_path_gram(G, c, alpha_b, l1_b, max_iter=max_iter, tol=tol)  # (L*F, A, p)
    mse = np.empty((len(l1), n_alphas, n_folds))
    for li in range(len(l1)):
        for f, (_, test) in enumerate(folds):
            te = torch.as_tensor(np.asarray(test), device=device)
            mx, my = stats[f]
            w = coefs[li * n_folds + f]                   # (A, p)
            pred = (Xd.index_select(0, te) - mx) @ w.T + my  # (n_test, A)
            mse[li, :, f] = ((pred - yd.index_select(0, te)[:, None]) ** 2).mean(0).cpu().numpy()
    mean_mse = mse.mean(axis=2)
    li, ai = np.unravel_index(np.argmin(mean_mse), mean_mse.shape)
    Xc = Xd - Xm
    Gf = (Xc.T @ Xc / Xd.shape[0])[None]
    cf = (Xc.T @ (yd - ym) / Xd.shape[0])[None]
    path = torch.as_tensor(alphas[li, : ai + 1][None], device=device, dtype=dtype)
    w = enet_path_gram(Gf, cf, path, torch.as_tensor([l1[li]], device=device, dtype=dtype),
                       max_iter=max_iter, tol=tol)[0, -1]
    coef = w.cpu().numpy().astype(float)
    intercept = float(ym) - float(Xm.cpu().double().numpy() @ coef)
    return {"alpha_": float(alphas[li, ai]), "l1_ratio_": float(l1[li]), "coef_": coef,
            "intercept_": intercept, "alphas_": alphas, "mse_path_": mse}
