"""The one registry of model recipes: every key has a typed spec and builds a model with one protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.data.features import log_normalize
from neuroage_utils.evaluation import recipes
from neuroage_utils.report import labels

from tests.conftest import make_adata


def test_every_recipe_is_typed_and_named():
    for level in recipes.LEVELS:
        assert recipes.keys(level), level
        for key in recipes.keys(level):
            r = recipes.get(key, level)
            assert isinstance(r.input, recipes.Input) and r.name and r.short_name
            assert dataclasses.is_dataclass(r.settings)
    assert recipes.get("pseudobulk_elastic_net").input is recipes.Input.COUNTS
    assert recipes.get("elastic_net", "donors").input is recipes.Input.DONOR_PROFILES
    assert recipes.get("mlp").torch and not recipes.get("elastic_net").torch


def test_the_display_names_are_the_registry_s():
    assert labels.MODEL_NAMES == recipes.names("cells")
    assert labels.MODEL_LABELS == recipes.names("donors")
    assert labels.CHAPTER_NAMES["elastic_net"] == "elastic net" != labels.MODEL_NAMES["elastic_net"]


def test_a_misspelt_setting_or_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="n_alpha"):
        recipes.build("elastic_net", {"n_alpha": 5})
    with pytest.raises(ValueError, match="no recipe"):
        recipes.get("random_forest")
    with pytest.raises(ValueError, match="level"):
        recipes.get("mlp", "genes")
    with pytest.raises(ValueError, match="loaded"):
        recipes.build("published_clock", level="donors")


def test_settings_come_as_a_mapping_or_an_instance_and_reach_the_model():
    model = recipes.build("mlp", {"hidden": [8, 4], "epochs": 2, "batch_size": 32}, device="cpu", seed=3)
    assert model.hidden == (8, 4) and model.epochs == 2 and model.seed == 3 and model.dropout == 0.4
    model = recipes.build("vae_poisson", recipes.VAESettings(hidden=(16,), latent=4, epochs=1), age_weight=0.0)
    assert model.likelihood == "poisson" and model.age_weight == 0.0 and model.latent_dim == 4


@pytest.mark.parametrize("key", ["null", "elastic_net", "pseudobulk_elastic_net", "pseudocell_elastic_net",
                                 "svd_ridge"])
def test_cell_recipes_fit_on_training_donors_and_predict_each_held_out_donor(key):
    adata = make_adata(n_donors=12, cells_per_donor=10, n_genes=30)
    X, donors, ages = adata.X, adata.obs["donor_id"].to_numpy(str), adata.obs["age"].to_numpy(float)
    if recipes.get(key).input is recipes.Input.LOG_CELLS:
        X = log_normalize(X)
    train = np.isin(donors, np.unique(donors)[::2], invert=True)
    settings = {"null": {}, "svd_ridge": {"n_components": 4, "n_splits": 3}}.get(
        key, {"n_alphas": 4, "l1_ratios": [0.5], "n_splits": 3})
    if key == "pseudocell_elastic_net":
        settings = {**settings, "n_per_donor": 3, "cells_per_pseudocell": 4}
    model = recipes.build(key, settings, seed=0).fit(X[train], ages[train], donors[train])
    pred = model.predict_donors(X[~train], donors[~train])
    assert isinstance(pred, pd.Series) and list(pred.index) == sorted(set(donors[~train]))
    assert np.isfinite(pred).all()


def test_count_models_refuse_values_that_are_not_counts():
    adata = make_adata(counts=False)
    model = recipes.build("pseudobulk_elastic_net", {"n_alphas": 3})
    with pytest.raises(recipes.NeedsCounts, match="not raw counts"):
        model.fit(adata.X, adata.obs["age"].to_numpy(float), adata.obs["donor_id"].to_numpy(str))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("key", ["mlp", "nmf_mlp", "vae_latent_pseudobulk", "vae_poisson", "vae_gaussian"])
def test_torch_recipes_follow_the_same_protocol(key):
    """What the clock API relies on: every cell recipe fits on cells and predicts one age per held-out donor."""
    adata = make_adata(n_donors=10, cells_per_donor=8, n_genes=20)
    X, donors, ages = adata.X, adata.obs["donor_id"].to_numpy(str), adata.obs["age"].to_numpy(float)
    if recipes.get(key).input is recipes.Input.LOG_CELLS:
        X = log_normalize(X)
    train = np.isin(donors, np.unique(donors)[::3], invert=True)
    settings = {
        "mlp": {"hidden": [8], "epochs": 1, "batch_size": 32, "max_cells": 50},
        "nmf_mlp": {"n_components": 3, "max_iter": 20, "mlp": {"hidden": [8], "epochs": 1, "batch_size": 32}},
        "vae_latent_pseudobulk": {"hidden": [8], "latent": 2, "epochs": 1, "batch_size": 32, "probe_alphas": 3,
                                  "probe_splits": 3},
    }.get(key, {"hidden": [8], "latent": 2, "epochs": 1, "batch_size": 32})
    model = recipes.build(key, settings, device="cpu", seed=0, progress=False)
    model.fit(X[train], ages[train], donors[train])
    pred = model.predict_donors(X[~train], donors[~train])
    assert list(pred.index) == sorted(set(donors[~train])) and np.isfinite(pred).all()
