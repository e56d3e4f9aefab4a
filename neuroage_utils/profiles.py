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
SECTIONS = ("data", "svd", "baselines", "nmf", "vae", "dae", "summary")

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


# The conclusion page (``summary``): repeated donor-grouped CV over all donors, every fit refitted per
# fold on the training fold's donors only. Per-fold models are cheaper than the chapters' (fewer cells,
# epochs, components, iterations) so that folds x repeats fit the time budget; the page shows them.
_SUMMARY = {
    "smoke": {"folds": 3, "repeats": 2, "max_cells": 600, "en_max_cells": 600, "en_alphas": 5, "en_l1": [0.5], "inner_splits": 3,
              "svd_k": 5, "nmf_k": 4, "nmf_iter": 30, "mlp_hidden": [16, 16], "mlp_epochs": 2, "batch_size": 256,
              "pseudocells": {"n_per_donor": 4, "cells_per_pseudocell": 8},
              "vae": {"hidden": [32, 16], "latent": 4, "epochs": 2, "max_cells": 600, "likelihood": "auto"},
              "probe_alphas": 10, "boot": 500, "recovery_k": [5, 10]},
    "quick": {"folds": 5, "repeats": 3, "max_cells": 1500, "en_max_cells": 1500, "en_alphas": 8, "en_l1": [0.5],
              "inner_splits": 3, "svd_k": 20, "nmf_k": 15, "nmf_iter": 40, "mlp_hidden": [100, 100], "mlp_epochs": 6,
              "batch_size": 256, "pseudocells": {"n_per_donor": 5, "cells_per_pseudocell": 30},
              "vae": {"hidden": [128, 64], "latent": 16, "epochs": 10, "max_cells": 2000, "likelihood": "auto"},
              "probe_alphas": 20, "boot": 2000, "recovery_k": [20, 60, 100]},
    "paper": {"folds": 5, "repeats": 5, "max_cells": 20_000, "en_max_cells": 10_000, "en_alphas": 20, "en_l1": [0.1, 0.5, 0.9, 1.0],
              "inner_splits": 5, "svd_k": 100, "nmf_k": 100, "nmf_iter": 200, "mlp_hidden": [500, 500],
              "mlp_epochs": 30, "batch_size": 4096, "pseudocells": {"n_per_donor": 100, "cells_per_pseudocell": 50},
              "vae": {"hidden": [300, 150], "latent": 100, "epochs": 100, "max_cells": 20_000, "likelihood": "auto"},
              "probe_alphas": 20, "boot": 2000, "recovery_k": [50, 200, 500]},
}
for _name, _params in _SUMMARY.items():
    PROFILES[_name]["summary"] = _params


def section_params(profile: str, section: str) -> dict:
    """A copy of the parameters of ``section`` under ``profile``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILE_NAMES)}")
    if section not in PROFILES[profile]:
        raise ValueError(f"unknown section {section!r}: use one of {', '.join(SECTIONS)}")
    return copy.deepcopy(PROFILES[profile][section])
