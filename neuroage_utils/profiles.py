"""Run profiles: how big a run is, per section, derived from the study's designs (``paper``).

- ``smoke``: tiny, for the tests (seconds per chapter);
- ``quick``: the default book, minutes on a 2-core CPU. It keeps the paper's designs but shrinks
  cells, genes, widths and epochs; every chapter prints the configuration that actually ran;
- ``paper``: the paper's exact settings on the full-size cohort (meant for a GPU).

Settings come in one typed style: frozen dataclasses with a comment per field, a :class:`Profile`
per profile for the chapters on the cohort (scales are multipliers of the paper's values, counts are
counts), :class:`CVSettings` for the conclusion page's cross-validation and :class:`RealdataSettings`
for the real-donor chapter; :func:`section_params` gives a chapter its parameters as plain data. The simulated
cohort's size also comes from the profile (``simulate``); on user data only the model settings apply.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np

from neuroage_utils import paper

PROFILE_NAMES = ("smoke", "quick", "paper")
SECTIONS = ("data", "svd", "baselines", "nmf", "vae", "dae", "realdata", "acceleration", "summary")
#: Each chapter's title (the sidebar, the status page, and tables or figures that name a chapter).
SECTION_TITLES = {
    "data": "The cohort",
    "svd": "SVD exploration",
    "baselines": "Baselines: elastic net and MLP",
    "nmf": "NMF + MLP",
    "vae": "Variational autoencoders",
    "dae": "Denoising VAE",
    "realdata": "Real human donors",
    "acceleration": "Age acceleration",
    "summary": "The verdict",
}

#: Penalties tried by the ridge regression on SVD scores (10^-2 ... 10^4, 13 values).
_RIDGE_ALPHAS = np.logspace(-2, 4, 13).tolist()


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


@dataclass(frozen=True)
class Profile:
    """The size of a run. ``*_scale`` fields multiply the paper's values; the others are counts."""

    # the simulated cohort
    cell_fraction: float  # share of the study's 189,423 cells
    n_genes: int
    min_cells_per_donor: int
    # widths and epochs, relative to the paper's grids
    mlp_width_scale: float
    vae_width_scale: float
    vae_epoch_scale: float  # Gaussian and denoising VAEs (Tables 2 and 4)
    poisson_epoch_scale: float  # Poisson VAE (Table 3)
    # counts
    mlp_epochs: int
    batch_size: int
    svd_components: int
    nmf_components: int
    nmf_max_iter: int
    enet_n_alphas: int
    enet_l1_ratios: tuple
    pseudocells_per_donor: int
    cells_per_pseudocell: int
    max_cells_fit: int | None  # cells the cell-level elastic net is fitted on (None: all)
    checkpoint_every: int
    kl_cycle: tuple = tuple(paper.TRAINING["kl_cycle"].values())  # epochs at 0 / rising / at 1
    t0: int = paper.TRAINING["t0"]
    # the device path: bf16 autocast of the torch models (applies where the device multiplies bf16 in
    # hardware: a CUDA GPU, or a CPU with AMX or a measured-fast AVX512-BF16; elsewhere it stays off), and the NMF / SVD solvers
    # ("auto": torch on CUDA; HALS NMF, ARPACK SVD on a CPU)
    amp: bool = False
    linalg_backend: str = "auto"
    # The VAE chapter's experiments: extra runs as long as this row of Table 3 (its scored row is
    # their baseline), the smaller batch of the optimiser-step run, the age weights beside the paper's 1,
    # the training cells the per-epoch training-donor monitor reads, the NMF iterations of the probe.
    exp_row: int = 1
    exp_batch_size: int = 512
    exp_age_weights: tuple = (10.0, 100.0)
    exp_monitor_cells: int | None = None
    exp_nmf_iter: int = 100
    # A streamed cohort (a file above data.stream.STREAM_ABOVE_NNZ values, or --stream): the cell-level
    # models fit on at most this many cells, drawn per donor; the aggregated clocks read every cell.
    # None (the paper profile): every cell, as the paper fitted them. The streamed file is then read
    # into memory once for the cell-level models (MLP, VAEs, cell elastic net), so the paper profile
    # needs the whole matrix in memory as on the in-memory path: the pre-flight's estimate (the
    # in-memory one) refuses a file that does not fit before anything loads, --max-cells N being the
    # way out; the factorisations (stream_every_cell) and the aggregated clocks still read the file in
    # blocks, their memory flat in the cells.
    stream_sample_cells: int | None = None
    # A streamed cohort: the SVD and NMF chapters fit their factorisation in streamed passes over every
    # training cell of the file, and score every cell for the correlations with age and the SVD's ridge
    # (True: the paper profile; the smoke profile too, so that the tests run that path on tiny data); or
    # in memory on the per-donor sample above, like the cell-level models (False: the quick profile stays
    # minutes at any size). The MLP on NMF factors is a cell-level model: it reads the sample's factors.
    stream_every_cell: bool = False
    # The paper's budget (Table 3's final row): epochs, the batch and the cells drawn per epoch (None:
    # every training cell), the age weight of its up-weighted twin, how often its curves are read.
    # On a CPU the quick profile keeps the paper's epochs and optimiser steps with a small batch and
    # a fresh draw of cells each epoch; what that leaves out (cells per step) is stated on the page.
    budget_epochs: int = 1000
    budget_batch_size: int = 4096
    budget_cells_per_epoch: int | None = None
    budget_age_weight: float = 100.0
    budget_monitor_every: int = 20

    def sections(self) -> dict:
        """Every section's parameters under this profile, as plain data."""
        kl = dict(zip(("zero_epochs", "rise_epochs", "hold_epochs"), self.kl_cycle))
        lr = paper.TRAINING["lr"]
        vae = {"batch_size": self.batch_size, "lr": lr, "t0": self.t0, "kl_cycle": kl,
               "checkpoint_every": self.checkpoint_every, "amp": self.amp}
        return {
            "simulate": {"cell_fraction": self.cell_fraction, "n_genes": self.n_genes,
                         "min_cells_per_donor": self.min_cells_per_donor},
            "data": {"stream_sample_cells": self.stream_sample_cells},
            "svd": {"n_components": self.svd_components, "max_cells_plot": 20_000, "ridge_alphas": _RIDGE_ALPHAS,
                    "linalg_backend": self.linalg_backend, "stream_every_cell": self.stream_every_cell},
            "baselines": {
                "elastic_net": {"n_alphas": self.enet_n_alphas, "l1_ratios": list(self.enet_l1_ratios), "n_splits": 5,
                                "max_cells": self.max_cells_fit},
                "pseudocells": {"n_per_donor": self.pseudocells_per_donor,
                                "cells_per_pseudocell": self.cells_per_pseudocell},
                "mlp_grid": _scaled(paper.MLP_GRID, width=self.mlp_width_scale),
                "mlp_epochs": self.mlp_epochs,
                "batch_size": self.batch_size,
                "dropout": paper.TRAINING["mlp_dropout"],
                "early_stopping": None,
                "amp": self.amp,
            },
            "nmf": {
                "input": "raw",  # the paper factorises raw counts; "log1p" uses log-normalised counts
                "n_components": self.nmf_components,
                "max_iter": self.nmf_max_iter,
                "mlp": {"hidden": [max(4, int(round(5000 * self.mlp_width_scale)))] * 3, "lr": lr},
                "mlp_epochs": self.mlp_epochs,
                "batch_size": self.batch_size,
                "amp": self.amp,
                "linalg_backend": self.linalg_backend,
                "stream_every_cell": self.stream_every_cell,
            },
            "vae": {
                "gaussian_grid": _scaled(paper.GAUSSIAN_VAE_GRID, width=self.vae_width_scale,
                                         epochs=self.vae_epoch_scale),
                "poisson_grid": _scaled(paper.POISSON_VAE_GRID, width=self.vae_width_scale,
                                        epochs=self.poisson_epoch_scale),
                **vae,
                "experiments": {"row": self.exp_row, "batch_size": self.exp_batch_size,
                                "age_weights": list(self.exp_age_weights), "monitor_cells": self.exp_monitor_cells,
                                "nmf_iter": self.exp_nmf_iter,
                                "budget": {"epochs": self.budget_epochs, "batch_size": self.budget_batch_size,
                                           "cells_per_epoch": self.budget_cells_per_epoch,
                                           "age_weight": self.budget_age_weight,
                                           "monitor_every": self.budget_monitor_every,
                                           # the paper's schedules where the run is long enough for them
                                           **({"kl_cycle": dict(paper.TRAINING["kl_cycle"]), "t0": paper.TRAINING["t0"]}
                                              if self.budget_epochs >= 2 * sum(paper.TRAINING["kl_cycle"].values())
                                              else {"kl_cycle": kl, "t0": self.t0})}},
            },
            "dae": {"grid": _scaled(paper.DAE_GRID, width=self.vae_width_scale, epochs=self.vae_epoch_scale), **vae},
        }


