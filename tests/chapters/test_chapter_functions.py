"""What the notebooks used to compute inline, now package functions: tables, statistics, figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA

from neuroage_utils import paper, profiles
from neuroage_utils.report import plots
from neuroage_utils.data.cohort import cells_per_donor_stats, split_table
from neuroage_utils.metrics import gene_recovery
from neuroage_utils.models.svd import fit_component_ridge, top_components
from neuroage_utils.models.vae import latent_pcs
from neuroage_utils.chapters.chapter import PARAMETERS, Chapter

from tests.conftest import make_adata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gene_recovery_counts_true_age_genes_among_the_selected():
    var = pd.DataFrame({"age_gene": [True, True, False, False, False, True, False, False, False, False],
                        "age_pattern": ["linear"] * 10}, index=[f"G{i}" for i in range(10)])
    coef = pd.DataFrame({"gene": ["G0", "G2", "G5", "G7"], "coef": [3.0, -2.0, 1.0, 0.5]})
    out = gene_recovery(coef, var, n_top=2)
    assert out["precision"] == 0.5 and out["chance"] == pytest.approx(0.3)
    table = out["table"]
    assert table["true age genes among them"] == 2 and table["recall of age genes"] == round(2 / 3, 3)
    assert table["enrichment over chance"] == round(0.5 / 0.3, 1)
    assert list(out["top"]["gene"]) == ["G0", "G2"] and list(out["top"]["true age gene"]) == [True, False]


def test_split_table_counts_donors_and_cells_per_split_and_overall():
    donors = pd.DataFrame({"donor_id": list("abcdef"), "age": [20, 30, 40, 50, 60, 70],
                           "n_cells": [1, 2, 3, 4, 5, 6], "split": ["train"] * 3 + ["val", "test", "test"],
                           "sex": ["female", "male", "female", "male", "male", "female"]})
    table = split_table(donors, {"train": 49, "val": 9, "test": 11, "all": 69})
    assert table.loc["train", "donors"] == 3 and table.loc["test", "cells"] == 11
    assert table.loc["all", "donors"] == 6 and table.loc["all", "cells"] == 21 and table.loc["all", "female"] == 3
    assert table.loc["test", "age_median"] == 65 and list(table["paper donors"]) == [49, 9, 11, 69]
    stats = cells_per_donor_stats(donors)
    assert (stats["min"], stats["median"], stats["max"]) == (1, 3, 6)
    assert stats["top5_share"] == pytest.approx(20 / 21)


def test_top_components_and_the_ridge_on_scores():
    corr = pd.DataFrame({"component": [0, 1, 2], "r_cell": [0.1, -0.6, 0.3], "r_donor": [0.2, 0.1, -0.9]})
    top = top_components(corr)
    assert (top["component_cell"], top["abs_r_cell"]) == (1, 0.6)
    assert (top["component_donor"], top["abs_r_donor"]) == (2, 0.9)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 3))
    ages = 50 + 10 * scores[:, 0] + rng.normal(scale=0.1, size=200)
    ridge = fit_component_ridge(scores, ages, profiles.section_params("smoke", "svd")["ridge_alphas"])
    assert ridge.alpha_ in profiles.section_params("smoke", "svd")["ridge_alphas"]
    assert np.mean(np.abs(ridge.predict(scores) - ages)) < 1.0


def test_latent_pcs_are_the_principal_components_up_to_sign():
    Z = np.random.default_rng(1).normal(size=(300, 5)) * [5, 3, 1, 0.5, 0.1]
    ours = latent_pcs(Z)
    ref = PCA(n_components=2).fit_transform(Z)
    for j in range(2):
        assert abs(np.corrcoef(ours[:, j], ref[:, j])[0, 1]) == pytest.approx(1.0)


def test_profiles_are_typed_and_derived_from_the_study():
    assert isinstance(profiles.SETTINGS["quick"], profiles.Profile)
    full = profiles.section_params("paper", "vae")
    assert full["poisson_grid"] == paper.POISSON_VAE_GRID and full["batch_size"] == paper.TRAINING["batch_size"]
    assert profiles.section_params("paper", "baselines")["mlp_grid"] == paper.MLP_GRID
    assert list(paper.TABLE1["hidden"]) == [str(c["hidden"]) for c in paper.MLP_GRID]


def test_chapter_starts_from_the_notebook_parameters_and_builds_models_on_its_device(tmp_path, h5ad_path):
    path = h5ad_path(make_adata(n_donors=12, cells_per_donor=6, n_genes=10))
    namespace = {"data_path": str(path), "profile": "smoke", "device": "cpu", "seed": 3, "donor_key": "donor_id",
                 "age_key": "age", "out_dir": str(tmp_path), "allow_non_counts": False, "unrelated": 1}
    assert set(PARAMETERS) <= set(namespace)
    chapter = Chapter.start("baselines", namespace)
    assert chapter.seed == 3 and chapter.device == torch.device("cpu")
    model = chapter.mlp({"hidden": [8], "lr": 1e-2}, epochs=2)
    P = chapter.params
    assert (model.epochs, model.batch_size, model.dropout, model.device) == (2, P["batch_size"], P["dropout"],
                                                                             chapter.device)
    X = chapter.cohort.normalized()
    chapter.fit_score("mlp", model, X, fit=("train", "val"), on="test")
    seen = chapter.seen_fit("mlp", X)
    assert seen["training donors"] == int((chapter.cohort.donor_table["split"] != "test").sum())
    assert np.isfinite(seen["donor MAE on its training donors"])
    table = chapter.scores(paper={"mlp": 15.97})
    assert table.loc[table["model"] == "mlp", "paper MAE"].item() == 15.97


def test_every_chapter_figure_draws():
    rng = np.random.default_rng(0)
    donors = pd.DataFrame({"donor_id": list("abcdef"), "age": [20, 30, 40, 50, 60, 70],
                           "n_cells": [5] * 6, "split": ["train"] * 3 + ["val", "test", "test"]})
    scores, ages = rng.normal(size=(50, 4)), rng.uniform(20, 80, 50)
    corr = pd.DataFrame({"component": range(4), "r_cell": rng.uniform(-1, 1, 4), "r_donor": rng.uniform(-1, 1, 4)})
    history = pd.DataFrame({"epoch": range(3), "loss": [3.0, 2.0, 1.0], "recon": [2.0, 1.5, 1.0],
                            "age_mse": [1.0, 0.8, 0.5], "kl_weight": [0, 0.5, 1], "lr": [1e-3] * 3})
    entry = {"mae": 5.0, "mae_ci95": [3.0, 7.0],
             "predictions": [{"donor_id": d, "age": a, "predicted": a + 3} for d, a in zip("abc", [20, 40, 60])]}
    figures = [
        plots.age_histograms(donors, np.repeat(donors["age"], 5)),
        plots.cells_per_donor(donors),
        plots.library_histograms(rng.integers(100, 1000, 50), rng.integers(10, 100, 50)),
        plots.svd_components(scores, ages, corr, 0.43, max_cells=20),
        plots.factor_correlations(corr, "4 factors"),
        plots.cv_path(pd.DataFrame({"l1_ratio": [0.5, 0.5], "alpha": [0.1, 1.0], "mse_mean": [2.0, 1.0]}), 1.0),
        plots.training_losses({"model 1": history}, "loss"),
        plots.vae_training(history),
        plots.predicted_vs_true_panels([("a model", entry), ("not run", None)]),
        plots.predicted_vs_true_panels([], empty_text="nothing"),
        plots.latent_space(scores[:, :2], ages, np.repeat(list("abcde"), 10), "vae"),
    ]
    assert all(isinstance(f, plt.Figure) for f in figures)
    assert len(figures[8].axes) == 1  # the missing model gets no panel
    plt.close("all")
