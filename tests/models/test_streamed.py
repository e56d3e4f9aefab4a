"""Streamed SVD and HALS NMF (neuroage_utils.models.streamed) against the in-memory solvers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.data.cohort import load_cohort
from neuroage_utils.data.simulate import write_simulated_h5ad
from neuroage_utils.data.stream import load_streamed
from neuroage_utils.models.streamed import fit_streamed_nmf, fit_streamed_svd, streamed_donor_scores
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
