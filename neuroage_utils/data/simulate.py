"""The simulated cohort: the study's 69 real donors with simulated neuron transcriptomes.

The study's expression data are access-controlled (PsychENCODE / Synapse), so the book's default
data set is simulated. The donors are real: every simulated donor has the age, sex, split and
(scaled by ``cell_fraction``) number of neurons of one of the study's 69 control donors
(``cohort_data/paper_cohort.csv``). The expression is simulated from the generative model below,
whose ground truth is stored beside the counts, so every chapter can say how far a model is from
what is knowable.

Generative model
----------------
Indices: donor d, neuron i of donor d(i) and subtype t(i), gene g of a universe of G = 17,658
genes (the study's gene count). Logs are natural. Every default is a field of
:class:`SimulationParameters`.

*Genes.* Relative abundance a_g ~ N(0, 1.8^2) on the log scale: a heavy-tailed (log-normal) gene
mean spectrum in which the top 1% of genes carry ~30% of the UMIs and the most expressed gene
~2.5% (as MALAT1-like transcripts in nuclei). NB inverse dispersion theta_g = exp(log 4 + 0.25 z_g
+ N(0, 0.5^2)), z_g the standardised abundance (90% of genes between ~1.6 and ~10; variance
mu + mu^2 / theta): expressed genes are closer to Poisson, as in UMI data.

*Neuron subtypes.* Eight subtypes with shares of an average donor's neurons: excitatory Ex-L2/3
0.24, Ex-L4 0.12, Ex-L5/6 0.16, Ex-L5/6-CC 0.12; inhibitory In-PV 0.10, In-SST 0.08, In-VIP 0.10,
In-Rosehip 0.08 (about two thirds excitatory, the split reported for cortical snRNA-seq; the names
follow Ruzicka et al., the shares are round numbers, not fitted). A class axis (4% of genes,
log-fold change l ~ N(0, 1): +l/2 in excitatory, -l/2 in inhibitory neurons) and subtype markers
(1.5% of genes per subtype, up by 1.0 x exp(N(0, 0.5^2))) separate them. Each donor's composition
is pi_d ~ Dirichlet(30 pi), so the Ex-L2/3 share varies by ~0.08 (sd) between donors.

*Sequencing depth.* log L_i = log 4000 + log f_t + delta_d + N(0, 0.5^2): a log-normal library
size with the spread of 10x snRNA-seq (5-95% range ~1,500-10,000 UMIs over the full transcriptome),
subtype factors f_t (L5/6 neurons largest, interneurons smallest; geometric mean 1) and a donor
depth / sample-quality offset delta_d ~ N(0, 0.2^2).

*Donor random effects* (donors differ in ways unrelated to age: post-mortem interval, RNA quality,
genotype, medication, agonal state): D_dg = sum_k u_dk v_kg + e_dg with K = 6 factors,
u_dk ~ N(0, 1), loadings v_kg ~ N(0, 0.15^2) and an idiosyncratic e_dg ~ N(0, 0.2^2); ~0.42 log
units (sd) per gene between donors. Sex-chromosome genes: 5 Y-linked genes absent in women and one
XIST-like gene absent in men (log-fold change 8, among the 200 most abundant genes).

*Biological age.* b_d = age_d + N(0, 6.5^2): donors of one age are not equally old inside. The
expression carries no information on age beyond b_d, so predicting b_d itself (the oracle below)
is the floor of what the data allow; a model can beat it only by luck on a few donors or by
shrinking b_d towards the cohort's mean age.

*Age genes.* 3% of genes (530 of 17,658), drawn uniformly among non-sex genes (so most are lowly
expressed, as in real data). Each has a pattern s(b) (0 at 25, 1 at 95 years; see
:func:`age_shape`): ``linear`` (50%), ``late_onset`` (25%: flat until 60, then linear) or
``plateau`` (25%: changes in early adulthood, saturates after ~50); 30% change in one subtype
only (``age_subtype``), the others in every neuron (``all``). The log-fold change between 25 and
95 years is beta_g = +-1.0 x exp(N(0, 0.5^2)) (55% down: 95% of |beta| in ~0.4-2.7, i.e. 1.5- to
15-fold), and ``var['age_effect'] = beta_g / 7``, the mean log-fold change per decade.

*Cell states.* Four programs unrelated to age or donor (activity, stress, ...), each on 3% of
genes with loadings W_kg ~ N(0, 0.4^2), per-cell scores s_i ~ N(0, I).

*Counts.* eta_dtg = a_g + T_tg + S_sex(d),g + D_dg + beta_g s_g(b_d) [subtype matches];
p_dtg = exp(eta_dtg) / sum_g' exp(eta_dtg') over the whole universe (sequencing is
compositional: genes going up take UMIs from all others); mu_ig = L_i p_d(i)t(i)g
exp(s_i . W_g - |W_g|^2 / 2) (the offset makes the program term average 1); X_ig ~ NB(mu_ig,
theta_g) (gamma-Poisson). The draw is exact: one uniform U per entry gives 0 when
U <= P(0) = (1 + mu / theta)^-theta (~90% of entries, at the cost of one log and one exp), else
the NB inverse CDF at U (means above 5: gamma-Poisson conditioned on > 0).

*Gene subsets.* ``n_genes < 17,658`` keeps the ``n_genes`` genes with the highest mean share in
an average neuron, and drops the other genes' UMIs, as filtering a real matrix to its expressed
genes does: UMIs per cell shrink to the kept share (73% for 2,000 genes) and the kept matrix is
denser (47% zeros for 2,000 genes, 88% for all genes). All gene- and donor-level truth is drawn
for the full universe, so it does not depend on ``n_genes`` or ``cell_fraction``.

Not simulated: ambient RNA, doublets, batches beyond the donor effects, age-related changes in
subtype composition, and heterogeneity of biological age between a donor's cells.

Ground truth and the oracle
---------------------------
``var``: ``mean_expression`` (expected UMIs per cell, averaged over the simulated cells),
``dispersion`` (theta_g), ``age_effect`` (beta_g / 7 per decade; 0 for other genes), ``age_gene``,
``age_pattern`` (``none``, ``linear``, ``late_onset``, ``plateau``), ``age_subtype`` (a subtype,
``all``, or ``none``), ``sex_effect`` (log-fold change male vs female). Gene names are neutral
(``GENE00001`` ...), so nothing in the names reveals the truth.

``uns['simulation']``: every parameter, the seed and sizes, the subtypes, per-donor truth
(``donors``: biological age, depth offset, cells; ``donor_composition``), a summary of the
matrix, and the calibration below. ``uns['oracle_donor_mae']``: the mean over the test donors
(over all donors when the cohort has no test split) of |b_d - age_d|, the donor MAE of a model
that recovers each donor's biological age exactly; with sd 6.5 its expectation is
6.5 sqrt(2 / pi) = 5.2 years, and on the study's 11 test donors it is 4.6 for seed 0.
``uns['oracle_donor_mae_by_split']`` has it per split and over ``all`` donors.

Calibration against the study
-----------------------------
``bench/calibrate_simulation.py`` on the ``quick`` size (cell_fraction 0.05: 9,499 cells;
n_genes 2,000), seeds 0-4, mean (range):

============================================  ==============================  ==================
quantity                                      simulated                       study
============================================  ==============================  ==================
median UMIs per cell (2,000 genes)            2,844 (2,697-2,943)             --
median UMIs per cell (17,658 genes, seed 0)   4,083 (~2,075 genes detected)   neurons: thousands
fraction of zero entries (2,000 / 17,658)     0.47 / 0.88                     mostly zeros
best |r| of 100 SVD components with age,      0.43 (0.32-0.57)                0.43
cell level (z-scored log-normalised data)
same, component averaged per donor            0.58 (0.42-0.71)                --
test MAE, cell elastic net (donor mean)       10.7 (8.0-13.9)                 baselines 8-13
test MAE, pseudobulk elastic net              7.0 (4.5-9.4)                   --
test MAE, null (mean training age)            15.3                            15.3
test MAE, oracle (biological age)             4.6 (3.5-6.1)                   --
============================================  ==============================  ==================

The elastic nets: sklearn ElasticNetCV, l1_ratio 0.5, 10 alphas, 5 donor-grouped folds, trained
on the train+validation donors on z-scored log1p(CP10k) counts (pseudobulk: one summed profile
per donor). The age signal was tuned (age_lfc_median, donor effect sizes, biological_age_sd) to
land in the study's range, not beyond it: a cohort where every model is near-perfect, or none
beats the null, teaches nothing. On the paper-scale cohort (20 times more cells per donor) models
see less count noise and should do better; the donor effects and the biological-age offset keep
a floor that more cells cannot remove.

Cost (``bench/bench_simulate.py``): the paper-scale cohort (189,423 x 17,658; 411 M non-zeros,
3.06 GiB of CSR) takes 71 CPU-seconds (62 s wall on 2 shared cores) with a peak RSS of 3.7 GiB;
writing it as .h5ad takes 5 s (3.1 GiB file).
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.special import logsumexp

from neuroage_utils.errors import DataValidationError
from neuroage_utils.paper import load_paper_cohort
from neuroage_utils import profiles
from neuroage_utils.results import atomic_path

__all__ = [
    "N_GENES_FULL",
    "EXTRA_YEARS",
    "CELL_TYPES",
    "AGE_PATTERNS",
    "SimulationParameters",
    "load_paper_cohort",
    "simulated_path",
    "ensure_simulated",
    "ground_truth",
    "age_shape",
    "simulate_cohort",
]

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

# Cells share one random stream per block of this many cells, whatever ``chunk_cells`` is, so the
# matrix does not depend on how it was chunked. 128 x 17,658 float32 is ~9 MB: a block's arrays fit
# in a CPU's last-level cache, which makes the elementwise passes several times faster.
_RNG_BLOCK = 128
# Non-zero entries with an NB mean above this are drawn by gamma-Poisson instead of the inverse CDF;
# inverse-CDF counts still unresolved after _MAX_STEPS steps (far tail) go to scipy's ppf.
_LARGE_MEAN = 5.0
_MAX_STEPS = 64


@dataclass(frozen=True)
class SimulationParameters:
    """Every number of the generative model (see the module docstring for the maths and sources).

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


