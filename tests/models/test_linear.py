"""Elastic-net clocks: donor-grouped folds, gene selection, pseudobulk and pseudocell profiles."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import hypergeom
from sklearn.linear_model import ElasticNetCV

from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import log_normalize
from neuroage_utils.models import linear

from tests.conftest import age_counts


def simulate(**kwargs):
    """Counts with planted age genes of either direction (see ``conftest.age_counts``)."""
    return age_counts(**kwargs)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def cohort():
    return simulate()


@pytest.fixture(scope="module")
def cell_clock(cohort):
    X, ages, donors, _ = cohort
    return linear.fit_elastic_net(log_normalize(X), ages, donors, seed=0)


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 3])
def test_grouped_folds_never_put_a_donor_in_two_folds(seed):
    _, _, donors, _ = simulate(n_donors=13, cells=6, n_genes=5, uneven=True)
    folds = linear.grouped_folds(donors, n_splits=5, seed=seed)
    assert len(folds) == 5
    seen_in_test = []
    for train, test in folds:
        assert len(test) > 0
        assert set(donors[train]).isdisjoint(donors[test])
        assert len(train) + len(test) == len(donors)
        seen_in_test.extend(np.unique(donors[test]))
    # every donor is held out exactly once, and every row is tested exactly once
    assert sorted(seen_in_test) == sorted(np.unique(donors))
    assert np.array_equal(np.sort(np.concatenate([t for _, t in folds])), np.arange(len(donors)))


def test_grouped_folds_seed_changes_assignment_reproducibly():
    _, _, donors, _ = simulate(n_donors=20, cells=3, n_genes=5)
    first = [tuple(np.unique(donors[t])) for _, t in linear.grouped_folds(donors, 4, seed=1)]
    again = [tuple(np.unique(donors[t])) for _, t in linear.grouped_folds(donors, 4, seed=1)]
    other = [tuple(np.unique(donors[t])) for _, t in linear.grouped_folds(donors, 4, seed=2)]
    assert first == again
    assert first != other


def test_grouped_folds_with_fewer_donors_than_folds_is_a_clear_error():
    with pytest.raises(DataValidationError, match="3 donor.*5 donor-grouped folds.*lower n_splits"):
        linear.grouped_folds(["a", "a", "b", "c"], n_splits=5)
    with pytest.raises(DataValidationError, match="at least 2 folds"):
        linear.grouped_folds(["a", "b", "c"], n_splits=1)


# --------------------------------------------------------------------------------------------------
# Cell-level clock
# --------------------------------------------------------------------------------------------------


def _precision(selected, true_genes):
    return len(set(selected) & set(true_genes)) / len(selected)


def test_elastic_net_selects_the_planted_age_genes_far_above_chance(cell_clock, cohort):
    X, _, _, true_genes = cohort
    n_genes = X.shape[1]
    selected = np.flatnonzero(cell_clock.coef_)
    k = len(selected)
    assert 0 < k < n_genes

    # Bound: the 99.9th percentile of the overlap a random selection of k genes would reach.
    chance = hypergeom(M=n_genes, n=len(true_genes), N=k)
    bound = chance.ppf(0.999) / k
    precision = _precision(selected, true_genes)
    assert precision > bound, (precision, bound, k)

    # ...and a random selection of the same size does not clear it.
    random_pick = np.random.default_rng(0).choice(n_genes, size=k, replace=False)
    assert _precision(random_pick, true_genes) <= bound

    # The strongest coefficients are the planted genes.
    top = cell_clock.coef_table().head(len(true_genes))["gene"].astype(int)
    assert _precision(top, true_genes) >= 0.8


def test_predict_folds_scaling_into_coefficients(cell_clock, cohort):
    X, _, _, _ = cohort
    L = log_normalize(X)
    via_model = cell_clock.model.predict(L.toarray() / cell_clock.scale_)
    np.testing.assert_allclose(cell_clock.predict(L), via_model, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cell_clock.predict(L.toarray()), via_model, rtol=1e-5, atol=1e-4)


def test_sparse_and_dense_input_fit_the_same_clock(cohort, cell_clock):
    X, ages, donors, _ = cohort
    dense = linear.fit_elastic_net(log_normalize(X).toarray(), ages, donors, seed=0)
    assert dense.alpha_ == pytest.approx(cell_clock.alpha_, rel=1e-3)  # float32 scale statistics
    assert dense.l1_ratio_ == cell_clock.l1_ratio_
    np.testing.assert_allclose(dense.coef_, cell_clock.coef_, atol=1e-3)


def test_float32_fit_matches_a_float64_scikit_learn_fit():
    # this cohort's float32 Gram matrix fails scikit-learn's own per-fold re-check (rounding only)
    X, ages, donors, _ = simulate(n_donors=20, cells=20, n_genes=60, uneven=True, seed=1)
    L = log_normalize(X)
    clock = linear.fit_elastic_net(L, ages, donors, l1_ratios=(0.5, 1.0), n_alphas=5, seed=0)
    reference = ElasticNetCV(l1_ratio=[0.5, 1.0], alphas=5, cv=linear.grouped_folds(donors, 5, seed=0))
    reference.fit(L.toarray().astype(np.float64) / clock.scale_, ages)
    assert clock.alpha_ == pytest.approx(reference.alpha_, rel=1e-4)
    assert clock.l1_ratio_ == reference.l1_ratio_
    np.testing.assert_allclose(clock.coef_, reference.coef_, atol=1e-4)
    np.testing.assert_allclose(clock.model.mse_path_, reference.mse_path_, rtol=1e-3)


def test_sparse_solver_above_the_dense_limit_gives_the_same_clock():
    X, ages, donors, _ = simulate(n_donors=10, cells=15, n_genes=30, seed=4)
    L = log_normalize(X)
    dense = linear.fit_elastic_net(L, ages, donors, l1_ratios=(0.9,), n_alphas=5, max_iter=5000)
    with pytest.warns(UserWarning, match="sparse coordinate descent is slow"):
        sparse = linear.fit_elastic_net(
            L, ages, donors, l1_ratios=(0.9,), n_alphas=5, max_iter=5000, dense_limit_gb=0
        )
    assert sparse.alpha_ == pytest.approx(dense.alpha_, rel=1e-4)
    np.testing.assert_allclose(sparse.coef_, dense.coef_, atol=1e-2)


def test_coef_table_and_cv_path(cell_clock):
    names = [f"gene{i}" for i in range(cell_clock.n_features_in_)]
    table = cell_clock.coef_table(names)
    assert len(table) == cell_clock.n_nonzero_
    assert (np.diff(table["coef"].abs().to_numpy()) <= 0).all()
    assert table["gene"].iloc[0] == names[int(np.argmax(np.abs(cell_clock.coef_)))]
    assert len(cell_clock.coef_table(names, nonzero_only=False)) == len(names)
    with pytest.raises(DataValidationError, match="gene names"):
        cell_clock.coef_table(names[:-1])

    path = cell_clock.cv_path()
    assert len(path) == 4 * 20
    assert set(path["l1_ratio"]) == {0.1, 0.5, 0.9, 1.0}
    chosen = path[path["selected"]]
    assert len(chosen) == 1
    assert chosen["alpha"].iloc[0] == pytest.approx(cell_clock.alpha_)
    # the selected point is the CV minimum
    assert chosen["mse_mean"].iloc[0] == pytest.approx(path["mse_mean"].min())


def test_balanced_weights_are_neutral_when_donors_are_equal(cohort, cell_clock):
    X, ages, donors, _ = cohort  # 30 cells per donor: 1/n_cells weights are all equal
    balanced = linear.fit_elastic_net(log_normalize(X), ages, donors, seed=0, balance_donors=True)
    assert balanced.alpha_ == pytest.approx(cell_clock.alpha_)
    np.testing.assert_allclose(balanced.coef_, cell_clock.coef_, atol=1e-3)


def test_balanced_weights_change_the_fit_when_donors_are_unequal():
    X, ages, donors, _ = simulate(n_donors=20, cells=20, n_genes=60, uneven=True, seed=1)
    L = log_normalize(X)
    plain = linear.fit_elastic_net(L, ages, donors, l1_ratios=(0.5,), n_alphas=5)
    balanced = linear.fit_elastic_net(L, ages, donors, l1_ratios=(0.5,), n_alphas=5, balance_donors=True)
    assert not np.allclose(plain.coef_, balanced.coef_)


def test_fit_rejects_mismatched_or_broken_input(cohort):
    X, ages, donors, _ = cohort
    with pytest.raises(DataValidationError, match="one age per cell"):
        linear.fit_elastic_net(X, ages[:-1], donors)
    bad = X.toarray()
    bad[0, 0] = np.nan
    with pytest.raises(DataValidationError, match="NaN"):
        linear.fit_elastic_net(bad, ages, donors)
    two_ages = ages.copy()
    two_ages[0] += 1
    with pytest.raises(DataValidationError, match="more than one age"):
        linear.fit_elastic_net(X, two_ages, donors)


def test_predict_rejects_other_genes(cell_clock, cohort):
    X, _, _, _ = cohort
    with pytest.raises(DataValidationError, match="same genes"):
        cell_clock.predict(X[:, :-1])


# --------------------------------------------------------------------------------------------------
# Pseudobulk and pseudocells
# --------------------------------------------------------------------------------------------------


def test_pseudobulk_sums_match_per_donor_sums():
    X, _, donors, _ = simulate(n_donors=6, cells=5, n_genes=12, uneven=True)
    sums, ids = linear.pseudobulk(X, donors, normalise=None)
    dense = X.toarray().astype(float)
    assert list(ids) == sorted(set(donors))
    expected = np.stack([dense[donors == d].sum(axis=0) for d in ids])
    np.testing.assert_array_equal(sums.toarray(), expected)

    # dense input gives the same, as an array
    dense_sums, dense_ids = linear.pseudobulk(dense, donors, normalise=None)
    assert isinstance(dense_sums, np.ndarray)
    np.testing.assert_array_equal(dense_sums, expected)
    assert list(dense_ids) == list(ids)

    # log-CPM: log1p of counts per million of each donor's summed library
    log_cpm, _ = linear.pseudobulk(X, donors)
    np.testing.assert_allclose(
        log_cpm.toarray(), np.log1p(expected / expected.sum(axis=1, keepdims=True) * 1e6), rtol=1e-6
    )
    cpm, _ = linear.pseudobulk(dense, donors, normalise="cpm")
    np.testing.assert_allclose(cpm.sum(axis=1), 1e6)


def test_pseudobulk_refuses_values_that_are_not_counts():
    X, _, donors, _ = simulate(n_donors=6, cells=5, n_genes=12)
    with pytest.raises(DataValidationError, match="raw UMI counts"):
        linear.pseudobulk(log_normalize(X), donors)
    with pytest.raises(DataValidationError, match="raw UMI counts"):
        linear.pseudobulk(X.toarray() - 1.0, donors)
    with pytest.raises(DataValidationError, match="unknown normalise"):
        linear.pseudobulk(X, donors, normalise="tpm")


def test_pseudocells_sum_the_right_number_of_cells_of_their_own_donor():
    n_donors, cells = 5, 4
    donors = np.repeat([f"d{i}" for i in range(n_donors)], cells)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(donors))  # cells of a donor need not be contiguous
    donors = donors[order]
    donor_index = np.array([int(d[1:]) for d in donors])
    # gene 0 marks the donor (value donor index + 1), gene 1 counts cells, gene 2 is noise
    X = np.column_stack([donor_index + 1, np.ones(len(donors)), rng.poisson(3, len(donors))])
    X = X.astype(np.float32)

    k, n = 7, 9  # more cells per pseudocell than the donor has: drawn with replacement
    profiles, owners = linear.pseudocells(sp.csr_matrix(X), donors, k, n, seed=0, normalise=None)
    profiles = profiles.toarray()
    assert profiles.shape == (n_donors * n, 3)
    assert list(owners) == list(np.repeat([f"d{i}" for i in range(n_donors)], n))
    np.testing.assert_array_equal(profiles[:, 1], k)
    owner_index = np.array([int(d[1:]) for d in owners])
    np.testing.assert_array_equal(profiles[:, 0], k * (owner_index + 1))

    same, _ = linear.pseudocells(X, donors, k, n, seed=0, normalise=None)
    np.testing.assert_array_equal(same, profiles)
    other, _ = linear.pseudocells(X, donors, k, n, seed=1, normalise=None)
    assert not np.array_equal(other[:, 2], profiles[:, 2])

    with pytest.raises(DataValidationError, match="fewer than cells_per_pseudocell"):
        linear.pseudocells(X, donors, k, n, replace=False)
    without, _ = linear.pseudocells(X, donors, 3, n, replace=False, normalise=None)
    np.testing.assert_array_equal(without[:, 1], 3)


def _split_donors(donors, n_test, seed=0):
    ids = np.unique(donors)
    test = np.random.default_rng(seed).choice(ids, n_test, replace=False)
    return ~np.isin(donors, test), np.isin(donors, test)


def test_every_clock_beats_the_null_model_on_held_out_donors():
    X, ages, donors, _ = simulate(n_donors=40, cells=20, n_genes=100, uneven=True, seed=2)
    train, test = _split_donors(donors, 10)
    truth = pd.Series(ages[test], index=donors[test]).groupby(level=0).first()
    train_ages = pd.Series(ages[train], index=donors[train]).groupby(level=0).first()
    null_mae = np.abs(truth - train_ages.mean()).mean()

    L = log_normalize(X)
    clocks = {
        "cell": (linear.fit_elastic_net(L[train], ages[train], donors[train]), L),
        "pseudobulk": (linear.fit_pseudobulk_elastic_net(X[train], ages[train], donors[train]), X),
        "pseudocell": (
            linear.fit_pseudocell_elastic_net(X[train], ages[train], donors[train], n_per_donor=20),
            X,
        ),
    }
    for name, (clock, features) in clocks.items():
        pred = clock.predict_donors(features[test], donors[test])
        assert isinstance(pred, pd.Series) and pred.name == "predicted"
        assert list(pred.index) == list(truth.index)
        mae = np.abs(pred - truth).mean()
        assert mae < 0.5 * null_mae, (name, mae, null_mae)


def test_pseudobulk_clock_predicts_from_profiles_and_cells_alike():
    X, ages, donors, _ = simulate(n_donors=20, cells=10, n_genes=50, seed=3)
    clock = linear.fit_pseudobulk_elastic_net(X, ages, donors, n_alphas=5)
    profiles, ids = linear.pseudobulk(X, donors)
    np.testing.assert_allclose(clock.predict(profiles), clock.predict_donors(X, donors).loc[ids].to_numpy())
    # the CV ran over donors: one row per donor in every fold
    assert sum(len(test) for _, test in clock.model.cv) == 20
