"""Simulated studies with cases: the study's donors as controls, plus new controls and cases whose age
genes behave as if they were ``extra_years`` older (the simulator's ``extra_years`` column).

    python -m neuroage_utils.data.cases OUT_DIR   # OUT_DIR/controls.h5ad and OUT_DIR/study.h5ad

writes the small worked example of the README: 69 control donors to train a clock on, and a new study
of held-out controls and cases (``obs['group']``: ``control`` or ``case``; cases planted 10 years older).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils.data.simulate import EXTRA_YEARS, simulate_cohort
from neuroage_utils.paper import load_paper_cohort
from neuroage_utils.results import atomic_path

__all__ = ["TRAIN", "CONTROL", "CASE", "study_donors", "simulate_study", "write_example"]

TRAIN, CONTROL, CASE = "train", "control", "case"


def study_donors(n_per_group: int, extra_years: float, seed: int = 0) -> pd.DataFrame:
    """The study's 69 donors as training controls (``split`` train), plus ``n_per_group`` held-out
    controls and as many cases, with ages and neuron counts drawn from the study's donors; cases are
    ``extra_years`` older inside."""
    rng = np.random.default_rng(seed + 18)
    train = load_paper_cohort()[["donor_id", "age", "sex", "n_cells"]].assign(split=TRAIN, **{EXTRA_YEARS: 0.0})
    new = []
    for group, extra in ((CONTROL, 0.0), (CASE, float(extra_years))):
        pick = rng.integers(0, len(train), n_per_group)
        ages = np.clip(train["age"].to_numpy()[pick] + rng.uniform(-3, 3, n_per_group), 18, 99).round()
        new.append(pd.DataFrame({"donor_id": [f"{group.upper()}{i + 1:03d}" for i in range(n_per_group)],
                                 "age": ages, "sex": rng.choice(["female", "male"], n_per_group),
                                 "n_cells": train["n_cells"].to_numpy()[rng.integers(0, len(train), n_per_group)],
                                 "split": group, EXTRA_YEARS: extra}))
    return pd.concat([train, *new], ignore_index=True)


def simulate_study(P: dict, seed: int = 0):
    """The simulated study of :func:`study_donors` (``obs['split']``: train / control / case); ``P`` holds
    ``n_per_group``, ``extra_years``, ``cell_fraction``, ``n_genes`` and ``min_cells_per_donor``."""
    donors = study_donors(P["n_per_group"], P["extra_years"], seed)
    return simulate_cohort(cell_fraction=P["cell_fraction"], n_genes=P["n_genes"], seed=seed,
                           min_cells_per_donor=P["min_cells_per_donor"], donors=donors)


def write_example(out_dir, n_per_group: int = 20, extra_years: float = 10.0, seed: int = 0) -> tuple[Path, Path]:
    """Write ``controls.h5ad`` (the training controls) and ``study.h5ad`` (new controls and cases, with
    ``obs['group']``) into ``out_dir``; small enough to fit a clock in seconds."""
    study = simulate_study({"n_per_group": n_per_group, "extra_years": extra_years, "cell_fraction": 0.01,
                            "n_genes": 300, "min_cells_per_donor": 15}, seed)
    study.obs["group"] = study.obs["split"].astype(str).replace({TRAIN: CONTROL})
    split = study.obs["split"].astype(str).to_numpy()
    out = Path(out_dir)
    paths = []
    for name, mask in (("controls.h5ad", split == TRAIN), ("study.h5ad", split != TRAIN)):
        part = study[mask].copy()
        del part.uns["simulation"]  # the planted truth stays out of the example files
        with atomic_path(out / name) as tmp:
            part.write_h5ad(tmp)
        paths.append(out / name)
    return paths[0], paths[1]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m neuroage_utils.data.cases OUT_DIR", file=sys.stderr)
        return 2
    for path in write_example(argv[0]):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
