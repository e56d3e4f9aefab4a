"""A cohort read from its .h5ad in fixed row blocks: memory flat in the number of cells.

The in-memory path (:func:`neuroage_utils.data.cohort.load_cohort`) loads the whole matrix and
copies it, about 36 GB per million cells at 17,658 genes. A :class:`StreamedCohort` keeps only
per-cell vectors (donor code, age, library size: about 30 bytes a cell) and reads the CSR from
the file ``block_rows`` rows at a time (h5py on the ``data`` / ``indices`` / ``indptr`` datasets),
so memory is one block plus the results, whatever the number of cells:

- :func:`load_streamed`: the donor and age checks of ``validate_obs``, then one pass that checks
  every block (NaN, negative and non-integer values: the same one-line ``DataValidationError``
  messages as the in-memory path) and records library sizes and detected genes;
- :meth:`StreamedCohort.blocks`: raw or log1p(CP10k) blocks (normalised on the fly);
- :meth:`~StreamedCohort.column_moments`, :meth:`~StreamedCohort.pseudobulk`,
  :meth:`~StreamedCohort.pseudocells`: per-gene moments on training donors and per-donor sums, a
  map-reduce over blocks;
- :meth:`~StreamedCohort.take` and :func:`per_donor_sample`: the cells a cell-level model is
  fitted on, gathered in one pass.

Results equal the in-memory path's: sums of counts bit for bit (float64 sums of integers are
exact), moments bit for bit at the default block of 8,192 rows (the in-memory path sums in the
same blocks) and to rounding otherwise (tested). ``indptr`` is read as int64, so a file with more
than 2^31 non-zeros streams like any other. :func:`should_stream` chooses the path: streamed above
:data:`STREAM_ABOVE_NNZ` non-zeros, or when asked (``--stream`` / the ``stream`` setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.data.checks import require_counts
from neuroage_utils.data.cohort import SPLITS, _study_split, split_donors, validate_obs
from neuroage_utils.data.features import (
    CHUNK_ROWS, _check_normalise, _normalise_profiles, _require_summed_counts, draw_pseudocells,
)
from neuroage_utils.errors import DataValidationError

__all__ = ["STREAM_ABOVE_NNZ", "StreamedCohort", "load_streamed", "should_stream", "matrix_size",
           "streamed_pseudobulk", "per_donor_sample"]

#: Above this many stored values the book streams the data (the in-memory path would need about
#: 16 bytes per non-zero at its peak: 8 GB here; the paper's 189,423 x 17,658 cohort, 4.1e8, stays in memory).
STREAM_ABOVE_NNZ = 500_000_000
#: Why a count check failed is reported as for the in-memory path.
_WHO = "NeuroAge (which library-size normalises the data)"


def _open(path):
    import h5py

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"data file {path} does not exist: pass the path of an .h5ad file")
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # h5py raises OSError subclasses with long texts
        raise DataValidationError(
            f"cannot read {path} as AnnData ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
            "pass an .h5ad written by anndata or scanpy"
        ) from None


def _matrix_node(f):
    """The raw counts' node: ``layers/counts`` when present, else ``X`` (CSR group or dense dataset)."""
    node = f["layers"]["counts"] if "layers" in f and "counts" in f["layers"] else f.get("X")
    if node is None:
        raise DataValidationError("the AnnData has no matrix in X or layers['counts']: store the counts in X")
    kind = node.attrs.get("encoding-type", "array")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "csc_matrix":
        raise DataValidationError(
            "the count matrix is stored as CSC, which cannot be read by rows: "
            "write it as CSR (adata.X = adata.X.tocsr(); adata.write_h5ad(path))"
        )
    if kind not in ("csr_matrix", "array"):
        raise DataValidationError(f"the count matrix has an unknown encoding {kind!r}: store raw counts as CSR in X")
    return node, kind


def matrix_size(path) -> dict:
    """Cells, genes and stored values of an .h5ad's count matrix, read from its metadata only."""
    with _open(path) as f:
        node, kind = _matrix_node(f)
        if kind == "csr_matrix":
            n_cells, n_genes = (int(v) for v in node.attrs["shape"])
            nnz = int(node["data"].shape[0])
        else:
            n_cells, n_genes = (int(v) for v in node.shape)
            nnz = n_cells * n_genes
    return {"n_cells": n_cells, "n_genes": n_genes, "nnz": nnz}


