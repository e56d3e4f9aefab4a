"""The conclusion page's package: repeated donor-grouped CV, linear probes, the VAE clock, recovery@k,
the leaderboard and the results schema's summary keys."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.evaluation import crossval, recovery
from neuroage_utils.models import probe
from neuroage_utils import profiles, results
from neuroage_utils.chapters import summary
from neuroage_utils.data.cohort import DataValidationError
from neuroage_utils.models.vae_clock import VAELatentClock

from tests.conftest import age_counts

SMOKE = profiles.section_params("smoke", "summary")


def cv_data(shuffle: bool = False, seed: int = 0, **kw) -> crossval.CVData:
    X, ages, donors, _ = age_counts(**{"n_donors": 40, "cells": 20, "n_genes": 60, "n_age_genes": 8,
                                       "effect": 0.6, "seed": seed, **kw})
    if shuffle:  # the control: donors keep their cells, ages are permuted across donors
        ids = np.unique(donors)
        donor_age = pd.Series(ages, index=donors).groupby(level=0).first()
        permuted = dict(zip(ids, np.random.default_rng(seed + 1).permutation(donor_age.loc[ids].to_numpy())))
        ages = np.array([permuted[d] for d in donors])
    from neuroage_utils.data.cohort import log_normalize

    return crossval.CVData(X, log_normalize(X), donors.astype(str), ages.astype(float), True)


# -- folds ------------------------------------------------------------------------------------------


def test_folds_cover_every_donor_once_per_repeat_and_never_split_a_donor():
    ages = pd.Series(np.random.default_rng(0).uniform(20, 95, 69), index=[f"D{i}" for i in range(69)])
    splits = crossval.repeated_folds(ages, n_splits=5, n_repeats=3, seed=0)
    assert len(splits) == 15
    for repeat in range(3):
        tests = [t for r, f, tr, t in splits if r == repeat]
        held = np.concatenate(tests)
        assert sorted(held) == sorted(ages.index)  # each donor held out exactly once per repeat
        for r, f, tr, t in splits:
            assert not set(tr) & set(t) and len(tr) + len(t) == 69
    assert [list(s[3]) for s in splits[:5]] != [list(s[3]) for s in splits[5:10]]  # repeats reshuffle


def test_folds_are_age_stratified():
    ages = pd.Series(np.random.default_rng(1).uniform(20, 95, 69), index=[f"D{i}" for i in range(69)])
    folds = crossval.age_stratified_folds(ages, n_splits=5, seed=3)
    order = ages.sort_values().index
    for start in range(0, 65, 5):  # every block of 5 consecutive ages is spread over the 5 folds
        assert len(set(folds.loc[order[start:start + 5]])) == 5
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1
    means = ages.groupby(folds).mean()
    assert means.max() - means.min() < 8  # unstratified random folds of ~14 donors differ far more often


def test_folds_refuse_too_few_donors():
    with pytest.raises(DataValidationError, match="cannot fill"):
        crossval.age_stratified_folds(pd.Series([30.0, 40.0, 50.0], index=list("abc")), n_splits=5)


# -- CV: signal vs a shuffled-age control -----------------------------------------------------------


def test_cv_of_planted_signal_beats_null_and_shuffled_control_does_not(one_blas_thread):
    P = {**SMOKE, "folds": 4, "repeats": 2}
    for shuffle, should_beat in ((False, True), (True, False)):
        data = cv_data(shuffle=shuffle)
        pred, skipped, _ = crossval.run_cv(data, ["null", "pseudobulk_elastic_net"], P, seed=0, progress=False)
        assert not skipped
        c = crossval.paired_cv_difference(pred, "pseudobulk_elastic_net", "null", seed=0)
        beats = c["excludes_zero"] and c["difference"] < 0
        assert beats == should_beat, (shuffle, c)
    summary_ = crossval.cv_summary(pred, P, n_boot=200)
    assert summary_["null"]["n_donors"] == 40 and summary_["null"]["repeats"] == 2


@pytest.mark.parametrize("model", ["null", "elastic_net", "pseudobulk_elastic_net", "svd_ridge", "mlp", "nmf_mlp",
                                   "vae_latent_pseudobulk"])
def test_recipes_never_use_held_out_ages(model, one_blas_thread, one_torch_thread):
    """Changing the held-out donors' ages must not change a single prediction."""
    data = cv_data()
    ages = data.donor_ages()
    (_, _, train, test), = crossval.repeated_folds(ages, 4, 1, seed=0)[:1]
    before = crossval.RECIPES[model](data, train, test, SMOKE, 0, "cpu")
    leaked = crossval.CVData(data.X, data.X_norm, data.donors,
                             np.where(np.isin(data.donors, test), 999.0, data.ages), True)
    after = crossval.RECIPES[model](leaked, train, test, SMOKE, 0, "cpu")
    assert sorted(before.index) == sorted(test)
    np.testing.assert_allclose(before.loc[sorted(test)], after.loc[sorted(test)], rtol=1e-5, atol=1e-4)


def test_count_models_are_skipped_on_values_that_are_not_counts():
    data = cv_data()
    data = crossval.CVData(data.X_norm, data.X_norm, data.donors, data.ages, False)
    pred, skipped, _ = crossval.run_cv(data, ["null", "pseudobulk_elastic_net"], {**SMOKE, "repeats": 1},
                                       progress=False)
    assert "not raw counts" in skipped["pseudobulk_elastic_net"]
    assert set(pred["model"]) == {"null"}


# -- the VAE clock and the probe --------------------------------------------------------------------


