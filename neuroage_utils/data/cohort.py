"""Reading, validating and splitting a cohort; the count matrix and its transforms.

Input contract: an AnnData file (.h5ad) with one row per cell, raw UMI counts in ``layers['counts']``
or in ``X`` (sparse or dense), a donor column and an age column in ``obs`` (names configurable;
defaults ``donor_id`` / ``age``; the study's own file uses ``ID`` / ``Age``).

Every check raises :class:`DataValidationError` with a one-line message that names the problem and
the fix, and runs before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.data.checks import donor_ages, is_count_matrix, require_counts
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import log_normalize
from neuroage_utils.paper import load_paper_cohort
from neuroage_utils.results import atomic_write_text

__all__ = [
    "DataValidationError",
    "Cohort",
    "load_h5ad",
    "load_cohort",
    "validate_obs",
    "counts_matrix",
    "donor_frame",
    "split_donors",
    "STUDY_SPLIT_FRACTIONS",
    "file_sha256",
    "subsample_cells",
    "cap_cells_per_donor",
    "split_table",
    "library_stats",
    "cells_per_donor_stats",
]

#: The study's donor proportions: 49 train, 9 validation, 11 test of 69 donors.
STUDY_SPLIT_FRACTIONS = {"train": 49 / 69, "val": 9 / 69, "test": 11 / 69}
SPLITS = ("train", "val", "test")
#: Fewest donors we accept: two each for validation and test, five training donors for 5-fold CV.
MIN_DONORS = 9


# --------------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------------


def load_h5ad(path, donor_key: str = "donor_id", age_key: str = "age"):
    """Read an .h5ad into memory (the matrix stays sparse) and validate its donor and age columns."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"data file {path} does not exist: pass the path of an .h5ad file")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py / anndata raise many types for a broken file
        raise DataValidationError(
            f"cannot read {path} as AnnData ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
            "pass an .h5ad written by anndata or scanpy"
        ) from None
    validate_obs(adata.obs, donor_key, age_key)
    return adata


def validate_obs(obs: pd.DataFrame, donor_key: str, age_key: str, min_donors: int = MIN_DONORS) -> None:
    """Check the donor and age columns: present, ages numeric, finite, non-negative, one per donor."""
    columns = list(map(str, obs.columns))
    shown = ", ".join(columns[:12]) + (" ..." if len(columns) > 12 else "")
    for key, what, flag in ((donor_key, "donor", "donor_key"), (age_key, "age", "age_key")):
        if key not in obs.columns:
            raise DataValidationError(
                f"obs has no {what} column '{key}' (columns: {shown or 'none'}): "
                f"name the right column with {flag} (--{flag.replace('_', '-')})"
            )
    if len(obs) == 0:
        raise DataValidationError("the data has no cells: pass a non-empty .h5ad")
    donors = obs[donor_key]
    if donors.isna().any():
        raise DataValidationError(
            f"{int(donors.isna().sum())} cells have no donor in obs['{donor_key}']: drop them or fill the column"
        )
    ages = pd.to_numeric(obs[age_key], errors="coerce")
    bad = ages.isna() & obs[age_key].notna()
    if bad.any():
        example = obs[age_key][bad].iloc[0]
        raise DataValidationError(
            f"obs['{age_key}'] holds non-numeric ages (e.g. {example!r}): store ages in years as numbers"
        )
    if ages.isna().any():
        donor = str(donors[ages.isna()].iloc[0])
        raise DataValidationError(
            f"donor {donor} has a missing age in obs['{age_key}']: fill it or drop the donor's cells"
        )
    if not np.isfinite(ages.to_numpy()).all():
        donor = str(donors[~np.isfinite(ages.to_numpy())].iloc[0])
        raise DataValidationError(f"donor {donor} has an infinite age in obs['{age_key}']: fix the value")
    if (ages < 0).any():
        row = ages[ages < 0]
        donor = str(donors[row.index[0]])
        raise DataValidationError(
            f"donor {donor} has a negative age ({row.iloc[0]:g}) in obs['{age_key}']: ages must be years >= 0"
        )
    n_ages = donor_ages(ages.to_numpy(), donors.astype(str).to_numpy(), where=f" in obs['{age_key}']")
    if len(n_ages) < min_donors:
        raise DataValidationError(
            f"only {len(n_ages)} donors in obs['{donor_key}']; the donor split needs at least {min_donors} "
            "(5 training, 2 validation, 2 test): pass a cohort with more donors"
        )