SETTINGS = {
    # Seconds per chapter: proves the plumbing, not the science.
    "smoke": Profile(cell_fraction=0.004, n_genes=200, min_cells_per_donor=12, mlp_width_scale=0.01,
                     vae_width_scale=0.1, vae_epoch_scale=0.03, poisson_epoch_scale=0.01, mlp_epochs=3,
                     batch_size=256, svd_components=8, nmf_components=6, nmf_max_iter=60, enet_n_alphas=5,
                     enet_l1_ratios=(0.5, 1.0), pseudocells_per_donor=5, cells_per_pseudocell=8,
                     max_cells_fit=3000, checkpoint_every=2, kl_cycle=(1, 1, 1), t0=2,
                     exp_row=0, exp_batch_size=64, exp_monitor_cells=200, exp_nmf_iter=20, stream_sample_cells=3000,
                     stream_every_cell=True,
                     budget_epochs=12, budget_batch_size=16, budget_cells_per_epoch=64, budget_monitor_every=4),
    # The default book: the paper's designs on ~10k cells x 2,000 genes, narrower and shorter.
    # The KL cycle and the restart period shrink with the epochs (5 + 5 + 5 and 10 instead of
    # 20 + 10 + 10 and 20), so that a 20-epoch run still sees the KL term at full weight.
    "quick": Profile(cell_fraction=0.05, n_genes=2000, min_cells_per_donor=20, mlp_width_scale=0.1,
                     vae_width_scale=1.0, vae_epoch_scale=0.2, poisson_epoch_scale=0.06, mlp_epochs=30,
                     batch_size=1024, svd_components=100, nmf_components=100, nmf_max_iter=100, enet_n_alphas=20,
                     enet_l1_ratios=(0.1, 0.5, 0.9, 1.0), pseudocells_per_donor=10, cells_per_pseudocell=30,
                     max_cells_fit=20_000, checkpoint_every=10, kl_cycle=(5, 5, 5), t0=10,
                     exp_row=1, exp_batch_size=256, exp_monitor_cells=2000, exp_nmf_iter=30, amp=True,
                     # 33 steps of 16 cells per epoch x 1,000 epochs = the paper's 33,000 steps (its
                     # Table 3 run: 133,323 training cells at batch 4,096). Measured on the 2-core
                     # development CPU: 5.8 ms a step at batch 16, 8.9 at 32 (one core each), so the two
                     # paper-budget runs take ~3 min side by side at batch 16 and ~5 at batch 32.
                     budget_epochs=1000, budget_batch_size=16, budget_cells_per_epoch=33 * 16,
                     # A streamed file's per-donor sample for the cell-level models: 25,000 cells (2.5 x the
                     # quick cohort's own). Measured at 1 M cells x 2,000 genes (1,068 non-zeros a cell) with
                     # 50,000: the baselines chapter peaked at 4.85 GB over its kernel and 2 workers, past
                     # the 4 GB budget; the peak grows with the sample, not with the file.
                     stream_sample_cells=25_000),
    # The paper's exact settings: 189,423 cells x 17,658 genes, full widths and epochs, batch 4096.
    "paper": Profile(cell_fraction=1.0, n_genes=paper.TEXT["n_genes"], min_cells_per_donor=0, mlp_width_scale=1.0,
                     vae_width_scale=1.0, vae_epoch_scale=1.0, poisson_epoch_scale=1.0,
                     mlp_epochs=paper.TRAINING["mlp_epochs"], batch_size=paper.TRAINING["batch_size"],
                     svd_components=100, nmf_components=100, nmf_max_iter=200, enet_n_alphas=20,
                     enet_l1_ratios=(0.1, 0.5, 0.9, 1.0), pseudocells_per_donor=100, cells_per_pseudocell=50,
                     max_cells_fit=None, checkpoint_every=10, amp=True, stream_every_cell=True),
}

#: Every profile's section parameters, as plain data (what results files record).
PROFILES = {name: profile.sections() for name, profile in SETTINGS.items()}


def _plain(value):
    """Tuples as lists, recursively: section parameters are plain JSON-like data (what results files record)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class CVSettings:
    """The conclusion page (``summary``): repeated donor-grouped CV over all donors, every fit refitted
    per fold on the training fold's donors only. Every model of a fold is fitted on the same cells:
    those of the training donors, at most ``cells_per_donor`` each (None: all; ``crossval.fit_cells``).
    Per-fold models are smaller than the chapters' (components, iterations, epochs) so that folds x
    repeats fit the time budget; the page lists the differences. Models are built from these by the
    recipes registry (``crossval.cv_settings``)."""

    folds: int  # donor folds per repeat (age-stratified)
    repeats: int  # repeats, each dealing new folds
    max_cells: int  # training cells of the ground-truth refits of the NMF (the CV: cells_per_donor)
    en_max_cells: int  # training cells of the ground-truth refit of the cell elastic net
    en_alphas: int  # elastic-net penalties per L1 ratio
    en_l1: tuple  # elastic-net L1 ratios tried
    inner_splits: int  # inner CV folds over the training fold's donors (penalties, probes)
    svd_k: int  # SVD components (then a ridge on donor-mean scores)
    nmf_k: int  # NMF programmes
    nmf_iter: int  # NMF iterations
    mlp_hidden: tuple  # MLP widths (cell level and on NMF usages)
    mlp_epochs: int  # MLP epochs
    batch_size: int  # cells per optimiser step of the torch models
    pseudocells: dict  # n_per_donor pseudocells of cells_per_pseudocell summed cells
    vae: dict  # the VAE clock: hidden, latent, epochs, max_cells, likelihood ("auto": Poisson on counts)
    probe_alphas: int  # penalties of the donor-level probes (SVD ridge, VAE clock's elastic net)
    boot: int  # bootstrap resamples of donors for intervals and paired differences
    recovery_k: tuple  # k of precision / recall at k of the planted age genes
    cells_per_donor: int | None = None  # every CV model's training cells per donor at most (None: all)

    def section(self, profile: Profile) -> dict:
        """The ``summary`` section's parameters, with the profile's device-path settings."""
        return {**_plain(dataclasses.asdict(self)), "amp": profile.amp, "linalg_backend": profile.linalg_backend}


CV = {
    "smoke": CVSettings(folds=3, repeats=2, max_cells=600, en_max_cells=600, en_alphas=5, en_l1=(0.5,), inner_splits=3,
                        svd_k=5, nmf_k=4, nmf_iter=30, mlp_hidden=(16, 16), mlp_epochs=2, batch_size=256,
                        pseudocells={"n_per_donor": 4, "cells_per_pseudocell": 8},
                        vae={"hidden": [32, 16], "latent": 4, "epochs": 2, "max_cells": 600, "likelihood": "auto"},
                        probe_alphas=10, boot=500, recovery_k=(5, 10)),
    "quick": CVSettings(folds=5, repeats=3, max_cells=1500, en_max_cells=1500, en_alphas=8, en_l1=(0.5,),
                        inner_splits=3, svd_k=20, nmf_k=15, nmf_iter=40, mlp_hidden=(100, 100), mlp_epochs=6,
                        batch_size=256, pseudocells={"n_per_donor": 5, "cells_per_pseudocell": 30},
                        vae={"hidden": [128, 64], "latent": 16, "epochs": 10, "max_cells": 2000, "likelihood": "auto"},
                        probe_alphas=20, boot=2000, recovery_k=(20, 60, 100)),
    "paper": CVSettings(folds=5, repeats=5, max_cells=20_000, en_max_cells=10_000, en_alphas=20,
                        en_l1=(0.1, 0.5, 0.9, 1.0), inner_splits=5, svd_k=100, nmf_k=100, nmf_iter=200,
                        mlp_hidden=(500, 500), mlp_epochs=30, batch_size=4096,
                        pseudocells={"n_per_donor": 100, "cells_per_pseudocell": 50},
                        vae={"hidden": [300, 150], "latent": 100, "epochs": 100, "max_cells": 20_000, "likelihood": "auto"},
                        probe_alphas=20, boot=2000, recovery_k=(50, 200, 500), cells_per_donor=100),
}
for _name, _cv in CV.items():
    PROFILES[_name]["summary"] = _cv.section(SETTINGS[_name])


@dataclass(frozen=True)
class RealdataSettings:
    """The real-donor chapter (rows are donors, not cells): its models are sized for a few hundred rows.
    Each model's block of the section is the recipe settings of the registry (level ``"donors"``)."""

    n_repeats: int  # repeats of the 5-fold age-stratified CV, each dealing new folds
    en_alphas: int  # elastic-net penalties per L1 ratio
    en_l1: tuple  # elastic-net L1 ratios tried
    mlp_hidden: tuple  # MLP widths
    mlp_epochs: int  # MLP epochs
    svd_k: int  # SVD components (then a ridge on the scores)
    nmf_k: int  # NMF programmes
    nmf_iter: int  # NMF iterations
    nmf_hidden: tuple  # widths of the MLP on NMF usages
    vae_hidden: tuple  # Gaussian VAE encoder widths
    vae_latent: int  # Gaussian VAE latent dimensions
    vae_epochs: int  # Gaussian VAE epochs
    kl_cycle: tuple  # its cyclical KL weight: epochs at 0 / rising / at 1
    t0: int  # its cosine warm-restart period (epochs)
    max_donors: int | None = None  # donors per cell type at most, drawn within datasets (None: every donor)
    max_genes: int | None = None  # most variable genes at most (None: every gene)
    batch_size: int = 64  # donors per optimiser step of the torch models
    n_jobs: int = 2  # worker processes for the independent fits

    def section(self) -> dict:
        """The ``realdata`` section's parameters."""
        mlp = {"hidden": list(self.mlp_hidden), "dropout": 0.4, "epochs": self.mlp_epochs, "lr": 1e-3,
               "batch_size": self.batch_size}
        kl = dict(zip(("zero_epochs", "rise_epochs", "hold_epochs"), self.kl_cycle))
        return {
            "n_splits": 5, "n_repeats": self.n_repeats, "n_jobs": self.n_jobs,
            "max_donors": self.max_donors, "max_genes": self.max_genes,
            "linalg_backend": "auto",  # NMF / SVD: torch on CUDA; HALS NMF, ARPACK SVD on a CPU
            "models": ["null", "elastic_net", "mlp", "svd_ridge", "nmf_mlp", "vae_gaussian"],
            # CV inside each cohort and leave-one-cohort-out on per-cohort centred genes: is the
            # cross-cohort collapse a batch effect? (the cheap models; the page says which)
            "by_cohort_models": ["null", "elastic_net", "svd_ridge"],
            "elastic_net": {"n_alphas": self.en_alphas, "l1_ratios": list(self.en_l1), "eps": 1e-2, "n_splits": 5,
                            "max_iter": 2000, "tol": 1e-4},
            "mlp": mlp,
            "svd_ridge": {"n_components": self.svd_k},
            "nmf_mlp": {**mlp, "hidden": list(self.nmf_hidden), "n_components": self.nmf_k, "max_iter": self.nmf_iter},
            "vae_gaussian": {"hidden": list(self.vae_hidden), "latent": self.vae_latent, "age_hidden": [20, 20],
                             "dropout": 0.0, "epochs": self.vae_epochs, "lr": 1e-3, "batch_size": self.batch_size,
                             "t0": self.t0, "kl_cycle": kl},
        }


