"""Device linear algebra (torch) against its scikit-learn / ARPACK reference, on small data."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF
from sklearn.linear_model import ElasticNetCV, enet_path

from neuroage_utils.models import device_linalg as dl
from neuroage_utils.data.cohort import DataValidationError
from neuroage_utils.models import nmf, svd
from neuroage_utils.models.linear import grouped_folds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def low_rank_counts(n=400, m=80, k=6, seed=0):
    """Poisson counts of a rank-k non-negative product: a clear spectral gap after k."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (n, k))
    H = rng.gamma(0.5, 2.0, (k, m))
    return rng.poisson(W @ H).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# NMF
# --------------------------------------------------------------------------------------------------


def sklearn_nmf_error(X, k):
    return NMF(k, max_iter=2000, tol=1e-8, random_state=0).fit(X).reconstruction_err_


@pytest.mark.parametrize("sparse", [False, True])
def test_hals_reaches_sklearn_objective(sparse):
    X = low_rank_counts()
    reference = sklearn_nmf_error(X, 8)
    fit = dl.nmf_hals(sp.csr_matrix(X) if sparse else X, 8, max_iter=500, tol=1e-7)
    assert fit["W"].min() >= 0 and fit["H"].min() >= 0
    assert fit["W"].shape == (400, 8) and fit["H"].shape == (8, 80)
    # the reported objective is the true Frobenius error of the returned factors
    assert fit["reconstruction_err"] == pytest.approx(np.linalg.norm(X - fit["W"] @ fit["H"]), rel=1e-4)
    assert fit["reconstruction_err"] <= reference * 1.005
    # HALS is a descent method: the objective never rises between checks
    assert np.all(np.diff(fit["history"]) <= 1e-6 * fit["history"][0])


def test_hals_transform_matches_sklearn_transform():
    X = low_rank_counts(seed=1)
    model = NMF(6, max_iter=1000, random_state=0).fit(X)
    new = low_rank_counts(n=50, seed=2)
    W_ref = model.transform(new)
    W = dl.nmf_transform(new, model.components_, max_iter=500, tol=1e-10)
    err = np.linalg.norm(new - W @ model.components_)
    err_ref = np.linalg.norm(new - W_ref @ model.components_)
    assert err <= err_ref * 1.001


def test_fit_nmf_torch_backend_is_a_drop_in():
    X = sp.csr_matrix(low_rank_counts())
    ref = nmf.fit_nmf(X, n_components=6, max_iter=400)
    ours = nmf.fit_nmf(X, n_components=6, max_iter=400, backend="torch", device="cpu")
    assert ours.components_.shape == ref.components_.shape
    assert ours.reconstruction_err_ <= ref.reconstruction_err_ * 1.005
    usage = ours.transform(X[:20])
    assert usage.shape == (20, 6) and usage.min() >= 0
    with pytest.raises(DataValidationError, match="unknown backend"):
        nmf.fit_nmf(X, n_components=6, backend="cuda-magic")


# --------------------------------------------------------------------------------------------------
# Truncated SVD
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_randomised_svd_agrees_with_arpack(sparse):
    X = np.log1p(low_rank_counts(n=500, m=120, k=6))
    X = sp.csr_matrix(X) if sparse else X
    ref = svd.fit_svd(X, n_components=6)
    ours = svd.fit_svd(X, n_components=6, backend="torch", device="cpu")
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=1e-4)
    # same subspace: every principal angle between the two loading spaces is ~0
    cosines = np.linalg.svd(ours.components_ @ ref.components_.T, compute_uv=False)
    assert cosines.min() > 0.9999
    np.testing.assert_allclose(np.abs(ours.transform(X[:10])), np.abs(ref.transform(X[:10])), rtol=1e-3, atol=1e-3)
    if sparse:  # the CSR-on-device products (used above the dense limit, e.g. at paper scale)
        S, Vt = dl.zscore_svd(X, ref.mean_, ref.scale_, 6, dense_limit_gb=0)
        np.testing.assert_allclose(S, ref.singular_values_, rtol=1e-4)
        assert np.linalg.svd(Vt @ ref.components_.T, compute_uv=False).min() > 0.9999


# --------------------------------------------------------------------------------------------------
# Elastic net
# --------------------------------------------------------------------------------------------------


def regression_data(n_donors=15, per_donor=20, p=40, seed=0):
    rng = np.random.default_rng(seed)
    donors = np.repeat([f"d{i}" for i in range(n_donors)], per_donor)
    age = np.repeat(rng.uniform(20, 90, n_donors), per_donor)
    X = rng.normal(size=(len(age), p))
    X[:, :5] += (age[:, None] - 55) / 20
    return X / X.std(0), age, donors


def test_enet_path_gram_matches_sklearn_path():
    X, y, _ = regression_data()
    Xc, yc = X - X.mean(0), y - y.mean()
    n = len(y)
    for l1 in (0.5, 1.0):
        alphas, coefs, _ = enet_path(Xc, yc, l1_ratio=l1, alphas=8, tol=1e-10, max_iter=100_000)
        import torch

        G = torch.as_tensor(Xc.T @ Xc / n)[None]
        c = torch.as_tensor(Xc.T @ yc / n)[None]
        ours = dl.enet_path_gram(G, c, torch.as_tensor(alphas)[None], torch.as_tensor([l1], dtype=torch.float64),
                                 tol=1e-10, max_iter=50_000)[0].numpy()
        np.testing.assert_allclose(ours, coefs.T, atol=1e-4 * np.abs(coefs).max())


def test_elastic_net_cv_matches_sklearn_on_grouped_folds():
    X, y, donors = regression_data(seed=3)
    folds = grouped_folds(donors, 5)
    ref = ElasticNetCV(l1_ratio=[0.5, 1.0], alphas=10, cv=folds, tol=1e-8, max_iter=100_000).fit(X, y)
    ours = dl.elastic_net_cv(X, y, folds, l1_ratios=(0.5, 1.0), n_alphas=10, device="cpu", tol=1e-9,
                             max_iter=50_000)
    np.testing.assert_allclose(ours["alphas_"], np.asarray(ref.alphas_), rtol=1e-10)
    np.testing.assert_allclose(ours["mse_path_"], np.asarray(ref.mse_path_), rtol=1e-4)
    assert ours["alpha_"] == pytest.approx(ref.alpha_) and ours["l1_ratio_"] == ref.l1_ratio_
    np.testing.assert_allclose(ours["coef_"], ref.coef_, atol=1e-4 * np.abs(ref.coef_).max())
    mae_ref = np.abs(ref.predict(X) - y).mean()
    mae = np.abs(X @ ours["coef_"] + ours["intercept_"] - y).mean()
    assert mae == pytest.approx(mae_ref, rel=1e-4)