def should_stream(path, stream: bool | None = None) -> bool:
    """``stream`` when given; otherwise True when the file stores more than :data:`STREAM_ABOVE_NNZ` values."""
    if stream is not None:
        return bool(stream)
    return matrix_size(path)["nnz"] > STREAM_ABOVE_NNZ


def _read_column(obs, key: str):
    from anndata.io import read_elem

    values = read_elem(obs[key])
    return pd.Series(values) if not isinstance(values, pd.Series) else values


def _donor_codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Sorted donor ids (as strings) and each cell's index into them; no string per cell for a categorical."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        cat_codes = column.cat.codes.to_numpy()
        used = np.unique(cat_codes)
        names, remap = np.unique(column.cat.categories.to_numpy().astype(str)[used], return_inverse=True)
        lookup = np.zeros(len(column.cat.categories), dtype=np.int32)
        lookup[used] = remap
        return names, lookup[cat_codes]
    names, codes = np.unique(column.astype(str).to_numpy(), return_inverse=True)
    return names, codes.astype(np.int32)


def _obs_columns(obs) -> list[str]:
    order = obs.attrs.get("column-order", [])
    return [c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(order)]


@dataclass
class StreamedCohort:
    """A validated cohort whose matrix stays in its file; per-cell vectors only in memory.

    ``donor_codes`` index ``donor_table`` (donors sorted by id, as in the in-memory ``Cohort``);
    ``split_codes`` index :data:`~neuroage_utils.data.cohort.SPLITS`.
    """

    path: Path
    n_cells: int
    n_genes: int
    nnz: int
    gene_names: np.ndarray
    donor_codes: np.ndarray
    ages: np.ndarray
    donor_table: pd.DataFrame
    split_codes: np.ndarray
    umis: np.ndarray
    genes_detected: np.ndarray
    is_counts: bool = True
    donor_key: str = "donor_id"
    age_key: str = "age"
    split_source: str = "study"
    block_rows: int = CHUNK_ROWS
    _indptr: np.ndarray = field(default=None, repr=False)
    #: raw counts summed per donor (donors x genes, float64) in the validation pass, when small enough
    _donor_sums: np.ndarray = field(default=None, repr=False)

    # -- per-cell views, as the in-memory Cohort names them -----------------------------------------
    @property
    def n_donors(self) -> int:
        return int(len(self.donor_table))

    @property
    def donors(self) -> np.ndarray:
        """One donor id per cell (strings: about 60 bytes a cell; the codes are cheaper)."""
        return self.donor_table["donor_id"].to_numpy().astype(str)[self.donor_codes]

    @property
    def split(self) -> np.ndarray:
        return np.asarray(SPLITS)[self.split_codes]

    def mask(self, *splits: str) -> np.ndarray:
        """Boolean mask of the cells whose donor is in any of ``splits``."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use {SPLITS}")
        return np.isin(self.split_codes, [SPLITS.index(s) for s in splits])

    # -- reading blocks -------------------------------------------------------------------------------
    def blocks(self, normalise: bool = False, target_sum: float = 1e4, start: int = 0, stop: int | None = None,
               needed=None):
        """Yield ``(first_row, csr_block)`` of raw counts (float32), or of log1p(CP10k) when ``normalise``.

        The normalisation is ``log_normalize``'s, row by row: the same float32 values. With a boolean
        ``needed`` per cell, blocks without a needed cell are not read (cells are stored by donor, so a
        split's donors sit in few blocks).
        """
        stop = self.n_cells if stop is None else stop
        scale = None
        if normalise and self.is_counts:
            totals = self.umis
            scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
        with _open(self.path) as f:
            node, kind = _matrix_node(f)
            for a in range(start, stop, self.block_rows):
                b = min(a + self.block_rows, stop)
                if needed is not None and not needed[a:b].any():
                    continue
                block = self._read(node, kind, a, b)
                if scale is not None:
                    block.data *= np.repeat(scale[a:b], np.diff(block.indptr))
                    np.log1p(block.data, out=block.data)
                yield a, block

    def _read(self, node, kind: str, a: int, b: int) -> sp.csr_matrix:
        if kind != "csr_matrix":
            return sp.csr_matrix(np.asarray(node[a:b], dtype=np.float32))
        lo, hi = int(self._indptr[a]), int(self._indptr[b])
        # a block's own offsets fit int32 even when the file's indptr needs int64
        local = np.int32 if hi - lo < np.iinfo(np.int32).max else np.int64
        indptr = (self._indptr[a : b + 1] - lo).astype(local)
        data = np.asarray(node["data"][lo:hi], dtype=np.float32)
        indices = np.asarray(node["indices"][lo:hi]).astype(local, copy=False)
        return sp.csr_matrix((data, indices, indptr), shape=(b - a, self.n_genes), copy=False)

    # -- map-reduce statistics ----------------------------------------------------------------------
    def column_moments(self, rows=None, normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene mean and population variance (float64) over the cells in boolean ``rows``
        (log-normalised values by default): ``features.column_moments`` block by block."""
        rows = None if rows is None else np.asarray(rows, dtype=bool)
        n = self.n_cells if rows is None else int(rows.sum())
        total, total_sq = np.zeros(self.n_genes), np.zeros(self.n_genes)
        for a, block in self.blocks(normalise=normalise, needed=rows):
            if rows is not None:
                block = block[rows[a : a + block.shape[0]]]
            values = block.data.astype(np.float64)
            total += np.bincount(block.indices, weights=values, minlength=self.n_genes)
            total_sq += np.bincount(block.indices, weights=values * values, minlength=self.n_genes)
        mean = total / n
        return mean, np.maximum(total_sq / n - mean**2, 0.0)

    def _sums(self, rows: np.ndarray, cells: np.ndarray, n_rows: int, cells_sorted: bool = False) -> np.ndarray:
        """Dense float64 ``membership @ X``: output row ``rows[j]`` adds cell ``cells[j]`` (exact for counts)."""
        if not cells_sorted:
            order = np.argsort(cells, kind="stable")
            rows, cells = rows[order], cells[order]
        out = np.zeros((n_rows, self.n_genes))
        needed = np.zeros(self.n_cells, dtype=bool)
        needed[cells] = True
        for a, block in self.blocks(needed=needed):
            lo, hi = np.searchsorted(cells, [a, a + block.shape[0]])
            member = sp.csr_matrix((np.ones(hi - lo), (rows[lo:hi], cells[lo:hi] - a)), shape=(n_rows, block.shape[0]))
            out += np.asarray((member @ block.astype(np.float64)).todense())
        return out

    def _present_donors(self, cells: np.ndarray):
        """Codes of the donors among ``cells`` (sorted) and each cell's index into them (no per-cell sort)."""
        present = np.flatnonzero(np.bincount(self.donor_codes[cells], minlength=self.n_donors))
        remap = np.zeros(self.n_donors, dtype=np.int32)
        remap[present] = np.arange(len(present), dtype=np.int32)
        return present, remap[self.donor_codes[cells]]

    def pseudobulk(self, rows=None, normalise: str | None = "log_cpm"):
        """``features.pseudobulk`` of the cells in ``rows`` (default all): (profiles CSR, sorted donor ids)."""
        what = "pseudobulk"
        _check_normalise(normalise)
        cells = np.arange(self.n_cells) if rows is None else np.flatnonzero(np.asarray(rows, dtype=bool))
        present, inverse = self._present_donors(cells)
        whole = np.array_equal(np.bincount(inverse, minlength=len(present)),
                               self.donor_table["n_cells"].to_numpy()[present])
        if self._donor_sums is not None and whole:  # whole donors: their sums from the validation pass, no read
            sums = sp.csr_matrix(self._donor_sums[present])
        else:
            sums = sp.csr_matrix(self._sums(inverse, cells, len(present), cells_sorted=True))
        _require_summed_counts(sums, what)
        ids = self.donor_table["donor_id"].to_numpy().astype(str)[present]
        return _normalise_profiles(sums, normalise, what), ids

    def pseudocells(self, rows=None, cells_per_pseudocell: int = 15, n_per_donor: int = 100, seed: int = 0,
                    normalise: str | None = "log_cpm", replace: bool = True):
        """``features.pseudocells`` of the cells in ``rows``: the same draws, summed block by block."""
        what = "pseudocells"
        cells = np.arange(self.n_cells) if rows is None else np.flatnonzero(np.asarray(rows, dtype=bool))
        present, inverse = self._present_donors(cells)
        ids = self.donor_table["donor_id"].to_numpy().astype(str)[present]
        # the in-memory draw indexes the selected cells 0..m-1; map back to file rows afterwards
        drawn = draw_pseudocells(ids, inverse, cells_per_pseudocell, n_per_donor, replace, seed, normalise)
        out_rows = np.repeat(np.arange(len(drawn)), cells_per_pseudocell)
        sums = self._sums(out_rows, cells[drawn.ravel()], len(drawn))
        sums = sp.csr_matrix(sums)
        _require_summed_counts(sums, what)
        return _normalise_profiles(sums, normalise, what), np.repeat(ids, n_per_donor)

    def take(self, rows, normalise: bool = False) -> sp.csr_matrix:
        """The cells at sorted indices (or boolean mask) ``rows`` as one in-memory CSR, gathered in one pass."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else np.sort(rows.astype(np.int64))
        needed = np.zeros(self.n_cells, dtype=bool)
        needed[idx] = True
        parts = []
        for a, block in self.blocks(normalise=normalise, needed=needed):
            lo, hi = np.searchsorted(idx, [a, a + block.shape[0]])
            parts.append(block[idx[lo:hi] - a])
        if not parts:
            return sp.csr_matrix((0, self.n_genes), dtype=np.float32)
        return sp.vstack(parts, format="csr")


    def annotations(self):
        """The file's ``var`` and ``uns`` (and the sampled cells' ``obs``) without its matrix: what
        ``ground_truth`` and the chapters read from ``cohort.adata``."""
        import anndata as ad
        from anndata.io import read_elem

        with _open(self.path) as f:
            var = read_elem(f["var"]) if "var" in f else pd.DataFrame(index=self.gene_names)
            uns = read_elem(f["uns"]) if "uns" in f else {}
        return ad.AnnData(var=var, uns=uns)

    def sample_cohort(self, max_cells: int | None, seed: int = 0, per_donor: bool = True):
        """An in-memory :class:`~neuroage_utils.data.cohort.Cohort` of at most ``max_cells`` cells
        (:func:`per_donor_sample` over every donor), for the cell-level models; its ``donor_table``
        is the whole file's (cells per donor as stored)."""
        import anndata as ad

        from neuroage_utils.data.cohort import Cohort

        keep = per_donor_sample(np.ones(self.n_cells, dtype=bool), self.donor_codes, max_cells, seed, per_donor)
        X = self.take(keep)
        donors = self.donor_table["donor_id"].to_numpy().astype(str)[self.donor_codes[keep]]
        obs = pd.DataFrame({self.donor_key: donors, self.age_key: self.ages[keep]},
                           index=pd.Index(np.flatnonzero(keep).astype(str), name="row"))
        notes = self.annotations()
        adata = ad.AnnData(X=X, obs=obs, var=notes.var, uns=dict(notes.uns))
        return Cohort(adata=adata, X=X, donors=donors, ages=self.ages[keep], split=self.split[keep],
                      donor_table=self.donor_table.copy(), is_counts=self.is_counts, donor_key=self.donor_key,
                      age_key=self.age_key, split_source=self.split_source, gene_names=self.gene_names)