REALDATA = {
    "smoke": RealdataSettings(n_repeats=1, en_alphas=4, en_l1=(0.5,), mlp_hidden=(16,), mlp_epochs=3, svd_k=5, nmf_k=4,
                              nmf_iter=30, nmf_hidden=(8,), vae_hidden=(16,), vae_latent=4, vae_epochs=2,
                              kl_cycle=(1, 1, 1), t0=2, max_donors=120, max_genes=300, n_jobs=1),
    "quick": RealdataSettings(n_repeats=2, en_alphas=8, en_l1=(0.5, 0.9), mlp_hidden=(64, 64), mlp_epochs=20, svd_k=20,
                              nmf_k=10, nmf_iter=40, nmf_hidden=(32, 32), vae_hidden=(128, 64), vae_latent=16,
                              vae_epochs=20, kl_cycle=(5, 5, 5), t0=10, batch_size=128),
    "paper": RealdataSettings(n_repeats=5, en_alphas=20, en_l1=(0.1, 0.5, 0.9, 1.0), mlp_hidden=(500, 500),
                              mlp_epochs=60, svd_k=100, nmf_k=50, nmf_iter=200, nmf_hidden=(500, 500),
                              vae_hidden=(300, 100), vae_latent=50, vae_epochs=100, kl_cycle=(20, 10, 10), t0=20),
}
for _name, _rd in REALDATA.items():
    PROFILES[_name]["realdata"] = _rd.section()


