"""Shared fixtures: small AnnData cohorts written to temporary .h5ad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see neuroage_utils/__init__.py

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp


def make_adata(n_donors=12, cells_per_donor=15, n_genes=30, seed=0, donor_key="donor_id", age_key="age",
               counts=True):
    """A tiny cohort with counts and one age per donor; genes 0-4 rise with age."""
    rng = np.random.default_rng(seed)
    ages = np.linspace(25, 90, n_donors).round()
    donors = np.repeat([f"D{i:02d}" for i in range(n_donors)], cells_per_donor)
    cell_ages = np.repeat(ages, cells_per_donor)
    rate = np.full((len(donors), n_genes), 2.0)
    rate[:, :5] *= np.exp((cell_ages[:, None] - 55) / 40)
    X = rng.poisson(rate).astype(np.float32)
    if not counts:
        X = np.log1p(X) + 0.01
    obs = pd.DataFrame({donor_key: donors, age_key: cell_ages}, index=[f"c{i}" for i in range(len(donors))])
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)


@pytest.fixture
def tiny_adata():
    return make_adata()


@pytest.fixture
def h5ad_path(tmp_path):
    def write(adata, name="cohort.h5ad"):
        path = tmp_path / name
        adata.write_h5ad(path)
        return path

    return write


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP synchronisation costs (large on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_blas_thread():
    """Tiny matrices: one BLAS thread. Two OpenBLAS threads on a busy 2-core machine made 600 x 200
    products about 100x slower (threads wait for a core), and gain nothing at this size."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def age_counts(n_donors=40, cells=30, n_genes=200, n_age_genes=10, effect=0.6, seed=0, uneven=False,
               same_direction=False):
    """Poisson counts in which the first ``n_age_genes`` genes' log-means move linearly with age.

    Returns counts (CSR float32), per-cell ages and donor ids, and the indices of the age genes.
    ``uneven`` gives donors between cells/3 and 3*cells cells, as real donors are unequal;
    ``same_direction`` makes every age gene rise with age (otherwise the sign is random).
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(max(2, cells // 3), 3 * cells, n_donors) if uneven else np.full(n_donors, cells)
    donor_ids = np.array([f"D{i:02d}" for i in range(n_donors)])
    donor_age = rng.uniform(25, 90, n_donors)
    donors = np.repeat(donor_ids, sizes)
    ages = np.repeat(donor_age, sizes)
    base = rng.lognormal(0.5, 0.7, n_genes)
    beta = np.zeros(n_genes)
    n_age_genes = min(n_age_genes, n_genes)
    beta[:n_age_genes] = effect if same_direction else rng.choice([-1.0, 1.0], n_age_genes) * effect
    z = (ages - 57.5) / 19.0
    library = rng.lognormal(0.0, 0.3, len(ages))[:, None]
    counts = rng.poisson(library * base * np.exp(beta * z[:, None])).astype(np.float32)
    return sp.csr_matrix(counts), ages, donors, np.arange(n_age_genes)


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """The smoke-profile book, executed and rendered once per session: (out dir, the run's process)."""
    out = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run([sys.executable, "-m", "neuroage_utils.run", "--profile", "smoke", "--device", "cpu",
                           "--out", str(out)], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc
