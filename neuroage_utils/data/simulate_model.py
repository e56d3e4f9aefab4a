"""The simulator's generative model: every per-gene and per-donor quantity, and the cells' design.

The equations are on the book's page *The simulated cohort* (``book/simulation.md``); this module
draws everything there except the counts themselves (``simulate_counts``). Each component has its own
random stream (:func:`_rng`), so changing one part leaves the others intact.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from neuroage_utils.errors import DataValidationError

__all__ = ["N_GENES_FULL", "EXTRA_YEARS", "CELL_TYPES", "AGE_PATTERNS", "SimulationParameters", "DEFAULT_PARAMETERS",
           "CALIBRATION", "age_shape"]

#: Genes in the study's matrix; the simulator's gene universe always has this many genes.
N_GENES_FULL = 17658

#: Optional column of a ``donors`` table: years added to a donor's biological age (a planted age
#: acceleration of cases; the age genes follow it, nothing else does). Recorded in ``uns['simulation']['donors']``.
EXTRA_YEARS = "extra_years"

#: Neuron subtypes: (name, class, share of a donor's neurons on average, relative library size).
CELL_TYPES = (
    ("Ex-L2/3", "excitatory", 0.24, 1.10),
    ("Ex-L4", "excitatory", 0.12, 1.00),
    ("Ex-L5/6", "excitatory", 0.16, 1.30),
    ("Ex-L5/6-CC", "excitatory", 0.12, 1.20),
    ("In-PV", "inhibitory", 0.10, 0.90),
    ("In-SST", "inhibitory", 0.08, 0.80),
    ("In-VIP", "inhibitory", 0.10, 0.75),
    ("In-Rosehip", "inhibitory", 0.08, 0.70),
)

#: Shapes of the age response (see :func:`age_shape`).
AGE_PATTERNS = ("linear", "late_onset", "plateau")

# Reference ages of the age shapes: every shape is 0 at AGE_LOW and 1 at AGE_HIGH (the cohort's span).
AGE_LOW, AGE_HIGH = 25.0, 95.0
LATE_ONSET_AGE = 60.0  # late-onset genes are flat before this age
PLATEAU_SCALE = 12.0  # years: plateau genes change fast in early adulthood, then saturate


@dataclass(frozen=True)
class SimulationParameters:
    """Every number of the generative model (the maths and sources: book/simulation.md).

    Log scales are natural logs. ``simulate_cohort`` records them all in ``uns['simulation']``.
    """

    # Sequencing depth: log library size ~ N(log(median * type factor) + donor depth, sd).
    median_library_size: float = 4000.0
    library_log_sd: float = 0.5
    donor_depth_log_sd: float = 0.2
    # Gene universe: log relative abundance ~ N(0, sd); NB inverse dispersion theta per gene.
    gene_log_abundance_sd: float = 1.8
    dispersion_median: float = 4.0
    dispersion_abundance_slope: float = 0.25
    dispersion_log_sd: float = 0.5
    # Cell types: class markers (excitatory vs inhibitory) and subtype markers.
    class_marker_fraction: float = 0.04
    class_marker_lfc_sd: float = 1.0
    subtype_marker_fraction: float = 0.015
    subtype_marker_lfc_median: float = 1.0
    composition_concentration: float = 30.0
    # Donor random effects: low-rank factors plus an idiosyncratic per-gene term.
    n_donor_factors: int = 6
    donor_factor_sd: float = 0.15
    donor_gene_sd: float = 0.20
    # Biological age = chronological age + N(0, sd).
    biological_age_sd: float = 6.5
    # Cell-state programs unrelated to age and donor.
    n_cell_programs: int = 4
    cell_program_fraction: float = 0.03
    cell_program_sd: float = 0.4
    # Age genes.
    age_gene_fraction: float = 0.03
    age_pattern_weights: tuple = (0.5, 0.25, 0.25)
    age_subtype_specific_fraction: float = 0.3
    age_lfc_median: float = 1.0
    age_lfc_log_sd: float = 0.5
    age_down_fraction: float = 0.55
    # Sex-chromosome genes: Y-linked (male only) and XIST-like (female only).
    n_y_genes: int = 5
    n_xist_genes: int = 1
    sex_lfc: float = 8.0

    def as_dict(self) -> dict:
        """Plain, h5ad-serialisable dict (tuples become lists)."""
        out = asdict(self)
        out["age_pattern_weights"] = dict(zip(AGE_PATTERNS, map(float, self.age_pattern_weights)))
        return out


DEFAULT_PARAMETERS = SimulationParameters()

# Measured by bench/calibrate_simulation.py with DEFAULT_PARAMETERS on the quick size
# (cell_fraction=0.05, n_genes=2000), seeds 0-4; quoted in the module docstring. Documentation of
# the defaults, not a result of any particular run.
CALIBRATION = {
    "script": "bench/calibrate_simulation.py --seeds 0 1 2 3 4",
    "cell_fraction": 0.05,
    "n_genes": 2000,
    "seeds": [0, 1, 2, 3, 4],
    "median_umis_per_cell": [2923.0, 2838.0, 2697.0, 2943.0, 2818.0],
    "fraction_zeros": [0.466, 0.47, 0.475, 0.459, 0.466],
    "svd_top_abs_r_cell": [0.321, 0.464, 0.433, 0.573, 0.373],
    "svd_top_abs_r_donor_mean": [0.591, 0.664, 0.513, 0.709, 0.415],
    "elastic_net_cell_test_mae": [7.975, 8.877, 12.405, 10.087, 13.947],
    "elastic_net_pseudobulk_test_mae": [6.077, 9.355, 8.432, 6.812, 4.458],
    "null_test_mae": [15.323, 15.323, 15.323, 15.323, 15.323],
    "oracle_test_mae": [4.625, 6.125, 4.346, 3.473, 4.526],
    "study": {"svd_top_abs_r_cell": 0.43, "linear_baseline_test_mae": [8.0, 13.0], "null_test_mae": 15.3},
}


# --------------------------------------------------------------------------------------------------
# The study's donors
# --------------------------------------------------------------------------------------------------


def _validate_donors(donors: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Check a user donor table; fill ``sex`` (random) and ``split`` ('unassigned') when absent."""
    if not isinstance(donors, pd.DataFrame):
        raise DataValidationError(
            f"donors must be a pandas DataFrame, not {type(donors).__name__}: pass one row per donor"
        )
    missing = [c for c in ("donor_id", "age", "n_cells") if c not in donors.columns]
    if missing:
        raise DataValidationError(
            f"donors table lacks column(s) {', '.join(missing)}: give donor_id, age (years) and n_cells per donor"
        )
    if len(donors) == 0:
        raise DataValidationError("donors table is empty: pass at least one donor")
    out = donors.reset_index(drop=True).copy()
    out["donor_id"] = out["donor_id"].astype(str)
    if out["donor_id"].duplicated().any():
        dup = out.loc[out["donor_id"].duplicated(), "donor_id"].iloc[0]
        raise DataValidationError(f"donor {dup} appears twice in the donors table: give one row per donor")
    ages = pd.to_numeric(out["age"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(ages).all() or (ages < 0).any():
        bad = out["donor_id"][~(np.isfinite(ages) & (ages >= 0))].iloc[0]
        raise DataValidationError(f"donor {bad} has a missing, non-numeric or negative age: ages are years >= 0")
    out["age"] = ages
    n_cells = pd.to_numeric(out["n_cells"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(n_cells).all() or (n_cells < 0).any() or (n_cells != np.round(n_cells)).any():
        bad = out["donor_id"][~(np.isfinite(n_cells) & (n_cells >= 0) & (n_cells == np.round(n_cells)))].iloc[0]
        raise DataValidationError(f"donor {bad} has an invalid n_cells: give a whole number of cells >= 0")
    out["n_cells"] = n_cells.astype(np.int64)
    if "sex" in out.columns:
        sex = out["sex"].astype(str).str.strip().str.lower().replace({"f": "female", "m": "male"})
        if not sex.isin(["female", "male"]).all():
            bad = out["sex"][~sex.isin(["female", "male"])].iloc[0]
            raise DataValidationError(f"donors table has sex {bad!r}: use 'female' or 'male' (or drop the column)")
        out["sex"] = sex
    else:  # sex drives only the sex-chromosome genes; an unknown sex is drawn at random
        out["sex"] = np.where(rng.random(len(out)) < 0.5, "female", "male")
    out["split"] = out["split"].astype(str) if "split" in out.columns else "unassigned"
    columns = ["donor_id", "sex", "age", "n_cells", "split"]
    if EXTRA_YEARS in out.columns:  # planted age acceleration (see _donor_truth)
        extra = pd.to_numeric(out[EXTRA_YEARS], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(extra).all():
            raise DataValidationError(f"donors table has a missing or non-numeric {EXTRA_YEARS}: give years (0 for none)")
        out[EXTRA_YEARS] = extra
        columns.append(EXTRA_YEARS)
    return out[columns]


# --------------------------------------------------------------------------------------------------
# Ground truth: age shapes, gene universe, donors
# --------------------------------------------------------------------------------------------------


def age_shape(pattern: str, age) -> np.ndarray:
    """The age response s(a) of a pattern: 0 at 25 years, 1 at 95 years.

    - ``linear``: s(a) = (a - 25) / 70;
    - ``late_onset``: flat until 60, then linear: s(a) = max(a - 60, 0) / 35;
    - ``plateau``: fast change in early adulthood that saturates:
      s(a) = (1 - exp(-max(a - 25, 0) / 12)) / (1 - exp(-70 / 12)).

    An age gene's log expression moves by ``beta * s(biological age)``; ``beta`` is the log-fold
    change between 25 and 95 years, so ``var['age_effect'] = beta / 7`` is the mean log-fold
    change per decade over that span for every pattern.
    """
    a = np.asarray(age, dtype=float)
    if pattern == "linear":
        return (a - AGE_LOW) / (AGE_HIGH - AGE_LOW)
    if pattern == "late_onset":
        return np.maximum(a - LATE_ONSET_AGE, 0.0) / (AGE_HIGH - LATE_ONSET_AGE)
    if pattern == "plateau":
        rise = 1.0 - np.exp(-np.maximum(a - AGE_LOW, 0.0) / PLATEAU_SCALE)
        return rise / (1.0 - np.exp(-(AGE_HIGH - AGE_LOW) / PLATEAU_SCALE))
    raise ValueError(f"unknown age pattern {pattern!r}: use one of {', '.join(AGE_PATTERNS)}")


def _rng(seed: int, name: str, *key: int) -> np.random.Generator:
    """An independent stream per named component, so changing one part leaves the others intact."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()), *key)))


def _subset(rng: np.random.Generator, pool: np.ndarray, fraction: float) -> np.ndarray:
    return rng.choice(pool, size=int(round(fraction * len(pool))), replace=False)


def _gene_universe(seed: int, p: SimulationParameters) -> dict:
    """Draw every per-gene quantity for the full universe of ``N_GENES_FULL`` genes."""
    G, T = N_GENES_FULL, len(CELL_TYPES)
    all_genes = np.arange(G)

    abundance = _rng(seed, "abundance").normal(0.0, p.gene_log_abundance_sd, G)
    z = abundance / p.gene_log_abundance_sd
    rng = _rng(seed, "dispersion")
    theta = np.exp(np.log(p.dispersion_median) + p.dispersion_abundance_slope * z + rng.normal(0, p.dispersion_log_sd, G))

    # Cell-type log-fold changes: a class axis (excitatory up / inhibitory down, or the reverse) and
    # markers up in one subtype.
    rng = _rng(seed, "cell_types")
    type_lfc = np.zeros((T, G))
    is_excitatory = np.array([c == "excitatory" for _, c, _, _ in CELL_TYPES])
    class_genes = _subset(rng, all_genes, p.class_marker_fraction)
    class_lfc = rng.normal(0.0, p.class_marker_lfc_sd, len(class_genes))
    type_lfc[np.ix_(is_excitatory, class_genes)] += class_lfc / 2
    type_lfc[np.ix_(~is_excitatory, class_genes)] -= class_lfc / 2
    for t in range(T):
        markers = _subset(rng, all_genes, p.subtype_marker_fraction)
        type_lfc[t, markers] += p.subtype_marker_lfc_median * np.exp(rng.normal(0.0, 0.5, len(markers)))

    # Sex-chromosome genes, chosen among well-expressed genes so they are visible (as XIST, UTY, ...).
    rng = _rng(seed, "sex")
    expressed = np.argsort(abundance)[::-1][: max(200, p.n_y_genes + p.n_xist_genes)]
    sex_genes = rng.choice(expressed, size=p.n_y_genes + p.n_xist_genes, replace=False)
    sex_lfc = np.zeros(G)  # log-fold change male vs female
    sex_lfc[sex_genes[: p.n_y_genes]] = p.sex_lfc
    sex_lfc[sex_genes[p.n_y_genes :]] = -p.sex_lfc

    # Donor factor loadings and cell-state programs.
    donor_loadings = _rng(seed, "donor_loadings").normal(0.0, p.donor_factor_sd, (p.n_donor_factors, G))
    rng = _rng(seed, "cell_programs")
    programs = np.zeros((p.n_cell_programs, G))
    for k in range(p.n_cell_programs):
        members = _subset(rng, all_genes, p.cell_program_fraction)
        programs[k, members] = rng.normal(0.0, p.cell_program_sd, len(members))

    # Age genes: drawn uniformly among non-sex genes, so most are lowly expressed, as in real data.
    rng = _rng(seed, "age_genes")
    candidates = np.setdiff1d(all_genes, sex_genes)
    age_genes = np.sort(_subset(rng, candidates, p.age_gene_fraction))
    n_age = len(age_genes)
    weights = np.asarray(p.age_pattern_weights, dtype=float)
    pattern_idx = rng.choice(len(AGE_PATTERNS), size=n_age, p=weights / weights.sum())
    specific = rng.random(n_age) < p.age_subtype_specific_fraction
    subtype_idx = np.where(specific, rng.integers(0, T, n_age), -1)
    sign = np.where(rng.random(n_age) < p.age_down_fraction, -1.0, 1.0)
    beta = np.zeros(G)
    beta[age_genes] = sign * p.age_lfc_median * np.exp(rng.normal(0.0, p.age_lfc_log_sd, n_age))
    pattern = np.full(G, "none", dtype=object)
    pattern[age_genes] = np.asarray(AGE_PATTERNS, dtype=object)[pattern_idx]
    subtype = np.full(G, "none", dtype=object)
    names = np.asarray([n for n, *_ in CELL_TYPES] + ["all"], dtype=object)
    subtype[age_genes] = names[subtype_idx]  # index -1 -> "all"

    return {
        "abundance": abundance,
        "theta": theta,
        "type_lfc": type_lfc,
        "sex_lfc": sex_lfc,
        "donor_loadings": donor_loadings,
        "programs": programs,
        "age_beta": beta,
        "age_genes": age_genes,
        "age_pattern_idx": pattern_idx,
        "age_subtype_idx": subtype_idx,
        "age_pattern": pattern,
        "age_subtype": subtype,
    }


def _age_lfc(genes: dict, biological_age: float) -> np.ndarray:
    """(types x age genes) log-fold change of every age gene at ``biological_age``."""
    shape = np.array([float(age_shape(pattern, biological_age)) for pattern in AGE_PATTERNS])
    lfc = genes["age_beta"][genes["age_genes"]] * shape[genes["age_pattern_idx"]]
    subtype = genes["age_subtype_idx"]
    in_type = (subtype[None, :] < 0) | (subtype[None, :] == np.arange(len(CELL_TYPES))[:, None])
    return np.where(in_type, lfc, 0.0)  # subtype-specific genes change only in their subtype


def _kept_genes(genes: dict, n_genes: int) -> tuple[np.ndarray, float]:
    """The ``n_genes`` most expressed genes of an average neuron (universe order) and their UMI share."""
    props = np.array([w for *_, w, _ in CELL_TYPES])
    lib = np.array([f for *_, f in CELL_TYPES])
    log_p = genes["abundance"] + genes["type_lfc"]
    p = np.exp(log_p - logsumexp(log_p, axis=1, keepdims=True))
    mean_profile = (props * lib) @ p / (props * lib).sum()
    kept = np.sort(np.argsort(mean_profile, kind="stable")[::-1][:n_genes])
    return kept, float(mean_profile[kept].sum())


def _donor_truth(donors: pd.DataFrame, seed: int, p: SimulationParameters) -> dict:
    """Per-donor latent quantities: biological age, composition, depth, random effects."""
    n = len(donors)
    rng = _rng(seed, "donors")
    bio_age = donors["age"].to_numpy(dtype=float) + rng.normal(0.0, p.biological_age_sd, n)
    # Planted acceleration: a donor's age genes behave as if it were `extra_years` older. Added after
    # the draw, so every donor keeps the same offset of biological from chronological age with or without it.
    if EXTRA_YEARS in donors.columns:
        bio_age = bio_age + donors[EXTRA_YEARS].to_numpy(dtype=float)
    props = np.array([w for *_, w, _ in CELL_TYPES])
    composition = rng.dirichlet(p.composition_concentration * props, size=n)
    depth = rng.normal(0.0, p.donor_depth_log_sd, n)
    factors = rng.normal(0.0, 1.0, (n, p.n_donor_factors))
    return {"biological_age": bio_age, "composition": composition, "depth": depth, "factors": factors}


def _donor_log_profiles(donors, truth, genes, kept, seed, p) -> np.ndarray:
    """log p[d, t, g]: each donor's expected share of UMIs per gene in each subtype (kept genes).

    eta = abundance + type + sex + donor random effect + age; p = softmax of eta over the whole
    universe, so a gene subset keeps the UMIs it would have in the full transcriptome.
    """
    n, T = len(donors), len(CELL_TYPES)
    out = np.empty((n, T, len(kept)), dtype=np.float32)
    noise_rng = _rng(seed, "donor_genes")
    male = donors["sex"].to_numpy() == "male"
    for d in range(n):
        donor_effect = truth["factors"][d] @ genes["donor_loadings"] + noise_rng.normal(0.0, p.donor_gene_sd, N_GENES_FULL)
        sex = np.minimum(genes["sex_lfc"], 0.0) if male[d] else -np.maximum(genes["sex_lfc"], 0.0)
        eta = (genes["abundance"] + sex + donor_effect) + genes["type_lfc"]
        eta[:, genes["age_genes"]] += _age_lfc(genes, truth["biological_age"][d])
        eta -= logsumexp(eta, axis=1, keepdims=True)
        out[d] = eta[:, kept]
    return out


def _cells(donors, truth, cell_fraction, min_cells_per_donor, seed, p) -> dict:
    """Per-cell design: donor, subtype, log library size, cell-state program scores."""
    n_per_donor = np.maximum(
        int(min_cells_per_donor), np.floor(donors["n_cells"].to_numpy() * cell_fraction + 0.5).astype(np.int64)
    )
    if (n_per_donor == 0).any():
        bad = donors["donor_id"].iloc[int(np.argmax(n_per_donor == 0))]
        raise DataValidationError(
            f"donor {bad} would get no cells at cell_fraction={cell_fraction:g}: raise min_cells_per_donor or cell_fraction"
        )
    rng = _rng(seed, "cells")
    donor_idx = np.repeat(np.arange(len(donors)), n_per_donor)
    n = len(donor_idx)
    # Subtype by inverse CDF of the donor's composition (vectorised categorical draw).
    cum = np.cumsum(truth["composition"], axis=1)[donor_idx]
    type_idx = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), len(CELL_TYPES) - 1)
    factors = np.array([f for *_, f in CELL_TYPES])
    props = np.array([w for *_, w, _ in CELL_TYPES])
    factors = factors / np.exp(props @ np.log(factors))  # geometric mean 1: median stays at the target
    log_lib = (
        np.log(p.median_library_size)
        + np.log(factors[type_idx])
        + truth["depth"][donor_idx]
        + rng.normal(0.0, p.library_log_sd, n)
    )
    scores = rng.normal(0.0, 1.0, (n, p.n_cell_programs))
    return {"n_per_donor": n_per_donor, "donor_idx": donor_idx, "type_idx": type_idx, "log_lib": log_lib, "scores": scores}

