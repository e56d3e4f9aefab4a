"""The study (Su & Mukundan): its donor table and every number it reports, for side-by-side display.

Nothing here is ever used as a result of ours: chapters show these numbers in a column labelled
"paper" beside the values their own executed code produced.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

CITATION_KEY = "su_mukundan_aging_clock"

#: Values stated in the text (sections 3-5 and the supplementary figures).
TEXT = {
    "n_cells": 189_423,  # the authors' code and tables (the book's cohort table); the text: n_cells_text
    "n_cells_text": 189_432,
    "n_genes": 17_658,
    "n_donors": 69,
    "split_donors": {"train": 49, "val": 9, "test": 11},  # the authors' code; the text: split_donors_text
    "split_donors_text": {"train": 50, "val": 9, "test": 10},
    "min_age": 24,  # the authors' code and tables; the text: min_age_text
    "min_age_text": 25,
    "svd_top_abs_r": 0.43,
    "mlp_test_mae": 15.97,
    "mlp_test_r": 0.52,
    "nmf_mlp_test_mae": 13.08,
    "nmf_mlp_test_r": 0.70,
    "poisson_vae_test_mae": 7.55,
    "dae_test_mae": 16.09,
    # From the authors' code (REPRODUCTION_NOTES): the training-mean null model.
    "null_test_mae": 15.3,
    "null_val_mae": 13.0,
}

# --------------------------------------------------------------------------------------------------
# The study's designs: the single source of its tuning grids and training settings. Profiles scale
# these (``profiles``); the tables below show them with the paper's validation MAEs.
# --------------------------------------------------------------------------------------------------

#: Table 1's MLP grid (dropout 0.4, Adam, batch 4096).
MLP_GRID = [
    {"hidden": [500, 500], "lr": 1e-3},
    {"hidden": [1000, 1000], "lr": 1e-3},
    {"hidden": [5000, 5000, 5000], "lr": 1e-3},
    {"hidden": [5000, 5000, 5000], "lr": 1e-4},
]
#: Table 2's standard (Gaussian) VAE grid.
GAUSSIAN_VAE_GRID = [
    {"epochs": 100, "age_hidden": [20, 20], "latent": 20, "hidden": [300, 100], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 30, "hidden": [300, 100], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 40, "hidden": [300, 100], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 50, "hidden": [300, 100], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 60, "hidden": [300, 100], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 70, "hidden": [300, 100], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 50, "hidden": [600, 150, 75], "dropout": 0.0},
    {"epochs": 100, "age_hidden": [30, 20], "latent": 150, "hidden": [512, 256], "dropout": 0.0},
    {"epochs": 200, "age_hidden": [20, 20], "latent": 60, "hidden": [300, 100], "dropout": 0.2},
]
#: Table 3's Poisson VAE grid.
POISSON_VAE_GRID = [
    {"epochs": 200, "age_hidden": [20, 20], "latent": 100, "hidden": [300, 150], "dropout": 0.2},
    {"epochs": 500, "age_hidden": [20, 20], "latent": 100, "hidden": [300, 150], "dropout": 0.2},
    {"epochs": 1000, "age_hidden": [20, 20], "latent": 100, "hidden": [300, 150], "dropout": 0.2},
]
#: Table 4's denoising VAE grid (``noise``: the input noise level).
DAE_GRID = [
    {"epochs": 100, "age_hidden": [20, 20], "latent": 100, "hidden": [512, 256], "noise": 5.0, "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 100, "hidden": [512, 256], "noise": 0.5, "dropout": 0.0},
    {"epochs": 100, "age_hidden": [30, 20], "latent": 100, "hidden": [512, 256], "noise": 0.5, "dropout": 0.0},
]
#: Training settings shared by the paper's models (authors' code, REPRODUCTION_NOTES): Adam, batch
#: size, the MLP's dropout, the cyclical KL schedule (epochs at 0 / rising / at 1) and the cosine
#: warm-restart period of the VAEs, the MLP's epochs.
TRAINING = {"optimiser": "Adam", "lr": 1e-3, "batch_size": 4096, "mlp_dropout": 0.4, "mlp_epochs": 30,
            "kl_cycle": {"zero_epochs": 20, "rise_epochs": 10, "hold_epochs": 10}, "t0": 20}


def _table(grid, columns, paper_mae) -> pd.DataFrame:
    """A tuning table as the paper prints it: lists as text, dropout as used or not."""
    shown = {"model": list(range(1, len(grid) + 1))}
    for col in columns:
        values = [cfg[col] for cfg in grid]
        if col == "dropout":
            values = [bool(v) for v in values]
        elif isinstance(values[0], list):
            values = [str(v) for v in values]
        shown[col] = values
    shown["paper_mae"] = paper_mae
    return pd.DataFrame(shown)


#: Table 1: MLP hyperparameter tuning, validation MAE (years).
TABLE1 = _table(MLP_GRID, ["hidden", "lr"], [8.44, 9.11, 7.78, 8.67])
#: Table 2: standard (Gaussian) VAE tuning, validation MAE.
TABLE2 = _table(GAUSSIAN_VAE_GRID, ["epochs", "age_hidden", "latent", "hidden", "dropout"],
                [15.78, 13.44, 14.67, 12.67, 14.22, 14.33, 13.0, 13.0, 14.22])
#: Table 3: Poisson VAE tuning, validation MAE.
TABLE3 = _table(POISSON_VAE_GRID, ["epochs", "age_hidden", "latent", "hidden", "dropout"], [9.56, 8.67, 8.33])
#: Table 4: denoising VAE tuning, validation MAE.
TABLE4 = _table(DAE_GRID, ["epochs", "age_hidden", "latent", "hidden", "noise", "dropout"], [14.07, 14.43, 14.14])

TABLES = {"table1": TABLE1, "table2": TABLE2, "table3": TABLE3, "table4": TABLE4}


#: Where the paper's text and the authors' code differ: (quantity, TEXT key of the text's value,
#: TEXT key of the code's value, which one the book's cohort follows).
SOURCES = [
    ("neurons", "n_cells_text", "n_cells", "the authors' code (its per-donor table sums to it)"),
    ("donors: train / validation / test", "split_donors_text", "split_donors", "the authors' code (its published split)"),
    ("youngest donor (years)", "min_age_text", "min_age", "the authors' code (its donor table)"),
]


def _shown(value) -> str:
    if isinstance(value, dict):
        return " / ".join(str(v) for v in value.values())
    return f"{value:,}" if isinstance(value, int) else str(value)


def source_table() -> pd.DataFrame:
    """Each number on which the paper's text and the authors' code differ, both labelled by source,
    and which one the book follows."""
    return pd.DataFrame([{"quantity": q, "the paper's text": _shown(TEXT[t]), "the authors' code": _shown(TEXT[c]),
                          "the book follows": follows} for q, t, c, follows in SOURCES])


def reported_table() -> pd.DataFrame:
    """Every headline number of the paper in one table (the book's "paper says" page)."""
    rows = [
        ("Null model (training mean)", "test", TEXT["null_test_mae"], None, "authors' code"),
        ("Null model (training mean)", "validation", TEXT["null_val_mae"], None, "authors' code"),
        ("MLP (best of Table 1)", "test", TEXT["mlp_test_mae"], TEXT["mlp_test_r"], "section 5.1"),
        ("NMF + MLP", "test", TEXT["nmf_mlp_test_mae"], TEXT["nmf_mlp_test_r"], "section 5.1"),
        ("Poisson VAE (Table 3, model 3)", "test", TEXT["poisson_vae_test_mae"], None, "section 5.2.1"),
        ("Denoising VAE (Table 4, model 1)", "test", TEXT["dae_test_mae"], None, "section 5.3.1"),
    ]
    return pd.DataFrame(rows, columns=["model", "split", "paper_mae", "paper_r", "source"])


def load_paper_cohort() -> pd.DataFrame:
    """The study's 69 control donors: ``donor_id`` (str), ``sex``, ``age``, ``n_cells``, ``split``.

    Package data (``neuroage_utils/cohort_data/paper_cohort.csv``; provenance in the README beside
    it): the authors' published split and per-donor neuron counts, no expression values.
    """
    source = resources.files("neuroage_utils").joinpath("cohort_data", "paper_cohort.csv")
    with source.open("r") as fh:
        cohort = pd.read_csv(fh, dtype={"donor_id": str, "sex": str, "split": str})
    cohort["age"] = cohort["age"].astype(float)
    cohort["n_cells"] = cohort["n_cells"].astype(int)
    return cohort