def counts_matrix(adata) -> sp.csr_matrix:
    """The raw count matrix as CSR float32: ``layers['counts']`` when present, else ``X``."""
    X = adata.layers["counts"] if "counts" in getattr(adata, "layers", {}) else adata.X
    if X is None:
        raise DataValidationError("the AnnData has no matrix in X or layers['counts']: store the counts in X")
    if sp.issparse(X):
        # No copy when the file already holds CSR float32: at paper scale X is gigabytes.
        X = X if (isinstance(X, sp.csr_matrix) or X.format == "csr") else X.tocsr()
        X = sp.csr_matrix(X.astype(np.float32, copy=False), copy=False)
    else:
        X = sp.csr_matrix(np.asarray(X, dtype=np.float32))
    if X.nnz and not np.isfinite(X.data).all():
        raise DataValidationError("the expression matrix holds NaN or infinite values: remove or fill them")
    return X


# --------------------------------------------------------------------------------------------------
# Donors and the split
# --------------------------------------------------------------------------------------------------


def donor_frame(obs: pd.DataFrame, donor_key: str, age_key: str) -> pd.DataFrame:
    """One row per donor: ``donor_id``, ``age``, ``n_cells`` (and ``sex`` when obs has it)."""
    frame = pd.DataFrame(
        {"donor_id": obs[donor_key].astype(str).to_numpy(), "age": pd.to_numeric(obs[age_key]).to_numpy()}
    )
    extra = [c for c in ("sex", "Sex") if c in obs.columns]
    if extra:
        frame["sex"] = obs[extra[0]].astype(str).to_numpy()
    agg = {"age": ("age", "first"), "n_cells": ("age", "size")}
    if extra:
        agg["sex"] = ("sex", "first")
    return frame.groupby("donor_id", sort=True).agg(**agg).reset_index()


def _study_split(donors: pd.DataFrame) -> pd.Series | None:
    """The study's own split when these donors are the study's cohort (same ids and ages)."""
    study = load_paper_cohort().set_index("donor_id")
    if not set(donors["donor_id"]).issubset(study.index):
        return None
    ages = study.loc[donors["donor_id"], "age"].to_numpy(dtype=float)
    if not np.allclose(ages, donors["age"].to_numpy(dtype=float)):
        return None
    split = study.loc[donors["donor_id"], "split"]
    if set(split) != set(SPLITS):
        return None  # a subset of the study that lost a split: fall back to a fresh split
    return pd.Series(split.to_numpy(), index=donors["donor_id"].to_numpy(), name="split")


def _stratified_split(donors: pd.DataFrame, seed: int) -> pd.Series:
    """Age-stratified random split with the study's proportions.

    Donors are sorted by age and cut into as many consecutive strata as there are test donors; one
    test donor is drawn from each stratum, then the same for validation among the rest. Test and
    validation donors therefore span the age range, as in the study's age-bin x sex stratification.
    """
    rng = np.random.default_rng(seed)
    n = len(donors)
    n_test = max(2, int(round(n * STUDY_SPLIT_FRACTIONS["test"])))
    n_val = max(2, int(round(n * STUDY_SPLIT_FRACTIONS["val"])))
    order = donors.assign(_tie=rng.random(n)).sort_values(["age", "_tie"])["donor_id"].to_list()
    split = dict.fromkeys(order, "train")
    for name, k in (("test", n_test), ("val", n_val)):
        remaining = [d for d in order if split[d] == "train"]
        for stratum in np.array_split(np.arange(len(remaining)), k):
            split[remaining[int(rng.choice(stratum))]] = name
    return pd.Series(split, name="split").loc[donors["donor_id"].to_numpy()]


def split_donors(donors: pd.DataFrame, seed: int = 0, use_study_split: bool = True) -> pd.Series:
    """Assign every donor to ``train``, ``val`` or ``test`` (index: donor id).

    The study's split is used when the donors are the study's cohort (as in the simulated default
    and in the study's own file); any other cohort gets an age-stratified split by ``seed`` with the
    study's proportions (49/9/11 of 69). A donor is in exactly one split.
    """
    if len(donors) < MIN_DONORS:
        raise DataValidationError(
            f"only {len(donors)} donors; the donor split needs at least {MIN_DONORS}: pass a larger cohort"
        )
    if use_study_split:
        study = _study_split(donors)
        if study is not None:
            return study
    return _stratified_split(donors, seed)