# --------------------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------------------


def _nb_positive_quantile(u: np.ndarray, p0: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Inverse CDF of NB(mean mu, inverse dispersion theta) at ``u`` > P(0) = ``p0``: a count >= 1.

    With q = mu / (mu + theta), pmf(k + 1) = pmf(k) (k + theta) / (k + 1) q, and the count is
    1 + #{k >= 1 : CDF(k) < u}. The recursion counts in place and compacts the still-running
    entries only when half of them have finished (most counts are 1 or 2); the rare far tail
    (past ``_MAX_STEPS``) goes to scipy's ``nbinom.ppf``. float32 throughout: the CDF is exact to
    ~1e-6, far below anything a count matrix can show.
    """
    q = mu / (mu + theta)
    pmf = p0 * theta * q  # pmf(1)
    cdf = p0 + pmf
    out = np.ones(len(u), dtype=np.float32)
    idx = np.flatnonzero(cdf < u)
    pmf, cdf, q, th, uu = pmf[idx], cdf[idx], q[idx], theta[idx], u[idx]
    steps = np.full(len(idx), 2.0, dtype=np.float32)  # 1 + #{k : CDF(k) < u} so far (k = 1 holds)
    below = np.ones(len(idx), dtype=bool)
    for k in range(1, _MAX_STEPS):
        if not idx.size:
            break
        pmf *= (k + th) / (k + 1.0) * q
        cdf += pmf
        np.less(cdf, uu, out=below)
        steps += below
        n_running = int(below.sum())
        if n_running <= len(idx) // 2:
            out[idx] = steps
            idx, pmf, cdf, q, th, uu, steps = (a[below] for a in (idx, pmf, cdf, q, th, uu, steps))
            below = np.ones(len(idx), dtype=bool)
    out[idx] = steps
    tail = idx[below] if idx.size else idx
    if tail.size:
        t64, m64 = theta[tail].astype(np.float64), mu[tail].astype(np.float64)
        out[tail] = np.maximum(stats.nbinom.ppf(u[tail].astype(np.float64), t64, t64 / (t64 + m64)), 1.0)
    return out


def _nb_positive_draw(rng: np.random.Generator, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """NB(mu, theta) conditioned on > 0, as gamma-Poisson draws with zeros redrawn.

    Used for large means, where P(0) is tiny (one round almost always suffices) and the inverse-CDF
    recursion would need ~mu steps.
    """
    out = np.zeros(len(mu), dtype=np.float32)
    todo = np.arange(len(mu))
    while todo.size:
        draw = rng.poisson(rng.gamma(theta[todo], mu[todo] / theta[todo]))
        out[todo] = draw
        todo = todo[draw == 0]
    return out


@dataclass(frozen=True)
class _Design:
    """What every block of cells needs to draw its counts."""

    donor_idx: np.ndarray
    type_idx: np.ndarray
    library: np.ndarray  # float32 L_i
    scores: np.ndarray  # float32 (cells x programs)
    profiles: np.ndarray  # float32 p[d, t, g] (donors x types x kept genes)
    program_genes: np.ndarray  # kept-gene columns touched by any cell-state program
    programs: np.ndarray  # float32 (programs x program_genes)
    program_offset: np.ndarray  # float32 ||W_g||^2 / 2 on program_genes
    theta: np.ndarray  # float32 per kept gene
    seed: int


def _sample_block(design: _Design, block: int):
    """Counts of the cells of one random-stream block: CSR pieces and the per-gene sum of means.

    mu[i, g] = L_i p[d(i), t(i), g] exp(s_i . W_g - ||W_g||^2 / 2) (the offset makes the program
    term average 1 over cells). Each entry gets one U ~ Uniform(0, 1) from its block's stream; the
    count is 0 when U <= P(0) = (1 + mu / theta)^-theta, else the NB inverse CDF at U (means above
    ``_LARGE_MEAN``: a gamma-Poisson draw conditioned on > 0, from the same stream). Both are exact
    NB draws, and the ~90% of entries that are zero cost one log, one exp and one uniform each.
    """
    start = block * _RNG_BLOCK
    stop = min(start + _RNG_BLOCK, len(design.donor_idx))
    mu = design.profiles[design.donor_idx[start:stop], design.type_idx[start:stop]]
    mu *= design.library[start:stop, None]
    if design.program_genes.size:
        # s_i . W_g - offset as K rank-one updates: far faster than a BLAS call with K ~ 4.
        scores = design.scores[start:stop]
        state = np.negative(np.broadcast_to(design.program_offset, (stop - start, design.programs.shape[1])))
        for k in range(design.programs.shape[0]):
            state += scores[:, k : k + 1] * design.programs[k]
        mu[:, design.program_genes] *= np.exp(state, out=state)
    mu_sum = mu.sum(axis=0, dtype=np.float64)
    # P(0) = exp(-theta log(1 + mu / theta)); log(1 + x) instead of log1p (5x faster here) loses
    # only ~1e-7 absolute in P(0), the resolution of a float32 uniform anyway.
    p0 = mu * (1.0 / design.theta)
    p0 += 1.0
    np.log(p0, out=p0)
    p0 *= -design.theta
    np.exp(p0, out=p0)
    rng = _rng(design.seed, "counts", block)
    uniform = rng.random(mu.shape, dtype=np.float32)
    nonzero = uniform > p0
    flat = np.flatnonzero(nonzero)
    cols = (flat % mu.shape[1]).astype(np.int32)
    mu_nz, theta_nz = mu.ravel()[flat], design.theta[cols]
    large = mu_nz > _LARGE_MEAN
    counts = np.empty(len(flat), dtype=np.float32)
    small = ~large
    counts[small] = _nb_positive_quantile(uniform.ravel()[flat[small]], p0.ravel()[flat[small]], mu_nz[small], theta_nz[small])
    counts[large] = _nb_positive_draw(rng, mu_nz[large].astype(np.float64), theta_nz[large].astype(np.float64))
    return nonzero.sum(axis=1), cols, counts, mu_sum


def _sample_unit(design: _Design, blocks: range):
    """A work unit (a chunk of whole blocks), processed block by block so arrays stay cache-sized."""
    parts = [_sample_block(design, b) for b in blocks]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.sum([p[3] for p in parts], axis=0),
    )


def _assemble_csr(pieces, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """Concatenate chunk pieces into one CSR, freeing each piece as it is copied (peak ~ 1x nnz)."""
    nnz = sum(len(piece[1]) for piece in pieces)
    index_dtype = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_rows + 1, dtype=index_dtype)
    np.cumsum(np.concatenate([piece[0] for piece in pieces]), out=indptr[1:])
    indices = np.empty(nnz, dtype=index_dtype)
    data = np.empty(nnz, dtype=np.float32)
    pos = 0
    while pieces:
        _, cols, counts = pieces.pop(0)
        indices[pos : pos + len(cols)] = cols
        data[pos : pos + len(cols)] = counts
        pos += len(cols)
    X = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)
    X.has_sorted_indices = True  # np.nonzero walks rows in order, columns ascending
    return X


# --------------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------------


def simulate_cohort(
    cell_fraction: float = 1.0,
    n_genes: int = N_GENES_FULL,
    seed: int = 0,
    min_cells_per_donor: int = 20,
    donors: pd.DataFrame | None = None,
    chunk_cells: int = 4096,
    progress: bool = False,
    *,
    params: SimulationParameters | None = None,
    n_threads: int | None = None,
):
    """Simulate raw UMI counts of neurons for a cohort of donors (default: the study's 69).

    Parameters
    ----------
    cell_fraction
        Cells per donor = max(min_cells_per_donor, round(n_cells * cell_fraction)) (half rounds
        up), ``n_cells`` being the donor's neuron count in the study (or in ``donors``).
    n_genes
        Genes kept: the ``n_genes`` most expressed of the 17,658-gene universe (in universe order).
        UMIs per cell shrink accordingly (the dropped genes' UMIs are not redistributed).
    seed
        Everything is a function of the seed. The donor- and gene-level truth does not depend on
        ``cell_fraction``, ``n_genes`` or ``chunk_cells``; the matrix does not depend on
        ``chunk_cells``.
    min_cells_per_donor
        Floor on the cells of every donor (small fractions would leave some donors nearly empty).
    donors
        Optional cohort: columns ``donor_id``, ``age`` (years), ``n_cells``; optional ``sex``
        (female/male; drawn at random if absent) and ``split`` ('unassigned' if absent).
    chunk_cells
        Cells per work unit (rounded up to whole blocks of 128 cells, each with its own random
        stream) and progress step. Work arrays are per 128-cell block, so memory hardly depends
        on it; the output never does.
    progress
        Show a tqdm bar over chunks.
    params
        The generative model's numbers (default :data:`DEFAULT_PARAMETERS`).
    n_threads
        Worker threads (default: the CPU cores available to this process). The output does not
        depend on it.

    Returns
    -------
    AnnData with ``X`` raw counts (CSR float32), ``obs`` (donor_id, age, sex, cell_type, split,
    n_counts), ``var`` (mean_expression, dispersion, age_effect, age_gene, age_pattern, age_subtype,
    sex_effect), ``uns['simulation']`` (all parameters, per-donor truth, summary, calibration) and
    ``uns['oracle_donor_mae']`` / ``uns['oracle_definition']``.
    """
    import anndata as ad
    from tqdm import tqdm  # plain text bar: tqdm.auto warns in a kernel without ipywidgets

    p = DEFAULT_PARAMETERS if params is None else params
    if not isinstance(p, SimulationParameters):
        raise TypeError("params must be a SimulationParameters")
    _check_arguments(cell_fraction, n_genes, seed, min_cells_per_donor, chunk_cells)
    seed, n_genes, chunk_cells = int(seed), int(n_genes), int(chunk_cells)
    cohort = load_paper_cohort() if donors is None else _validate_donors(donors, _rng(seed, "donor_sex"))
    cohort = cohort.reset_index(drop=True)

    genes = _gene_universe(seed, p)
    kept, kept_share = _kept_genes(genes, n_genes)
    truth = _donor_truth(cohort, seed, p)
    log_profiles = _donor_log_profiles(cohort, truth, genes, kept, seed, p)
    cells = _cells(cohort, truth, float(cell_fraction), min_cells_per_donor, seed, p)

    n_cells = len(cells["donor_idx"])
    programs = genes["programs"][:, kept]
    program_genes = np.flatnonzero((programs != 0).any(axis=0))
    programs = programs[:, program_genes]
    design = _Design(
        donor_idx=cells["donor_idx"],
        type_idx=cells["type_idx"],
        library=np.exp(cells["log_lib"]).astype(np.float32),
        scores=cells["scores"].astype(np.float32),
        profiles=np.exp(log_profiles),
        program_genes=program_genes,
        programs=programs.astype(np.float32),
        program_offset=(0.5 * (programs**2).sum(axis=0)).astype(np.float32),
        theta=genes["theta"][kept].astype(np.float32),
        seed=seed,
    )
    n_blocks = -(-n_cells // _RNG_BLOCK)
    per_unit = max(1, -(-chunk_cells // _RNG_BLOCK))  # whole blocks per work unit
    units = [range(b, min(b + per_unit, n_blocks)) for b in range(0, n_blocks, per_unit)]
    n_threads = _n_threads() if n_threads is None else max(1, int(n_threads))
    pieces, mu_sum = [], np.zeros(len(kept))
    # numpy releases the GIL in its ufuncs and random fills, so threads over units use every core;
    # pool.map keeps the units in order and the per-block streams make the result thread-agnostic.
    with ThreadPoolExecutor(max_workers=n_threads) as pool, tqdm(
        total=n_cells, disable=not progress, desc="simulating cells", unit="cell"
    ) as bar:
        for row_nnz, cols, counts, unit_mu in pool.map(partial(_sample_unit, design), units):
            pieces.append((row_nnz, cols, counts))
            mu_sum += unit_mu
            bar.update(int(row_nnz.size))
    X = _assemble_csr(pieces, n_cells, len(kept))

    adata = ad.AnnData(
        X=X,
        obs=_obs(cohort, cells, X),
        var=_var(genes, kept, mu_sum / n_cells),
    )
    _fill_uns(adata, cohort, truth, cells, p, seed, cell_fraction, n_genes, min_cells_per_donor, kept_share)
    return adata


def _n_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _check_arguments(cell_fraction, n_genes, seed, min_cells_per_donor, chunk_cells) -> None:
    if not (np.isfinite(cell_fraction) and cell_fraction > 0):
        raise DataValidationError(f"cell_fraction must be a positive number, got {cell_fraction!r}")
    if int(n_genes) != n_genes or not 1 <= n_genes <= N_GENES_FULL:
        raise DataValidationError(f"n_genes must be a whole number in [1, {N_GENES_FULL}], got {n_genes!r}")
    if int(seed) != seed or seed < 0:
        raise DataValidationError(f"seed must be a whole number >= 0, got {seed!r}")
    if int(min_cells_per_donor) != min_cells_per_donor or min_cells_per_donor < 0:
        raise DataValidationError(f"min_cells_per_donor must be a whole number >= 0, got {min_cells_per_donor!r}")
    if int(chunk_cells) != chunk_cells or chunk_cells < 1:
        raise DataValidationError(f"chunk_cells must be a whole number >= 1, got {chunk_cells!r}")


def _obs(cohort: pd.DataFrame, cells: dict, X: sp.csr_matrix) -> pd.DataFrame:
    d, t = cells["donor_idx"], cells["type_idx"]
    donor_ids = cohort["donor_id"].to_numpy().astype(str)
    within = np.arange(len(d)) - np.repeat(np.cumsum(cells["n_per_donor"]) - cells["n_per_donor"], cells["n_per_donor"])
    names = [f"{donor_ids[i]}-{j}" for i, j in zip(d, within)]
    type_names = [n for n, *_ in CELL_TYPES]
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donor_ids[d], categories=pd.unique(donor_ids)),
            "age": cohort["age"].to_numpy(dtype=float)[d],
            "sex": pd.Categorical(cohort["sex"].to_numpy()[d]),
            "cell_type": pd.Categorical(np.asarray(type_names)[t], categories=type_names),
            "split": pd.Categorical(cohort["split"].to_numpy()[d]),
            "n_counts": np.asarray(X.sum(axis=1)).ravel().astype(np.int64),
        },
        index=pd.Index(names, name="cell"),
    )
    return obs


def _var(genes: dict, kept: np.ndarray, mean_expression: np.ndarray) -> pd.DataFrame:
    beta = genes["age_beta"][kept]
    return pd.DataFrame(
        {
            "mean_expression": mean_expression,
            "dispersion": genes["theta"][kept],
            "age_effect": beta / ((AGE_HIGH - AGE_LOW) / 10.0),
            "age_gene": beta != 0,
            "age_pattern": genes["age_pattern"][kept].astype(str),
            "age_subtype": genes["age_subtype"][kept].astype(str),
            "sex_effect": genes["sex_lfc"][kept],
        },
        index=pd.Index([f"GENE{g + 1:05d}" for g in kept], name="gene"),
    )


def _oracle(cohort: pd.DataFrame, bio_age: np.ndarray) -> tuple[float, dict, str]:
    err = np.abs(bio_age - cohort["age"].to_numpy(dtype=float))
    split = cohort["split"].to_numpy()
    by_split = {str(s): float(err[split == s].mean()) for s in pd.unique(split)}
    scope = "test" if "test" in by_split else "all"
    value = by_split["test"] if scope == "test" else float(err.mean())
    who = "the test donors" if scope == "test" else "all donors"
    definition = (
        f"Mean over {who} of |biological age - chronological age|: the donor MAE of a model that "
        "recovers each donor's biological age (the only age the expression encodes) exactly."
    )
    by_split["all"] = float(err.mean())
    return value, by_split, definition


def _fill_uns(adata, cohort, truth, cells, p, seed, cell_fraction, n_genes, min_cells_per_donor, kept_share) -> None:
    X = adata.X
    value, by_split, definition = _oracle(cohort, truth["biological_age"])
    type_names = [n for n, *_ in CELL_TYPES]
    adata.uns["simulation"] = {
        "generator": "neuroage_utils.data.simulate.simulate_cohort",
        "seed": int(seed),
        "cell_fraction": float(cell_fraction),
        "n_genes": int(n_genes),
        "n_genes_full": N_GENES_FULL,
        "min_cells_per_donor": int(min_cells_per_donor),
        "parameters": p.as_dict(),
        "cell_types": {
            "name": type_names,
            "class": [c for _, c, _, _ in CELL_TYPES],
            "proportion": [float(w) for *_, w, _ in CELL_TYPES],
            "library_factor": [float(f) for *_, f in CELL_TYPES],
        },
        "kept_umi_share": kept_share,
        "donors": {
            "donor_id": cohort["donor_id"].astype(str).to_list(),
            "age": cohort["age"].astype(float).to_list(),
            "biological_age": [float(a) for a in truth["biological_age"]],
            EXTRA_YEARS: [float(a) for a in cohort.get(EXTRA_YEARS, pd.Series(0.0, index=cohort.index))],
            "sex": cohort["sex"].astype(str).to_list(),
            "split": cohort["split"].astype(str).to_list(),
            "n_cells": [int(n) for n in cells["n_per_donor"]],
            "depth_log_offset": [float(x) for x in truth["depth"]],
        },
        # donors x cell types (rows: donors order, columns: cell_types["name"]): expected shares
        "donor_composition": truth["composition"].astype(float),
        "summary": {
            "n_cells": int(X.shape[0]),
            "n_genes": int(X.shape[1]),
            "n_age_genes": int(adata.var["age_gene"].sum()),
            "median_umis_per_cell": float(np.median(adata.obs["n_counts"])),
            "fraction_zeros": float(1.0 - X.nnz / (X.shape[0] * X.shape[1])),
        },
        "calibration": {**CALIBRATION, "measured_with_these_parameters": p == DEFAULT_PARAMETERS},
    }
    adata.uns["oracle_donor_mae"] = float(value)
    adata.uns["oracle_donor_mae_by_split"] = by_split
    adata.uns["oracle_definition"] = definition


# --------------------------------------------------------------------------------------------------
# The cached simulated cohort of a profile
# --------------------------------------------------------------------------------------------------


def simulated_path(profile: str, seed: int, out_dir) -> Path:
    """Where the simulated cohort of ``profile`` and ``seed`` is cached."""
    return Path(out_dir) / "data" / f"simulated-{profile}-seed{seed}.h5ad"


def ensure_simulated(profile: str, seed: int, out_dir, progress: bool = False) -> Path:
    """Simulate the profile's cohort once and cache it as .h5ad (written atomically)."""
    path = simulated_path(profile, seed, out_dir)
    if path.exists():
        return path
    params = profiles.section_params(profile, "simulate")
    adata = simulate_cohort(seed=seed, progress=progress, **params)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression=None)
    return path


def ground_truth(adata) -> dict:
    """What a simulated cohort knows about itself: age genes per pattern, the oracle's donor MAE."""
    var = adata.var
    table = (var[var["age_gene"]].groupby(["age_pattern", "age_subtype"], observed=False).size().rename("genes").reset_index())
    return {"n_age_genes": int(var["age_gene"].sum()), "n_genes": len(var),
            "oracle_mae": float(adata.uns["oracle_donor_mae"]),
            "oracle_definition": adata.uns.get("oracle_definition", ""), "table": table}

