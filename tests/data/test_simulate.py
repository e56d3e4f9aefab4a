"""Tests of the simulated cohort (neuroage_utils.data.simulate): tiny sizes, seconds in total."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from neuroage_utils.data import simulate as sim
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.simulate import N_GENES_FULL, age_shape, load_paper_cohort, simulate_cohort

TINY = dict(cell_fraction=0.01, n_genes=300, min_cells_per_donor=10)


@pytest.fixture(scope="module")
def tiny():
    return simulate_cohort(seed=0, **TINY)


@pytest.fixture(scope="module")
def mid():
    """Enough genes and cells for the age signal to be measurable (~2k cells x 2k genes)."""
    return simulate_cohort(cell_fraction=0.01, n_genes=2000, seed=0, min_cells_per_donor=20)


@pytest.fixture(scope="module")
def full_genes():
    """All 17,658 genes on a few cells per donor: sparsity and depth of the full transcriptome."""
    return simulate_cohort(cell_fraction=0.002, n_genes=N_GENES_FULL, seed=0, min_cells_per_donor=4)


def _same(a, b) -> bool:
    return (
        a.X.shape == b.X.shape
        and np.array_equal(a.X.indptr, b.X.indptr)
        and np.array_equal(a.X.indices, b.X.indices)
        and np.array_equal(a.X.data, b.X.data)
    )


def _pseudobulk_log(adata) -> tuple[pd.Index, np.ndarray]:
    """Donors and log(CPM + 1) of summed counts per donor."""
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    names, inv = np.unique(donors, return_inverse=True)
    indicator = sp.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(names), len(inv)))
    summed = np.asarray((indicator @ adata.X).todense())
    return pd.Index(names), np.log1p(summed / summed.sum(axis=1, keepdims=True) * 1e6)


# -- the study's donors ---------------------------------------------------------------------------


def test_paper_cohort_is_the_study_cohort():
    cohort = load_paper_cohort()
    assert len(cohort) == 69
    assert cohort["n_cells"].sum() == 189_423
    assert cohort["split"].value_counts().to_dict() == {"train": 49, "test": 11, "val": 9}
    assert cohort["donor_id"].map(type).eq(str).all()
    assert cohort["age"].min() == 24 and cohort["age"].max() == 94
    assert set(cohort["sex"]) == {"female", "male"}


# -- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_data_different_seed_different_data(tiny):
    again = simulate_cohort(seed=0, **TINY)
    assert _same(tiny, again)
    pd.testing.assert_frame_equal(tiny.obs, again.obs)
    pd.testing.assert_frame_equal(tiny.var, again.var)
    other = simulate_cohort(seed=1, **TINY)
    assert not _same(tiny, other)
    assert not np.allclose(tiny.uns["simulation"]["donors"]["biological_age"], other.uns["simulation"]["donors"]["biological_age"])


def test_chunking_and_threads_do_not_change_the_matrix(tiny):
    rechunked = simulate_cohort(seed=0, chunk_cells=100, n_threads=2, **TINY)
    single = simulate_cohort(seed=0, chunk_cells=10_000, n_threads=1, **TINY)
    assert _same(tiny, rechunked) and _same(tiny, single)


def test_gene_truth_does_not_depend_on_gene_count_or_cell_fraction(tiny, mid):
    # The 300 most expressed genes are among the 2,000 most expressed, with the same truth.
    assert set(tiny.var_names) <= set(mid.var_names)
    cols = ["age_effect", "age_pattern", "age_subtype", "dispersion"]
    pd.testing.assert_frame_equal(tiny.var[cols], mid.var.loc[tiny.var_names, cols])
    bio_tiny = tiny.uns["simulation"]["donors"]["biological_age"]
    assert np.allclose(bio_tiny, mid.uns["simulation"]["donors"]["biological_age"])
    # Kept genes are the most expressed: mean expression of kept genes beats the dropped ones.
    dropped = mid.var.drop(index=tiny.var_names)
    assert tiny.var["mean_expression"].median() > 3 * dropped["mean_expression"].median()


# -- the matrix -----------------------------------------------------------------------------------


def test_counts_are_sparse_non_negative_integers(tiny):
    X = tiny.X
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32
    assert X.indices.dtype == np.int32
    assert (X.data > 0).all(), "no explicit zeros, no negatives"
    assert np.array_equal(X.data, np.round(X.data))
    assert X.has_sorted_indices
    assert np.array_equal(np.asarray(X.sum(axis=1)).ravel(), tiny.obs["n_counts"].to_numpy())


def test_full_transcriptome_is_as_sparse_and_deep_as_10x_neurons(full_genes):
    X = full_genes.X
    zeros = 1 - X.nnz / (X.shape[0] * X.shape[1])
    assert 0.85 < zeros < 0.95
    median_umis = np.median(full_genes.obs["n_counts"])
    assert 2500 < median_umis < 6000
    assert full_genes.var["age_gene"].mean() == pytest.approx(full_genes.uns["simulation"]["parameters"]["age_gene_fraction"], abs=0.002)
    # Heavy-tailed gene means: the top 1% of genes carry a large share of the UMIs.
    means = np.sort(full_genes.var["mean_expression"].to_numpy())[::-1]
    assert means[: N_GENES_FULL // 100].sum() / means.sum() > 0.15


def test_gene_subset_keeps_its_share_of_the_library(mid, full_genes):
    share = mid.uns["simulation"]["kept_umi_share"]
    assert 0.4 < share < 0.95
    ratio = np.median(mid.obs["n_counts"]) / np.median(full_genes.obs["n_counts"])
    assert ratio == pytest.approx(share, rel=0.2)


def test_counts_follow_the_negative_binomial():
    """The sampler (zero test + inverse CDF, gamma-Poisson for large means) matches scipy's NB pmf."""
    rng = np.random.default_rng(3)
    n = 200_000
    for mu, theta in [(0.05, 4.0), (0.8, 0.5), (3.0, 2.0), (12.0, 5.0)]:
        mu_a, th_a = np.full(n, mu, np.float32), np.full(n, theta, np.float32)
        p0 = np.exp(-th_a * np.log(1 + mu_a / th_a))
        u = rng.random(n, dtype=np.float32)
        nz = u > p0
        counts = np.zeros(n)
        if mu > sim._LARGE_MEAN:
            counts[nz] = sim._nb_positive_draw(rng, mu_a[nz].astype(float), th_a[nz].astype(float))
        else:
            counts[nz] = sim._nb_positive_quantile(u[nz], p0[nz], mu_a[nz], th_a[nz])
        ref = stats.nbinom(theta, theta / (theta + mu))
        ks = np.arange(int(ref.ppf(0.99)) + 1)
        observed = np.bincount(counts.astype(int), minlength=len(ks))[: len(ks)] / n
        se = np.sqrt(ref.pmf(ks) * (1 - ref.pmf(ks)) / n)
        assert np.all(np.abs(observed - ref.pmf(ks)) < 5 * se + 1e-4), (mu, theta)
        assert counts.mean() == pytest.approx(mu, rel=0.03)


