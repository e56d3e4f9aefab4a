"""Streamed SVD and HALS NMF (neuroage_utils.models.streamed) against the in-memory solvers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.data.cohort import load_cohort
from neuroage_utils.data.simulate import write_simulated_h5ad
from neuroage_utils.data.stream import load_streamed
from neuroage_utils.models.streamed import (fit_streamed_nmf, fit_streamed_ridge, fit_streamed_svd, streamed_donor_scores,
                                           streamed_donor_summary)
from neuroage_utils.models.svd import fit_svd


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    path = tmp_path_factory.mktemp("factor") / "sim.h5ad"
    write_simulated_h5ad(path, cell_fraction=0.006, n_genes=80, seed=4, min_cells_per_donor=8)
    return load_cohort(path), load_streamed(path, block_rows=300)


@pytest.mark.parametrize("gram_genes", [10_000, 0])  # exact Gram, then the randomised subspace iteration
def test_streamed_svd_equals_arpack(both, gram_genes, one_blas_thread):
    memory, streamed = both
    train = memory.mask("train")
    expected = fit_svd(memory.normalized()[train], n_components=8, seed=0)
    got = fit_streamed_svd(streamed, train, n_components=8, gram_genes=gram_genes, n_iter=25)
    np.testing.assert_allclose(got.singular_values_, expected.singular_values_, rtol=1e-4)
    np.testing.assert_allclose(got.mean_, expected.mean_, rtol=1e-12)
    cosines = np.abs(np.sum(got.components_[:4] * expected.components_[:4], axis=1))
    assert cosines.min() > 0.999, cosines
    np.testing.assert_allclose(got.explained_variance_ratio_, expected.explained_variance_ratio_, rtol=1e-3)
    assert got.backend == ("streamed-gram" if gram_genes else "streamed-randomised")
    # the in-memory randomised solver (the chapter's on a GPU) finds the same components
    randomised = fit_svd(memory.normalized()[train], n_components=8, seed=0, backend="torch", device="cpu")
    np.testing.assert_allclose(got.singular_values_[:4], randomised.singular_values_[:4], rtol=1e-4)
    assert np.abs(np.sum(got.components_[:4] * randomised.components_[:4], axis=1)).min() > 0.999


def test_streamed_donor_scores_are_the_mean_cell_scores(both, one_blas_thread):
    memory, streamed = both
    train = memory.mask("train")
    model = fit_streamed_svd(streamed, train, n_components=5)
    table = streamed_donor_scores(model, streamed, train)
    cells = model.transform(memory.normalized()[train])
    means = pd.DataFrame(cells).groupby(memory.donors[train]).mean()
    np.testing.assert_allclose(table.to_numpy(), means.loc[table.index].to_numpy(), rtol=1e-4, atol=1e-4)


def test_streamed_nmf_follows_the_in_memory_hals(both, tmp_path, one_blas_thread):
    from neuroage_utils.models.device_linalg import nmf_hals

    memory, streamed = both
    train = memory.mask("train")
    X = memory.X[train]
    rng = np.random.default_rng(0)
    k = 6
    W0 = np.abs(rng.standard_normal((X.shape[0], k))).astype(np.float32)
    H0 = np.abs(rng.standard_normal((k, X.shape[1]))).astype(np.float32)
    expected = nmf_hals(X, k, max_iter=30, tol=0.0, init=(W0, H0), device="cpu")
    got = fit_streamed_nmf(streamed, train, k, max_iter=30, tol=0.0, init=(W0, H0), workdir=tmp_path)
    assert got["n_iter"] == 30
    assert got["reconstruction_err"] == pytest.approx(expected["reconstruction_err"], rel=5e-3)
    W = np.load(got["W_path"])
    direct = np.linalg.norm(X.toarray() - W @ got["H"])
    assert got["reconstruction_err"] == pytest.approx(direct, rel=1e-4)  # the objective from the sums is exact
    # the default random start reaches the same fit quality
    free = fit_streamed_nmf(streamed, train, k, max_iter=60, workdir=tmp_path / "free")
    assert free["reconstruction_err"] <= 1.05 * expected["reconstruction_err"]


# -- every cell's scores and the ridge on them, streamed ------------------------------------------------


def test_streamed_donor_summary_gives_the_in_memory_correlations_and_chance(both, one_blas_thread):
    from neuroage_utils.models.svd import (DonorScores, chance_best_abs_r, component_age_correlations,
                                           donor_score_chance, donor_score_correlations)

    memory, streamed = both
    model = fit_streamed_svd(streamed, memory.mask("train"), n_components=6)
    every = np.ones(streamed.n_cells, dtype=bool)
    got = streamed_donor_summary(model.transform, streamed, every)
    scores = model.transform(memory.normalized())
    expected = DonorScores.from_cells(scores, memory.ages, memory.donors)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_array_equal(got.ages, expected.ages)
    np.testing.assert_allclose(got.means, expected.means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.ss_cells, expected.ss_cells, rtol=1e-6)  # Chan's update across 5 blocks
    corr = component_age_correlations(scores, memory.ages, memory.donors)
    np.testing.assert_allclose(donor_score_correlations(got)[["r_cell", "r_donor"]], corr[["r_cell", "r_donor"]],
                               atol=1e-6)
    top = {"abs_r_cell": 0.1, "abs_r_donor": 0.3}
    chance, ref = donor_score_chance(got, 200, seed=3, observed=top), chance_best_abs_r(
        scores, memory.ages, memory.donors, 200, seed=3, observed=top)
    assert chance.keys() == ref.keys()
    for key in ("mean_cell", "q95_cell", "mean_donor", "q95_donor", "p_cell", "p_donor"):
        assert chance[key] == pytest.approx(ref[key], abs=1e-6), key
    # a subset of cells: only the donors it holds
    test = memory.mask("test")
    part = streamed_donor_summary(model.transform, streamed, test)
    assert set(part.ids) == set(memory.donors[test]) and part.counts.sum() == test.sum()


def test_streamed_ridge_is_ridgecv_on_the_same_scores(both, one_blas_thread):
    from neuroage_utils import profiles
    from neuroage_utils.models.svd import fit_component_ridge

    memory, streamed = both
    train = memory.mask("train")
    model = fit_streamed_svd(streamed, train, n_components=8)
    alphas = profiles.section_params("smoke", "svd")["ridge_alphas"]
    scores = model.transform(memory.normalized())
    expected = fit_component_ridge(scores[train], memory.ages[train], alphas)
    got = fit_streamed_ridge(model.transform, streamed, train, alphas)
    assert alphas[0] < expected.alpha_ < alphas[-1]  # the leave-one-out choice is inside the grid: it is tested
    assert got.alpha_ == expected.alpha_ and got.n_cells == train.sum()
    np.testing.assert_allclose(got.coef_, expected.coef_, rtol=1e-4, atol=1e-7)
    assert got.intercept_ == pytest.approx(expected.intercept_, rel=1e-6)
    np.testing.assert_allclose(got.predict(scores[~train]), expected.predict(scores[~train]), rtol=1e-6)
    # the leave-one-out errors of every penalty: scikit-learn's, and a refit without one cell
    from sklearn.linear_model import Ridge, RidgeCV

    stored = RidgeCV(alphas=alphas, store_cv_results=True).fit(scores[train], memory.ages[train])
    np.testing.assert_allclose(got.loo_mse_, stored.cv_results_.mean(axis=0), rtol=1e-5)
    X, y, i = scores[train].astype(float), memory.ages[train], 17
    refit = Ridge(alpha=alphas[3]).fit(np.delete(X, i, 0), np.delete(y, i))
    assert (y[i] - refit.predict(X[[i]])[0]) ** 2 == pytest.approx(stored.cv_results_[i, 3], rel=1e-6)