def per_donor_sample(mask, donor_codes, max_cells: int | None, seed: int = 0, per_donor: bool = False) -> np.ndarray:
    """The cells (boolean mask) a cell-level model is fitted on.

    ``per_donor=False`` is ``cohort.subsample_cells`` (uniform, at most ``max_cells``): the same cells
    as the in-memory path. ``per_donor=True`` caps every donor at the same number of cells, the
    smallest cap that reaches ``max_cells`` cells in all (donors with fewer keep all theirs; the total
    passes ``max_cells`` by less than one cell per donor), drawn uniformly within each donor, so a
    donor with many cells cannot dominate the sample.
    """
    from neuroage_utils.data.cohort import subsample_cells

    mask = np.asarray(mask, dtype=bool)
    if not per_donor or max_cells is None or mask.sum() <= max_cells:
        return subsample_cells(mask, max_cells, seed)
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(mask)
    codes = np.asarray(donor_codes)[chosen]
    sizes = np.bincount(codes)
    present = np.flatnonzero(sizes)
    caps = np.arange(1, sizes.max() + 1)
    kept = np.minimum(sizes[present][None, :], caps[:, None]).sum(axis=1)  # cells kept at each cap
    cap = int(caps[np.searchsorted(kept, int(max_cells))])
    out = np.zeros_like(mask)
    order = np.argsort(codes, kind="stable")
    for own in np.split(chosen[order], np.cumsum(sizes[present])[:-1]):
        out[own if len(own) <= cap else rng.choice(own, cap, replace=False)] = True
    return out


