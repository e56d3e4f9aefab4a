"""Donor aggregation, metrics, bootstrap intervals and the null model."""

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.metrics import bootstrap_mae_ci, donor_metrics, donor_table, model_entry, null_table


def test_donor_table_averages_cells():
    table = donor_table([10, 20, 30, 50], ["a", "a", "b", "b"], [15, 15, 40, 40])
    assert table.set_index("donor_id")["predicted"].to_dict() == {"a": 15.0, "b": 40.0}
    assert table["n_cells"].tolist() == [2, 2]


def test_metrics_known_values():
    table = pd.DataFrame({"donor_id": list("abcd"), "age": [20, 40, 60, 80], "predicted": [25, 35, 70, 80]})
    m = donor_metrics(table)
    assert m["mae"] == pytest.approx((5 + 5 + 10 + 0) / 4)
    assert m["r"] == pytest.approx(np.corrcoef([20, 40, 60, 80], [25, 35, 70, 80])[0, 1])
    assert m["n_donors"] == 4


def test_bootstrap_interval_contains_mae_and_narrows_with_donors():
    rng = np.random.default_rng(0)
    def table(n):
        ages = rng.uniform(20, 90, n)
        return pd.DataFrame({"donor_id": range(n), "age": ages, "predicted": ages + rng.normal(0, 8, n)})
    small, large = table(10), table(400)
    lo, hi = bootstrap_mae_ci(small, seed=1)
    assert lo <= donor_metrics(small)["mae"] <= hi
    lo2, hi2 = bootstrap_mae_ci(large, seed=1)
    assert (hi2 - lo2) < (hi - lo)


def test_null_model_uses_donor_mean_not_cell_mean():
    # training donors aged 20 and 80; the first has many cells, which must not pull the mean
    table = null_table([20, 80], ["x", "y"], [30, 70])
    assert table["predicted"].tolist() == [50.0, 50.0]
    entry = model_entry(table, "test")
    assert entry["mae"] == 20.0 and entry["r"] is None and entry["n_donors"] == 2


def test_nan_predictions_raise():
    with pytest.raises(ValueError, match="NaN"):
        donor_table([1.0, np.nan], ["a", "b"], [1, 2])


def test_r_of_a_constant_prediction_is_undefined_despite_rounding():
    # a per-donor mean of identical cell values can differ from the value in the last bit
    table = donor_table([55.3] * 7 + [55.3] * 3, list("aaaaaaabbb"), [30] * 7 + [80] * 3)
    assert donor_metrics(table)["r"] != donor_metrics(table)["r"]  # NaN


def test_paired_difference_detects_a_better_model_and_not_a_tie():
    from neuroage_utils.metrics import paired_difference

    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 90, 40)
    ids = [f"d{i}" for i in range(40)]
    good = model_entry(donor_table(ages + rng.normal(0, 2, 40), ids, ages), "test")
    bad = model_entry(donor_table(ages + rng.normal(0, 15, 40), ids, ages), "test")
    cmp = paired_difference(good, bad)
    assert cmp["difference"] < 0 and cmp["excludes_zero"] and cmp["n_donors"] == 40
    same = paired_difference(good, good)
    assert same["difference"] == 0 and not same["excludes_zero"]