def _acceleration(n_genes, cell_fraction, min_cells, n_per_group, models, folds, inner, alphas, en_max_cells,
                  pseudocells, boot, power_n, power_draws, donor_counts, cell_counts, size_draws, real_alphas,
                  real_max_donors=None, real_max_genes=None, parallel=True):
    """The age-acceleration chapter: a simulated study with planted cases, clocks fitted on its controls."""
    clock = {"folds": folds, "repeats": 1, "inner_splits": inner, "en_l1": [0.5], "en_alphas": alphas,
             "en_max_cells": en_max_cells, "pseudocells": pseudocells, "boot": boot}
    return {"n_genes": n_genes, "cell_fraction": cell_fraction, "min_cells_per_donor": min_cells,
            "n_per_group": n_per_group, "extra_years": 10.0, "models": models, "clock": clock,
            "cell_type_model": "pseudobulk_elastic_net", "boot": boot, "power_n": power_n,
            "power_draws": power_draws, "donor_counts": donor_counts, "cell_counts": cell_counts,
            "size_draws": size_draws, "real_clock": {**clock, "en_alphas": real_alphas},
            "real_max_donors": real_max_donors, "real_max_genes": real_max_genes,
            "parallel": parallel}  # CV folds in worker processes (not worth their start-up on tiny data)