def _check_blocks(cohort: StreamedCohort, allow_non_counts: bool, donor_sums_limit: float) -> None:
    """One pass: finite values, counts (as ``require_counts`` says it), library sizes, detected genes,
    and the per-donor sums of raw counts when donors x genes float64 fit in ``donor_sums_limit`` bytes."""
    lowest, example = np.inf, None
    keep_sums = cohort.n_donors * cohort.n_genes * 8 <= donor_sums_limit
    sums = np.zeros((cohort.n_donors, cohort.n_genes)) if keep_sums else None
    for a, block in cohort.blocks():
        values = block.data
        if values.size and not np.isfinite(values).all():
            raise DataValidationError("the expression matrix holds NaN or infinite values: remove or fill them")
        if values.size:
            lowest = min(lowest, float(values.min()))
            if example is None:
                off = values != np.round(values)
                if off.any():
                    example = float(values[off][0])
        b = a + block.shape[0]
        cohort.umis[a:b] = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
        cohort.genes_detected[a:b] = np.diff(block.indptr)
        if sums is not None:  # float64 sums of integer counts: exact, in any order
            codes = cohort.donor_codes[a:b]
            member = sp.csr_matrix((np.ones(b - a), (codes, np.arange(b - a))), shape=(cohort.n_donors, b - a))
            sums += (member @ block.astype(np.float64)).toarray()
    cohort.is_counts = lowest >= 0 and example is None
    cohort._donor_sums = sums if cohort.is_counts else None
    if not cohort.is_counts and not allow_non_counts:
        # the one home of these sentences is checks.require_counts: hand it the offending value
        require_counts(np.array([[lowest if lowest < 0 else example]], dtype=np.float64), _WHO)


