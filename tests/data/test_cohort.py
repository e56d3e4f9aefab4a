"""Validation errors, the donor split and the transforms of neuroage_utils.data.cohort."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from neuroage_utils.data.checks import is_count_matrix, require_counts
from neuroage_utils.data.cohort import donor_frame, load_cohort, split_donors
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import SparseStandardScaler, log_normalize
from neuroage_utils.paper import load_paper_cohort

from tests.conftest import make_adata


def test_missing_age_column_names_column_and_fix(tiny_adata):
    del tiny_adata.obs["age"]
    with pytest.raises(DataValidationError, match=r"no age column 'age'.*--age-key"):
        load_cohort(tiny_adata)


def test_custom_column_names_are_used():
    adata = make_adata(donor_key="ID", age_key="Age")
    cohort = load_cohort(adata, donor_key="ID", age_key="Age")
    assert cohort.n_donors == 12 and cohort.donor_key == "ID"


def test_negative_age_names_the_donor(tiny_adata):
    tiny_adata.obs.loc[tiny_adata.obs["donor_id"] == "D03", "age"] = -4.0
    with pytest.raises(DataValidationError, match="donor D03 has a negative age"):
        load_cohort(tiny_adata)


def test_missing_age_names_the_donor(tiny_adata):
    tiny_adata.obs.loc[tiny_adata.obs.index[20], "age"] = np.nan
    with pytest.raises(DataValidationError, match="donor D01 has a missing age"):
        load_cohort(tiny_adata)


def test_two_ages_for_one_donor(tiny_adata):
    tiny_adata.obs.loc[tiny_adata.obs.index[0], "age"] = 99.0
    with pytest.raises(DataValidationError, match="donor D00 has more than one age"):
        load_cohort(tiny_adata)


def test_too_few_donors():
    with pytest.raises(DataValidationError, match="only 5 donors"):
        load_cohort(make_adata(n_donors=5))


def test_floats_where_counts_are_needed():
    adata = make_adata(counts=False)
    with pytest.raises(DataValidationError, match="non-integer values.*raw counts"):
        load_cohort(adata)
    cohort = load_cohort(adata, allow_non_counts=True)
    assert not cohort.is_counts
    with pytest.raises(DataValidationError, match="needs raw UMI counts"):
        require_counts(cohort.X, "the Poisson VAE")


def test_errors_are_one_line(tiny_adata):
    del tiny_adata.obs["donor_id"]
    with pytest.raises(DataValidationError) as info:
        load_cohort(tiny_adata)
    assert "\n" not in str(info.value)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not an h5ad")
    with pytest.raises(DataValidationError, match="cannot read"):
        load_cohort(bad)


def test_counts_layer_preferred(tiny_adata):
    tiny_adata.layers["counts"] = tiny_adata.X.copy()
    tiny_adata.X = log_normalize(tiny_adata.X)
    cohort = load_cohort(tiny_adata)
    assert cohort.is_counts


def test_study_cohort_keeps_study_split():
    study = load_paper_cohort()
    donors = study[["donor_id", "age", "n_cells"]]
    split = split_donors(donors, seed=3)
    assert (split.loc[study["donor_id"]].to_numpy() == study["split"].to_numpy()).all()
    assert split.value_counts().to_dict() == {"train": 49, "test": 11, "val": 9}


@pytest.mark.parametrize("n", [9, 20, 69, 150])
def test_stratified_split_properties(n):
    donors = pd.DataFrame({"donor_id": [f"X{i}" for i in range(n)], "age": np.linspace(20, 95, n)})
    split = split_donors(donors, seed=1)
    assert split.index.is_unique and len(split) == n  # every donor in exactly one split
    counts = split.value_counts()
    assert counts["test"] >= 2 and counts["val"] >= 2 and counts["train"] >= 5
    if n >= 69:
        assert abs(counts["test"] / n - 11 / 69) < 0.03 and abs(counts["val"] / n - 9 / 69) < 0.03
        # test donors span the age range: one per age stratum
        test_ages = donors.set_index("donor_id").loc[split[split == "test"].index, "age"]
        assert test_ages.min() < 35 and test_ages.max() > 80
    assert split_donors(donors, seed=1).equals(split)
    assert not split_donors(donors, seed=2).equals(split)


def test_cells_follow_their_donor(tiny_adata):
    cohort = load_cohort(tiny_adata)
    frame = pd.DataFrame({"donor": cohort.donors, "split": cohort.split})
    assert (frame.groupby("donor")["split"].nunique() == 1).all()
    assert cohort.mask("train", "val", "test").all()


def test_log_normalize_and_scaler_match_dense():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(1.0, size=(50, 8)).astype(np.float32))
    L = log_normalize(X, 100)
    dense = X.toarray()
    expected = np.log1p(dense / np.maximum(dense.sum(1, keepdims=True), 1) * 100)
    np.testing.assert_allclose(L.toarray(), expected, rtol=1e-5)
    scaler = SparseStandardScaler().fit(L)
    z = scaler.transform(L)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0)[L.toarray().std(0) > 0], 1, rtol=1e-4)
    assert is_count_matrix(X) and not is_count_matrix(L)


def test_donor_frame_counts_cells(tiny_adata):
    frame = donor_frame(tiny_adata.obs, "donor_id", "age")
    assert len(frame) == 12 and (frame["n_cells"] == 15).all()


def test_sparse_scaler_is_exact_for_large_offsets():
    # float32 E[x^2] - E[x]^2 loses this variance completely; the scaler must not
    rng = np.random.default_rng(1)
    dense = (1000.0 + rng.normal(0, 1, size=(400, 3))).astype(np.float32)
    dense[::7, 0] = 0.0
    scaler = SparseStandardScaler().fit(sp.csr_matrix(dense))
    np.testing.assert_allclose(scaler.scale_, dense.astype(np.float64).std(0), rtol=1e-4)
    np.testing.assert_allclose(scaler.mean_, dense.astype(np.float64).mean(0), rtol=1e-6)


def test_scaler_on_a_row_mask_equals_the_scaler_on_those_rows():
    rng = np.random.default_rng(2)
    X = sp.csr_matrix(rng.poisson(0.7, size=(300, 6)).astype(np.float32))
    rows = rng.random(300) < 0.4
    a = SparseStandardScaler().fit(X, rows=rows)
    b = SparseStandardScaler().fit(X[rows])
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-6)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-6)