_AGG = ["pseudobulk_elastic_net", "pseudocell_elastic_net", "elastic_net"]
PROFILES["smoke"]["acceleration"] = _acceleration(
    200, 0.004, 12, 12, ["pseudobulk_elastic_net"], 3, 3, 4, 600, {"n_per_donor": 4, "cells_per_pseudocell": 8},
    200, [5, 10, 20, 40], 50, [15, 40], [5, None], 1, 4, real_max_donors=150, real_max_genes=200, parallel=False)
PROFILES["quick"]["acceleration"] = _acceleration(
    1000, 0.05, 20, 40, _AGG, 5, 3, 8, 2000, {"n_per_donor": 5, "cells_per_pseudocell": 30},
    1000, [5, 10, 20, 30, 40, 60, 80, 120], 300, [10, 20, 40, 69], [5, 20, None], 1, 8, real_max_genes=1000)
PROFILES["paper"]["acceleration"] = _acceleration(
    17658, 1.0, 0, 100, _AGG, 5, 5, 20, 20_000, {"n_per_donor": 100, "cells_per_pseudocell": 50},
    2000, [5, 10, 20, 30, 40, 60, 80, 120, 200], 1000, [10, 20, 35, 50, 69], [5, 10, 20, 50, 100, 500, None], 5, 20)


def section_params(profile: str, section: str) -> dict:
    """A copy of the parameters of ``section`` under ``profile``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILE_NAMES)}")
    if section not in PROFILES[profile]:
        raise ValueError(f"unknown section {section!r}: use one of {', '.join(SECTIONS)}")
    return copy.deepcopy(PROFILES[profile][section])