# --------------------------------------------------------------------------------------------------
# The cohort a chapter works on
# --------------------------------------------------------------------------------------------------


@dataclass
class Cohort:
    """A validated dataset with its donor split, in the names the models use.

    ``X`` holds raw counts (CSR float32) when ``is_counts``; otherwise the values as given.
    Per-cell arrays: ``donors`` (str), ``ages`` (float), ``split`` ('train'/'val'/'test').
    """

    adata: object
    X: sp.csr_matrix
    donors: np.ndarray
    ages: np.ndarray
    split: np.ndarray
    donor_table: pd.DataFrame
    is_counts: bool
    donor_key: str = "donor_id"
    age_key: str = "age"
    split_source: str = "study"
    gene_names: np.ndarray = field(default=None)

    def mask(self, *splits: str) -> np.ndarray:
        """Boolean mask of the cells whose donor is in any of ``splits``."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use {SPLITS}")
        return np.isin(self.split, splits)

    def normalized(self, target_sum: float = 1e4) -> sp.csr_matrix:
        """log1p(CP10k) of the counts; values that are not counts are returned as given."""
        return log_normalize(self.X, target_sum) if self.is_counts else self.X

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_donors(self) -> int:
        return int(len(self.donor_table))


def load_cohort(
    adata_or_path,
    donor_key: str = "donor_id",
    age_key: str = "age",
    seed: int = 0,
    allow_non_counts: bool = False,
) -> Cohort:
    """Load (if a path), validate and split a cohort.

    Raises :class:`DataValidationError` on missing columns, bad ages, too few donors, NaN values,
    and values that are not raw counts (unless ``allow_non_counts``: the count models then skip).
    """
    adata = load_h5ad(adata_or_path, donor_key, age_key) if isinstance(adata_or_path, (str, os.PathLike)) else adata_or_path
    validate_obs(adata.obs, donor_key, age_key)
    X = counts_matrix(adata)
    if X.shape[1] == 0:
        raise DataValidationError("the data has no genes: pass an .h5ad with a non-empty expression matrix")
    counts = is_count_matrix(X)
    if not counts and not allow_non_counts:
        require_counts(X, "NeuroAge (which library-size normalises the data)")
    donors = donor_frame(adata.obs, donor_key, age_key)
    study_split = _study_split(donors)
    split = study_split if study_split is not None else split_donors(donors, seed=seed, use_study_split=False)
    study = study_split is not None
    donors["split"] = split.loc[donors["donor_id"]].to_numpy()
    cell_donors = adata.obs[donor_key].astype(str).to_numpy()
    return Cohort(
        adata=adata,
        X=X,
        donors=cell_donors,
        ages=pd.to_numeric(adata.obs[age_key]).to_numpy(dtype=float),
        split=split.loc[cell_donors].to_numpy().astype(str),
        donor_table=donors,
        is_counts=counts,
        donor_key=donor_key,
        age_key=age_key,
        split_source="study" if study else f"age-stratified (seed {seed})",
        gene_names=np.asarray(adata.var_names).astype(str),
    )


def subsample_cells(mask: np.ndarray, max_cells: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_cells`` of the cells in boolean ``mask``, drawn uniformly without replacement.

    Keeps a fit affordable on a CPU; every donor keeps its share of cells on average.
    ``max_cells=None`` returns the mask unchanged.
    """
    mask = np.asarray(mask, dtype=bool)
    if max_cells is None or mask.sum() <= max_cells:
        return mask
    rng = np.random.default_rng(seed)
    keep = rng.choice(np.flatnonzero(mask), size=int(max_cells), replace=False)
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def cap_cells_per_donor(adata, donor_key: str, max_cells: int, seed: int = 0):
    """The AnnData with at most ``max_cells`` cells of each donor (drawn without replacement with
    ``seed``, file order kept), as a new object: the full one can then be freed. A donor with fewer
    cells keeps them all; the same file, cap and seed always keep the same cells."""
    if max_cells is None or int(max_cells) < 1:
        raise DataValidationError("the cap on cells per donor must be a positive number (--max-cells N)")
    donors = adata.obs[donor_key].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(donors), dtype=bool)
    for rows in pd.Series(np.arange(len(donors))).groupby(donors, sort=True).indices.values():
        keep[rows if len(rows) <= max_cells else rng.choice(rows, int(max_cells), replace=False)] = True
    if keep.all():
        return adata
    return adata[keep].copy()