def test_vae_clock_returns_donor_predictions_from_training_donors_only(one_torch_thread, one_blas_thread):
    data = cv_data()
    ids = np.unique(data.donors)
    train, test = ids[:30], ids[30:]
    tr, te = data.cells(train), data.cells(test)
    clock = VAELatentClock(hidden=(16, 8), latent=4, epochs=2, batch_size=128, probe_alphas=5, probe_splits=3,
                           device="cpu").fit(data.X[tr], data.ages[tr], data.donors[tr])
    assert clock.likelihood_ == "poisson" and clock.vae_.age_weight == 0.0
    assert list(clock.train_donors_) == sorted(train)
    pred = clock.predict_donors(data.X[te], data.donors[te])
    assert sorted(pred.index) == sorted(test) and np.isfinite(pred).all()
    assert clock.gene_age_scores().shape == (data.X.shape[1],)
    gaussian = VAELatentClock(hidden=(16, 8), latent=4, epochs=1, batch_size=128, probe_alphas=5, probe_splits=3,
                              device="cpu").fit(data.X_norm[tr], data.ages[tr], data.donors[tr])
    assert gaussian.likelihood_ == "gaussian"


def test_linear_probe_finds_age_in_features_and_refuses_overlapping_donors(one_blas_thread):
    data = cv_data(n_genes=30)
    ids = np.unique(data.donors)
    pred = probe.probe_scores(data.X_norm, data.donors, data.ages, ids[:30], ids[30:], kind="ridge", n_splits=5)
    truth = data.donor_ages().loc[pred.index]
    null = np.abs(truth - data.donor_ages().loc[ids[:30]].mean()).mean()
    assert np.abs(pred - truth).mean() < 0.8 * null
    with pytest.raises(DataValidationError, match="overlap"):
        probe.probe_scores(data.X_norm, data.donors, data.ages, ids[:30], ids[29:])


# -- ground truth -----------------------------------------------------------------------------------


def test_recovery_at_k_is_chance_for_random_rankings_and_beats_it_for_the_truth():
    rng = np.random.default_rng(0)
    truth = np.zeros(500, bool)
    truth[rng.choice(500, 25, replace=False)] = True
    ks = [10, 50]
    random = pd.concat([recovery.recovery_at_k(rng.permutation(500), truth, ks) for _ in range(400)])
    mean = random.groupby("k")[["precision", "recall"]].mean()
    assert mean.loc[50, "precision"] == pytest.approx(25 / 500, abs=0.006)
    assert mean.loc[50, "recall"] == pytest.approx(50 / 500, abs=0.012)
    best = recovery.recovery_at_k(recovery.rank_genes(truth.astype(float)), truth, ks)
    assert best.loc[0, "precision"] == 1.0 and best.loc[1, "recall"] == 1.0
    assert (best["p_value"] < 1e-6).all() and (best["enrichment"] > 5).all()


def test_rank_genes_puts_ties_in_random_order():
    order = recovery.rank_genes(np.r_[5.0, np.zeros(99)], seed=1)
    assert order[0] == 0 and list(order[1:6]) != [1, 2, 3, 4, 5]


# -- leaderboard and results schema -----------------------------------------------------------------


def _entry(mae, split="test"):
    preds = [{"donor_id": "a", "age": 50.0, "predicted": 50.0 + mae}]
    return {"split": split, "mae": mae, "r": None, "mae_ci95": [mae, mae], "n_donors": 1, "predictions": preds}


def test_leaderboard_reads_test_entries_once_per_null_with_paper_values():
    docs = {"baselines": {"models": {"null": _entry(15.0), "mlp": _entry(9.0), "mlp_t1_m1": _entry(8.0, "val")}},
            "vae": {"models": {"null": _entry(15.0), "vae_poisson": _entry(16.0), "vae_nb": {"skipped": "no"}}}}
    board = summary.leaderboard(docs, own={"vae_latent_pseudobulk": _entry(14.0)})
    assert [r["model"] for r in board] == ["mlp", "vae_latent_pseudobulk", "null", "vae_poisson"]
    assert board[0]["paper_mae"] == 15.97 and board[1]["paper_mae"] is None
    doc = {"section": "summary", "data": {k: 1 for k in results.DATA_KEYS}, "profile": "smoke", "params": {},
           "runtime_s": 1.0, "models": {}, "leaderboard": board,
           "cv": {"null": {"mae": 1.0, "mae_ci95": [0.5, 1.5], "folds": 5, "repeats": 3, "n_donors": 69}}}
    results.validate_results(doc)
    del doc["cv"]["null"]["repeats"]
    with pytest.raises(results.ResultsError, match="repeats"):
        results.validate_results(doc)


def test_cv_folds_in_worker_processes_give_the_same_predictions_and_skips():
    data = cv_data()
    P = {**SMOKE, "folds": 4, "repeats": 2}
    models = ["null", "pseudobulk_elastic_net", "elastic_net"]
    runs = [crossval.run_cv(data, models, P, seed=0, progress=False, workers=w) for w in (1, 2)]
    (a, skip_a, sec_a), (b, skip_b, sec_b) = runs
    assert skip_a == skip_b == {} and set(sec_a) == set(sec_b) == set(models)
    pd.testing.assert_frame_equal(a.drop(columns="predicted"), b.drop(columns="predicted"))
    np.testing.assert_allclose(a["predicted"], b["predicted"], rtol=1e-4, atol=1e-3)  # 1 vs 2 threads: rounding
    counts = crossval.CVData(data.X_norm, data.X_norm, data.donors, data.ages, False)
    pred, skipped, _ = crossval.run_cv(counts, ["null", "pseudobulk_elastic_net"], {**SMOKE, "repeats": 1},
                                       progress=False, workers=2)
    assert "not raw counts" in skipped["pseudobulk_elastic_net"] and set(pred["model"]) == {"null"}
