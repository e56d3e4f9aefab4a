"""Run profiles, as data: how big a run is, per section.

- ``smoke``: tiny, for the tests (seconds per chapter);
- ``quick``: the default book, minutes on a 2-core CPU. It keeps the paper's designs but shrinks
  cells, genes, widths and epochs; every chapter prints the configuration that actually ran;
- ``paper``: the paper's exact settings on the full-size cohort (meant for a GPU).

The simulated cohort's size also comes from the profile (``simulate``); on user data only the model
settings apply.
"""

from __future__ import annotations

import copy

PROFILE_NAMES = ("smoke", "quick", "paper")
SECTIONS = ("data", "svd", "baselines", "nmf", "vae", "dae", "realdata")

# The paper's designs (Tables 1-4). Widths and epochs are scaled by the profile below.
_MLP_GRID = [
    {"hidden": [500, 500], "lr": 1e-3},
    {"hidden": [1000, 1000], "lr": 1e-3},
    {"hidden": [5000, 5000, 5000], "lr": 1e-3},
    {"hidden": [5000, 5000, 5000], "lr": 1e-4},
]
_GAUSSIAN_VAE_GRID = [
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
_POISSON_VAE_GRID = [
    {"epochs": 200, "age_hidden": [20, 20], "latent": 100, "hidden": [300, 150], "dropout": 0.2},
    {"epochs": 500, "age_hidden": [20, 20], "latent": 100, "hidden": [300, 150], "dropout": 0.2},
    {"epochs": 1000, "age_hidden": [20, 20], "latent": 100, "hidden": [300, 150], "dropout": 0.2},
]
_DAE_GRID = [
    {"epochs": 100, "age_hidden": [20, 20], "latent": 100, "hidden": [512, 256], "noise": 5.0, "dropout": 0.0},
    {"epochs": 100, "age_hidden": [20, 20], "latent": 100, "hidden": [512, 256], "noise": 0.5, "dropout": 0.0},
    {"epochs": 100, "age_hidden": [30, 20], "latent": 100, "hidden": [512, 256], "noise": 0.5, "dropout": 0.0},
]


def _scaled(grid, width: float = 1.0, epochs: float = 1.0, min_epochs: int = 2):
    """A copy of ``grid`` with encoder/MLP widths and epochs multiplied (age-head widths kept)."""
    out = []
    for cfg in copy.deepcopy(grid):
        if "hidden" in cfg:
            cfg["hidden"] = [max(4, int(round(h * width))) for h in cfg["hidden"]]
        if "epochs" in cfg:
            cfg["epochs"] = max(min_epochs, int(round(cfg["epochs"] * epochs)))
        out.append(cfg)
    return out


def _profile(cells, genes, min_cells, width, vae_width, epochs, vae_epochs, mlp_epochs, batch, svd_k, nmf_k, nmf_iter,
             en_alphas, en_l1, boot_pseudocells, max_cells_fit, checkpoint_every, kl_cycle=(20, 10, 10), t0=20):
    kl = {"zero_epochs": kl_cycle[0], "rise_epochs": kl_cycle[1], "hold_epochs": kl_cycle[2]}
    return {
        "simulate": {"cell_fraction": cells, "n_genes": genes, "min_cells_per_donor": min_cells},
        "data": {},
        "svd": {"n_components": svd_k, "max_cells_plot": 20_000},
        "baselines": {
            "elastic_net": {"n_alphas": en_alphas, "l1_ratios": en_l1, "n_splits": 5, "max_cells": max_cells_fit},
            "pseudocells": boot_pseudocells,
            "mlp_grid": _scaled(_MLP_GRID, width=width),
            "mlp_epochs": mlp_epochs,
            "batch_size": batch,
            "dropout": 0.4,
            "early_stopping": None,
        },
        "nmf": {
            "input": "raw",  # the paper factorises raw counts; "log1p" uses log-normalised counts
            "n_components": nmf_k,
            "max_iter": nmf_iter,
            "mlp": {"hidden": [max(4, int(round(5000 * width)))] * 3, "lr": 1e-3},
            "mlp_epochs": mlp_epochs,
            "batch_size": batch,
        },
        "vae": {
            "gaussian_grid": _scaled(_GAUSSIAN_VAE_GRID, width=vae_width, epochs=epochs),
            "poisson_grid": _scaled(_POISSON_VAE_GRID, width=vae_width, epochs=vae_epochs),
            "batch_size": batch,
            "lr": 1e-3,
            "t0": t0,
            "kl_cycle": kl,
            "checkpoint_every": checkpoint_every,
        },
        "dae": {
            "grid": _scaled(_DAE_GRID, width=vae_width, epochs=epochs),
            "batch_size": batch,
            "lr": 1e-3,
            "t0": t0,
            "kl_cycle": kl,
            "checkpoint_every": checkpoint_every,
        },
    }


PROFILES = {
    # Seconds per chapter: proves the plumbing, not the science.
    "smoke": _profile(cells=0.004, genes=200, min_cells=12, width=0.01, vae_width=0.1, epochs=0.03, vae_epochs=0.01,
                      mlp_epochs=3, batch=256, svd_k=8, nmf_k=6, nmf_iter=60, en_alphas=5, en_l1=[0.5, 1.0],
                      boot_pseudocells={"n_per_donor": 5, "cells_per_pseudocell": 8},
                      max_cells_fit=3000, checkpoint_every=2, kl_cycle=(1, 1, 1), t0=2),
    # The default book: the paper's designs on ~10k cells x 2,000 genes, narrower and shorter.
    # The KL cycle and the restart period shrink with the epochs (5 + 5 + 5 and 10 instead of
    # 20 + 10 + 10 and 20), so that a 20-epoch run still sees the KL term at full weight.
    "quick": _profile(cells=0.05, genes=2000, min_cells=20, width=0.1, vae_width=1.0, epochs=0.2, vae_epochs=0.06,
                      mlp_epochs=30, batch=1024, svd_k=100, nmf_k=100, nmf_iter=100, en_alphas=20,
                      en_l1=[0.1, 0.5, 0.9, 1.0], boot_pseudocells={"n_per_donor": 10, "cells_per_pseudocell": 30},
                      max_cells_fit=20_000, checkpoint_every=10, kl_cycle=(5, 5, 5), t0=10),
    # The paper's exact settings: 189,423 cells x 17,658 genes, full widths and epochs, batch 4096.
    "paper": _profile(cells=1.0, genes=17658, min_cells=0, width=1.0, vae_width=1.0, epochs=1.0, vae_epochs=1.0,
                      mlp_epochs=30, batch=4096, svd_k=100, nmf_k=100, nmf_iter=200, en_alphas=20,
                      en_l1=[0.1, 0.5, 0.9, 1.0], boot_pseudocells={"n_per_donor": 100, "cells_per_pseudocell": 50},
                      max_cells_fit=None, checkpoint_every=10),
}


def _realdata(n_repeats, en_alphas, en_l1, mlp_hidden, mlp_epochs, svd_k, nmf_k, nmf_iter, nmf_hidden, vae_hidden,
              vae_latent, vae_epochs, kl_cycle, t0, max_donors=None, max_genes=None,
              batch_size=64, n_jobs=2):
    """The real-donor chapter (rows are donors, not cells): its models are sized for a few hundred rows."""
    mlp = {"hidden": mlp_hidden, "dropout": 0.4, "epochs": mlp_epochs, "lr": 1e-3, "batch_size": batch_size}
    return {
        "n_splits": 5, "n_repeats": n_repeats, "n_jobs": n_jobs,  # worker processes for the independent fits
        "max_donors": max_donors, "max_genes": max_genes,  # None: every donor, every gene
        "models": ["null", "elastic_net", "mlp", "svd_ridge", "nmf_mlp", "vae_gaussian"],
        "elastic_net": {"n_alphas": en_alphas, "l1_ratios": en_l1, "eps": 1e-2, "n_splits": 5, "max_iter": 2000,
                        "tol": 1e-4},
        "mlp": mlp,
        "svd_ridge": {"n_components": svd_k},
        "nmf_mlp": {**mlp, "hidden": nmf_hidden, "n_components": nmf_k, "max_iter": nmf_iter},
        "vae_gaussian": {"hidden": vae_hidden, "latent": vae_latent, "age_hidden": [20, 20], "dropout": 0.0,
                         "epochs": vae_epochs, "lr": 1e-3, "batch_size": batch_size, "t0": t0,
                         "kl_cycle": {"zero_epochs": kl_cycle[0], "rise_epochs": kl_cycle[1], "hold_epochs": kl_cycle[2]}},
    }


PROFILES["smoke"]["realdata"] = _realdata(1, 4, [0.5], [16], 3, 5, 4, 30, [8], [16], 4, 2, (1, 1, 1), 2,
                                          max_donors=120, max_genes=300, n_jobs=1)
PROFILES["quick"]["realdata"] = _realdata(2, 8, [0.5, 0.9], [64, 64], 20, 20, 10, 40, [32, 32], [128, 64], 16,
                                          20, (5, 5, 5), 10, batch_size=128)
PROFILES["paper"]["realdata"] = _realdata(5, 20, [0.1, 0.5, 0.9, 1.0], [500, 500], 60, 100, 50, 200, [500, 500],
                                          [300, 100], 50, 100, (20, 10, 10), 20)


def section_params(profile: str, section: str) -> dict:
    """A copy of the parameters of ``section`` under ``profile``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILE_NAMES)}")
    if section not in PROFILES[profile]:
        raise ValueError(f"unknown section {section!r}: use one of {', '.join(SECTIONS)}")
    return copy.deepcopy(PROFILES[profile][section])