def file_sha256(path, cache_dir=None) -> str:
    """SHA-256 of a file.

    With ``cache_dir`` the digest is remembered there by (path, size, mtime), so a multi-GB file is
    hashed once; nothing is ever written beside the user's data.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = None
    if cache_dir is not None:
        memo = Path(cache_dir) / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
        try:
            saved = json.loads(memo.read_text())
            if all(saved.get(k) == v for k, v in key.items()):
                return saved["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo is not None:
        try:
            atomic_write_text(memo, json.dumps({**key, "sha256": value}))
        except OSError:
            pass  # an unwritable cache: hashing again next time is fine
    return value


# --------------------------------------------------------------------------------------------------
# Describing a cohort (the data chapter's tables)
# --------------------------------------------------------------------------------------------------


def split_table(donors: pd.DataFrame, paper_donors: dict | None = None) -> pd.DataFrame:
    """Donors, cells and ages per split and over all donors (females when the table has ``sex``).

    ``paper_donors`` (split -> donors, and ``"all"``) adds the paper's donor counts as a column.
    """
    order = list(SPLITS)
    by_split = (donors.groupby("split")
                .agg(donors=("donor_id", "size"), cells=("n_cells", "sum"), age_min=("age", "min"),
                     age_median=("age", "median"), age_max=("age", "max"))
                .reindex(order))
    if "sex" in donors:
        by_split["female"] = donors.groupby("split")["sex"].apply(lambda s: int((s == "female").sum())).reindex(order)
    by_split.loc["all"] = [len(donors), donors["n_cells"].sum(), donors["age"].min(), donors["age"].median(),
                           donors["age"].max()] + ([int((donors["sex"] == "female").sum())] if "sex" in donors else [])
    if paper_donors is not None:
        by_split["paper donors"] = [paper_donors[s] for s in [*order, "all"]]
    return by_split.astype({c: int for c in by_split.columns if c not in ("age_min", "age_median", "age_max")})


def library_stats(cohort: "Cohort") -> dict:
    """Per-cell library sizes and detected genes, and a QC table of the matrix as loaded.

    A streamed cohort (``data.stream``) recorded both in its validation pass: every cell, no matrix.
    """
    if hasattr(cohort, "umis"):
        umis, genes_detected = cohort.umis, cohort.genes_detected
        frac_zero = 1.0 - cohort.nnz / (cohort.n_cells * cohort.n_genes)
    else:
        X = sp.csr_matrix(cohort.X)
        umis = np.asarray(X.sum(axis=1)).ravel()
        genes_detected = np.diff(X.indptr)
        frac_zero = 1.0 - X.nnz / (X.shape[0] * X.shape[1])
    table = pd.Series({
        "cells": cohort.n_cells, "genes": cohort.n_genes, "donors": cohort.n_donors,
        "median UMIs per cell": float(np.median(umis)),
        "UMIs per cell, 5th-95th percentile": f"{np.percentile(umis, 5):,.0f}-{np.percentile(umis, 95):,.0f}",
        "median genes detected per cell": float(np.median(genes_detected)),
        "fraction of zero entries": round(frac_zero, 4),
        "raw counts": cohort.is_counts,
    }, name="value").to_frame()
    return {"umis": umis, "genes_detected": genes_detected, "median_umis": float(np.median(umis)),
            "fraction_zero": float(frac_zero), "table": table}


def cells_per_donor_stats(donors: pd.DataFrame) -> dict:
    """Fewest, median and most cells per donor, and the share of all cells held by the top five donors."""
    cells = donors["n_cells"]
    return {"min": int(cells.min()), "median": int(cells.median()), "max": int(cells.max()),
            "top5_share": float(cells.nlargest(5).sum() / cells.sum())}