# -- cohort structure -----------------------------------------------------------------------------


def test_cells_per_donor_and_split_follow_the_cohort(tiny):
    cohort = load_paper_cohort().set_index("donor_id")
    expected = np.maximum(TINY["min_cells_per_donor"], np.floor(cohort["n_cells"] * TINY["cell_fraction"] + 0.5)).astype(int)
    observed = tiny.obs["donor_id"].astype(str).value_counts()
    assert observed.loc[cohort.index].to_numpy().tolist() == expected.to_numpy().tolist()
    per_donor = tiny.obs.groupby("donor_id", observed=True)[["split", "sex", "age"]].first()
    per_donor.index = per_donor.index.astype(str)
    assert (per_donor["split"].astype(str) == cohort.loc[per_donor.index, "split"]).all()
    assert (per_donor["sex"].astype(str) == cohort.loc[per_donor.index, "sex"]).all()
    assert np.allclose(per_donor["age"], cohort.loc[per_donor.index, "age"])
    assert tiny.obs_names.is_unique


def test_cell_types_are_neuron_subtypes_with_realistic_shares(mid):
    shares = mid.obs["cell_type"].value_counts(normalize=True)
    names = [n for n, *_ in sim.CELL_TYPES]
    assert set(shares.index) == set(names)
    excitatory = shares[[n for n, c, *_ in sim.CELL_TYPES if c == "excitatory"]].sum()
    assert 0.5 < excitatory < 0.8
    # Composition varies by donor.
    per_donor = pd.crosstab(mid.obs["donor_id"], mid.obs["cell_type"], normalize="index")
    assert per_donor["Ex-L2/3"].std() > 0.03


