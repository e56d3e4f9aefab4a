"""SVD and NMF factorisations: exactness of the sparse SVD, age correlations, NMF input checks."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA

from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import log_normalize
from neuroage_utils.models import nmf, svd

from tests.conftest import age_counts


def simulate(**kwargs):
    """Counts whose planted age genes all rise with age (see ``conftest.age_counts``)."""
    return age_counts(same_direction=True, **kwargs)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def cohort():
    return simulate()


# --------------------------------------------------------------------------------------------------
# Correlation table
# --------------------------------------------------------------------------------------------------


def test_component_age_correlations_on_known_columns():
    donors = np.repeat(["a", "b", "c", "d"], [1, 2, 3, 4])
    ages = np.repeat([30.0, 50.0, 40.0, 80.0], [1, 2, 3, 4])
    rng = np.random.default_rng(0)
    noise = rng.normal(size=len(ages))
    scores = np.column_stack([ages, -2 * ages + 1, np.full(len(ages), 3.0), noise])
    table = svd.component_age_correlations(scores, ages, donors)
    assert list(table.columns) == ["component", "r_cell", "r_donor"]
    assert list(table["component"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(table["r_cell"].iloc[:2], [1.0, -1.0])
    np.testing.assert_allclose(table["r_donor"].iloc[:2], [1.0, -1.0])
    assert np.isnan(table["r_cell"].iloc[2]) and np.isnan(table["r_donor"].iloc[2])
    # the donor-level r uses each donor's mean score, each donor once
    means = [noise[donors == d].mean() for d in "abcd"]
    assert table["r_donor"].iloc[3] == pytest.approx(np.corrcoef(means, [30, 50, 40, 80])[0, 1])
    assert table["r_cell"].iloc[3] == pytest.approx(np.corrcoef(noise, ages)[0, 1])
    # the same table from per-donor sums (what a streamed pass over every cell keeps), NaN where constant
    summary = svd.DonorScores.from_cells(scores, ages, donors)
    assert list(summary.ids) == list("abcd") and list(summary.counts) == [1, 2, 3, 4]
    from_sums = svd.donor_score_correlations(summary)
    assert list(from_sums.columns) == ["component", "r_cell", "r_donor"]
    np.testing.assert_allclose(from_sums[["r_cell", "r_donor"]], table[["r_cell", "r_donor"]], atol=1e-12)

    with pytest.raises(DataValidationError, match="one age and donor per cell"):
        svd.component_age_correlations(scores, ages[:-1], donors)
    bad = ages.copy()
    bad[1] = 51.0
    with pytest.raises(DataValidationError, match="more than one age"):
        svd.component_age_correlations(scores, bad, donors)


# --------------------------------------------------------------------------------------------------
# SVD
# --------------------------------------------------------------------------------------------------


def test_svd_table_has_one_row_per_component_and_finds_the_age_component(cohort):
    X, ages, donors, true_genes = cohort
    L = log_normalize(X)
    model = svd.fit_svd(L, n_components=10, seed=0)
    scores = model.transform(L)
    assert scores.shape == (X.shape[0], 10)
    table = svd.component_age_correlations(scores, ages, donors)
    assert table.shape == (10, 3)
    best = int(table["r_donor"].abs().idxmax())
    assert abs(table.loc[best, "r_donor"]) > 0.9
    assert abs(table.loc[best, "r_cell"]) > 0.5
    # the planted component loads on the age genes
    top = svd.top_loadings(model.components_, np.arange(X.shape[1]).astype(str), n_top=10)
    top_genes = top[top["component"] == best]["gene"].astype(int)
    assert len(set(top_genes) & set(true_genes)) >= 8
    # the other components carry no age signal (noise): their donor-level r stays small on average
    assert table.drop(index=best)["r_donor"].abs().median() < 0.4


def test_sparse_svd_is_the_exact_pca_of_z_scored_data(cohort):
    X, _, _, _ = cohort
    L = log_normalize(X)
    model = svd.fit_svd(L, n_components=5, seed=0)
    dense = L.toarray().astype(float)
    z = (dense - dense.mean(axis=0)) / dense.std(axis=0)
    reference = PCA(n_components=5, svd_solver="full").fit(z)
    np.testing.assert_allclose(
        model.explained_variance_ratio_, reference.explained_variance_ratio_, rtol=1e-3
    )
    ours, theirs = model.transform(L), reference.transform(z)
    signs = np.sign((ours * theirs).sum(axis=0))  # components are defined up to sign
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-2 * np.abs(theirs).max())
    # dense float64 input gives the same factorisation (sparse float32 above: float32 tolerance)
    dense_scores = svd.fit_svd(dense, n_components=5, seed=0).transform(dense)
    dense_signs = np.sign((dense_scores * theirs).sum(axis=0))
    np.testing.assert_allclose(dense_scores * dense_signs, theirs, atol=1e-6 * np.abs(theirs).max())


def test_svd_checks_its_inputs(cohort):
    X, _, _, _ = cohort
    small = log_normalize(X[:8, :20])
    with pytest.raises(DataValidationError, match="lower n_components"):
        svd.fit_svd(small, n_components=8)
    model = svd.fit_svd(small, n_components=3)
    with pytest.raises(DataValidationError, match="same genes"):
        model.transform(small[:, :-1])
    with pytest.raises(DataValidationError, match="gene names"):
        svd.top_loadings(model.components_, ["g"] * 19)


# --------------------------------------------------------------------------------------------------
# NMF
# --------------------------------------------------------------------------------------------------


def test_nmf_refuses_negative_input_with_a_one_line_fix(cohort):
    X, _, _, _ = cohort
    dense = log_normalize(X).toarray()
    z_scores = (dense - dense.mean(axis=0)) / dense.std(axis=0)
    with pytest.raises(DataValidationError) as info:
        nmf.fit_nmf(z_scores, n_components=3)
    message = str(info.value)
    assert "NMF needs non-negative input" in message
    assert "pass raw counts or log-normalised counts, not z-scores" in message
    assert "\n" not in message
    with pytest.raises(DataValidationError, match="non-negative"):
        nmf.fit_nmf(sp.csr_matrix(z_scores), n_components=3)
    with pytest.raises(DataValidationError, match="NaN"):
        nmf.fit_nmf(np.full((5, 4), np.nan), n_components=2)
    with pytest.raises(DataValidationError, match="unknown NMF transform"):
        nmf.fit_nmf(dense, n_components=2, transform="sqrt")
    with pytest.raises(DataValidationError, match="lower n_components"):
        nmf.fit_nmf(dense[:4], n_components=5)
    # transform of new data is checked the same way
    model = nmf.fit_nmf(dense, n_components=2, max_iter=20)
    with pytest.raises(DataValidationError, match="NMF needs non-negative input"):
        model.transform(z_scores)


@pytest.mark.parametrize("transform", ["raw", "log1p"])
def test_nmf_factors_are_non_negative_and_one_tracks_age(cohort, transform):
    X, ages, donors, true_genes = cohort
    model = nmf.fit_nmf(X, n_components=6, seed=0, max_iter=300, transform=transform)
    usages = model.transform(X)
    assert model.input_transform == transform
    assert usages.shape == (X.shape[0], 6)
    assert (usages >= 0).all() and (model.components_ >= 0).all()
    table = nmf.factor_age_correlations(usages, ages, donors)
    assert table.shape == (6, 3)
    best = int(table["r_donor"].abs().idxmax())
    assert abs(table.loc[best, "r_donor"]) > 0.8
    # that factor's programme is made of the age genes
    programme = model.components_[best]
    assert len(set(np.argsort(-programme)[:10]) & set(true_genes)) >= 6


def test_nmf_sparse_solver_path_matches_dense(cohort):
    X, _, _, _ = cohort
    small = X[:300]
    dense_fit = nmf.fit_nmf(small, n_components=4, seed=0, max_iter=50, transform="log1p")
    sparse_fit = nmf.fit_nmf(small, n_components=4, seed=0, max_iter=50, transform="log1p", dense_limit_gb=0)
    np.testing.assert_allclose(sparse_fit.components_, dense_fit.components_, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sparse_fit.transform(small), dense_fit.transform(small), rtol=1e-2, atol=1e-3)