def load_streamed(path, donor_key: str = "donor_id", age_key: str = "age", seed: int = 0,
                  allow_non_counts: bool = False, block_rows: int = CHUNK_ROWS,
                  donor_sums_gb: float = 0.5) -> StreamedCohort:
    """Validate and split the cohort in ``path`` without loading its matrix (see the module docstring).

    The same checks, split and messages as ``load_cohort``; one pass over the matrix, which also sums
    every donor's counts when donors x genes float64 fit in ``donor_sums_gb`` (69 donors x 17,658 genes:
    10 MB), so that the pseudobulk of whole donors needs no further pass.
    """
    from neuroage_utils.data.cohort import MIN_DONORS

    path = Path(path)
    with _open(path) as f:
        if "obs" not in f:
            raise DataValidationError(f"{path} has no obs: pass an .h5ad written by anndata or scanpy")
        obs = f["obs"]
        columns = _obs_columns(obs)
        if donor_key not in columns or age_key not in columns:
            validate_obs(pd.DataFrame(columns=columns), donor_key, age_key)  # raises the missing-column message
        donor_col, age_col = _read_column(obs, donor_key), _read_column(obs, age_key)
        sex_key = next((c for c in ("sex", "Sex") if c in columns), None)
        sex_col = _read_column(obs, sex_key) if sex_key else None
        var_index = f["var"].attrs.get("_index", "_index")
        gene_names = np.asarray(f["var"][var_index if isinstance(var_index, str) else var_index.decode()][:]).astype(str)
        node, kind = _matrix_node(f)
        if kind == "csr_matrix":
            n_cells, n_genes = (int(v) for v in node.attrs["shape"])
            indptr = np.asarray(node["indptr"][:], dtype=np.int64)
            nnz = int(indptr[-1])
        else:
            n_cells, n_genes = (int(v) for v in node.shape)
            indptr, nnz = None, n_cells * n_genes
    if len(donor_col) == 0 or donor_col.isna().any():  # the empty / missing-donor messages count cells
        validate_obs(pd.DataFrame({donor_key: donor_col, age_key: age_col}), donor_key, age_key)
    names, codes = _donor_codes(donor_col)
    ages = pd.to_numeric(age_col, errors="coerce").to_numpy(dtype=float)
    first = np.full(len(names), -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # each donor's first cell
    # Every remaining check depends only on the distinct (donor, age) pairs in order of first appearance:
    # with one finite age per donor (the usual case) they are the donors' first cells, found without a
    # per-cell table; otherwise pandas finds them.
    low, high = ages[first].copy(), ages[first].copy()
    with np.errstate(invalid="ignore"):  # a missing age is reported below, by validate_obs
        np.minimum.at(low, codes, ages)
        np.maximum.at(high, codes, ages)
    if np.isfinite(ages).all() and np.array_equal(low, high):
        distinct = np.sort(first)
    else:
        distinct = pd.DataFrame({"donor": codes, "age": age_col.to_numpy()}).drop_duplicates().index.to_numpy()
    validate_obs(pd.DataFrame({donor_key: donor_col.iloc[distinct].to_numpy(), age_key: age_col.iloc[distinct].to_numpy()}),
                 donor_key, age_key, min_donors=MIN_DONORS)
    if n_genes == 0:
        raise DataValidationError("the data has no genes: pass an .h5ad with a non-empty expression matrix")
    donors = pd.DataFrame({"donor_id": names, "age": np.zeros(len(names)), "n_cells": np.bincount(codes, minlength=len(names))})
    donors["age"] = ages[first]
    if sex_col is not None:
        donors["sex"] = sex_col.astype(str).to_numpy()[first]
        donors = donors[["donor_id", "age", "n_cells", "sex"]]
    study_split = _study_split(donors)
    split = study_split if study_split is not None else split_donors(donors, seed=seed, use_study_split=False)
    donors["split"] = split.loc[donors["donor_id"]].to_numpy()
    split_of_donor = np.array([SPLITS.index(s) for s in donors["split"]], dtype=np.int8)
    cohort = StreamedCohort(
        path=path, n_cells=n_cells, n_genes=n_genes, nnz=nnz, gene_names=gene_names,
        donor_codes=codes.astype(np.int32), ages=ages, donor_table=donors, split_codes=split_of_donor[codes],
        umis=np.zeros(n_cells), genes_detected=np.zeros(n_cells, dtype=np.int64),
        donor_key=donor_key, age_key=age_key,
        split_source="study" if study_split is not None else f"age-stratified (seed {seed})",
        block_rows=int(block_rows), _indptr=indptr,
    )
    _check_blocks(cohort, allow_non_counts, donor_sums_gb * 2**30)
    return cohort


def streamed_pseudobulk(path, donor_key: str = "donor_id", age_key: str = "age", normalise: str | None = "log_cpm",
                        splits=None, seed: int = 0, block_rows: int = CHUNK_ROWS):
    """Donor pseudobulk of an .h5ad of any size, streamed: ``(profiles, donor_ids, ages)``.

    ``profiles`` is donors x genes (CSR; log-CPM by default, as ``features.pseudobulk``), rows in the
    order of ``donor_ids`` (sorted); ``ages`` the donors' ages in that order. ``splits`` (e.g.
    ``("train", "val")``) keeps only donors of those splits (the split of ``load_streamed``); ``None``
    keeps every donor. Memory: one block of ``block_rows`` cells plus the donors x genes sums.
    """
    cohort = load_streamed(path, donor_key, age_key, seed=seed, block_rows=block_rows)
    rows = None if splits is None else cohort.mask(*splits)
    profiles, ids = cohort.pseudobulk(rows, normalise)
    ages = cohort.donor_table.set_index("donor_id").loc[ids, "age"].to_numpy(dtype=float)
    return profiles, ids, ages