def test_ground_truth_columns(full_genes):
    var = full_genes.var
    assert {"mean_expression", "age_effect", "age_gene", "age_pattern", "age_subtype"} <= set(var.columns)
    assert set(var["age_pattern"]) == {"none", *sim.AGE_PATTERNS}
    assert (var.loc[~var["age_gene"], "age_effect"] == 0).all()
    assert (var.loc[var["age_gene"], "age_effect"] != 0).all()
    assert (var.loc[~var["age_gene"], "age_pattern"] == "none").all()
    assert set(var.loc[var["age_gene"], "age_subtype"]) <= {"all", *(n for n, *_ in sim.CELL_TYPES)}
    assert (var.loc[var["age_gene"], "age_subtype"] == "all").mean() > 0.5
    assert not any("age" in name.lower() for name in var_names_of(full_genes))


def var_names_of(adata):
    return list(map(str, adata.var_names))


def test_age_shapes():
    for pattern in sim.AGE_PATTERNS:
        assert age_shape(pattern, 25.0) == pytest.approx(0.0)
        assert age_shape(pattern, 95.0) == pytest.approx(1.0)
    assert age_shape("late_onset", 55.0) == 0.0
    assert age_shape("plateau", 50.0) > 0.8
    assert age_shape("linear", 60.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        age_shape("quadratic", 50.0)


# -- the age signal -------------------------------------------------------------------------------


def test_age_genes_track_age_and_null_genes_do_not(mid):
    donors, logexpr = _pseudobulk_log(mid)
    truth = pd.DataFrame(mid.uns["simulation"]["donors"]).set_index("donor_id").loc[donors]
    age = truth["age"].to_numpy()
    var = mid.var
    expressed = var["mean_expression"].to_numpy() > 0.2
    r = np.array([stats.pearsonr(logexpr[:, g], age)[0] for g in range(logexpr.shape[1])])
    linear = (var["age_pattern"] == "linear").to_numpy() & (var["age_subtype"] == "all").to_numpy() & expressed
    null = ~var["age_gene"].to_numpy() & expressed & (var["sex_effect"] == 0).to_numpy()
    assert linear.sum() >= 5
    signed = r[linear] * np.sign(var["age_effect"].to_numpy()[linear])
    assert np.median(signed) > 0.25  # chronological age: diluted by the biological-age offset
    assert np.mean(np.abs(r[linear])) > 2.5 * np.mean(np.abs(r[null]))


def test_age_effect_is_the_log_fold_change_per_decade(mid):
    """Per-decade slopes of pseudobulk log expression on biological age recover ``age_effect``."""
    donors, logexpr = _pseudobulk_log(mid)
    bio = pd.DataFrame(mid.uns["simulation"]["donors"]).set_index("donor_id").loc[donors, "biological_age"].to_numpy()
    var = mid.var
    genes = (var["age_pattern"] == "linear").to_numpy() & (var["age_subtype"] == "all").to_numpy()
    genes &= var["mean_expression"].to_numpy() > 0.2
    decades = (bio - bio.mean()) / 10.0
    slopes = (decades @ (logexpr[:, genes] - logexpr[:, genes].mean(axis=0))) / (decades @ decades)
    true = var["age_effect"].to_numpy()[genes]
    assert np.corrcoef(slopes, true)[0, 1] > 0.8
    fit = np.polyfit(true, slopes, 1)[0]
    assert 0.75 < fit < 1.25


def test_oracle_is_recorded_and_matches_the_biological_ages(tiny):
    uns = tiny.uns
    assert uns["oracle_donor_mae"] > 0
    assert "biological age" in uns["oracle_definition"]
    donors = pd.DataFrame(uns["simulation"]["donors"])
    test = donors["split"] == "test"
    expected = np.mean(np.abs(donors.loc[test, "biological_age"] - donors.loc[test, "age"]))
    assert uns["oracle_donor_mae"] == pytest.approx(expected)
    sd = uns["simulation"]["parameters"]["biological_age_sd"]
    # The mean |offset| over all 69 donors is near sd * sqrt(2 / pi).
    assert uns["oracle_donor_mae_by_split"]["all"] == pytest.approx(sd * np.sqrt(2 / np.pi), rel=0.35)


def test_uns_records_the_run_and_survives_h5ad(tiny, tmp_path):
    import anndata as ad

    run = tiny.uns["simulation"]
    assert run["seed"] == 0 and run["n_genes"] == 300 and run["cell_fraction"] == 0.01
    assert run["parameters"]["biological_age_sd"] == sim.DEFAULT_PARAMETERS.biological_age_sd
    path = tmp_path / "sim.h5ad"
    tiny.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert _same(tiny, back)
    assert back.uns["oracle_donor_mae"] == pytest.approx(tiny.uns["oracle_donor_mae"])
    assert back.uns["simulation"]["parameters"]["age_pattern_weights"]["linear"] == pytest.approx(0.5)
    assert list(back.obs["donor_id"].astype(str)) == list(tiny.obs["donor_id"].astype(str))


# -- other cohorts and bad input ------------------------------------------------------------------


def test_custom_donor_table_without_sex_or_split():
    donors = pd.DataFrame({"donor_id": [1, 2, 3], "age": [30, 60, 90], "n_cells": [40, 50, 60]})
    adata = simulate_cohort(cell_fraction=1.0, n_genes=200, donors=donors, min_cells_per_donor=0)
    assert adata.n_obs == 150
    assert set(adata.obs["donor_id"].astype(str)) == {"1", "2", "3"}
    assert set(adata.obs["split"].astype(str)) == {"unassigned"}
    assert set(adata.obs["sex"].astype(str)) <= {"female", "male"}
    assert adata.uns["oracle_donor_mae"] > 0 and "all donors" in adata.uns["oracle_definition"]


@pytest.mark.parametrize(
    "table, fragment",
    [
        (pd.DataFrame({"donor_id": ["a"], "age": [50]}), "n_cells"),
        (pd.DataFrame({"donor_id": ["a", "a"], "age": [50, 60], "n_cells": [10, 10]}), "twice"),
        (pd.DataFrame({"donor_id": ["a"], "age": [-1], "n_cells": [10]}), "age"),
        (pd.DataFrame({"donor_id": ["a"], "age": [50], "n_cells": [2.5]}), "n_cells"),
        (pd.DataFrame({"donor_id": ["a"], "age": [50], "n_cells": [10], "sex": ["x"]}), "sex"),
    ],
)
def test_bad_donor_tables_are_rejected(table, fragment):
    with pytest.raises(DataValidationError, match=fragment):
        simulate_cohort(n_genes=50, donors=table)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_genes=0), dict(n_genes=N_GENES_FULL + 1), dict(cell_fraction=0.0), dict(seed=-1), dict(chunk_cells=0)],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(DataValidationError):
        simulate_cohort(**{**dict(cell_fraction=0.01, n_genes=50), **kwargs})


def test_donor_without_cells_is_an_error():
    donors = pd.DataFrame({"donor_id": ["a", "b"], "age": [40, 70], "n_cells": [100, 1]})
    with pytest.raises(DataValidationError, match="no cells"):
        simulate_cohort(cell_fraction=0.1, n_genes=50, donors=donors, min_cells_per_donor=0)
