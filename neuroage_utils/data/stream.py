"""A cohort read from its .h5ad in fixed row blocks: memory flat in the number of cells.

The in-memory path (:func:`neuroage_utils.data.cohort.load_cohort`) loads the whole matrix and
copies it, about 36 GB per million cells at 17,658 genes. A :class:`StreamedCohort` keeps two
per-cell vectors (the donor's code in the smallest integer type that holds it, and the library
size in float32: 5-6 bytes a cell, 12 MB at 2 million cells) and reads everything else from the
file ``block_rows`` rows at a time (h5py on the ``data`` / ``indices`` / ``indptr`` datasets and
the obs columns), so memory is one block plus the donor-level results, whatever the number of cells:

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
same blocks) and to rounding otherwise (tested). ``indptr`` is read block by block as int64, so a
file with more than 2^31 non-zeros streams like any other. Per-cell ages and splits are views
computed from the donor table when asked (one donor, one age: checked at load). :func:`should_stream` chooses the path: streamed above
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
from neuroage_utils.data.heap import mmap_large_blocks
from neuroage_utils.data.stream_obs import (
    _kind, _matrix_node, _obs_columns, _open, column_codes, column_numbers, missing_code,
)
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


def count_codes(codes: np.ndarray, n: int, rows=None, chunk: int = 1 << 20) -> np.ndarray:
    """``np.bincount(codes[rows], minlength=n)`` a million cells at a time (bincount copies its input to
    8-byte integers: a whole-column call would cost 8 bytes a cell)."""
    out = np.zeros(n, dtype=np.int64)
    for a in range(0, len(codes), chunk):
        part = codes[a : a + chunk] if rows is None else codes[a : a + chunk][rows[a : a + chunk]]
        out += np.bincount(part, minlength=n)
    return out


def values_at(obs, key: str, rows: np.ndarray) -> np.ndarray:
    """The values (as strings) of obs column ``key`` at the given cells only (e.g. each donor's first)."""
    node = obs[key]
    kind = _kind(node)
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows)
    out = np.empty(len(rows), dtype=object)
    if kind == "categorical":
        from anndata.io import read_elem

        categories = np.asarray(read_elem(node["categories"])).astype(str)
        codes = np.asarray(node["codes"][rows[order]]) if len(rows) else np.array([], dtype=int)
        out[order] = np.where(codes >= 0, categories[np.maximum(codes, 0)], "nan")
    elif kind in ("string-array", "array") and getattr(node, "ndim", 0) == 1:
        values = node.asstr()[rows[order]] if kind == "string-array" else node[rows[order]]
        out[order] = np.asarray(values).astype(str)
    else:
        out[:] = _read_column(obs, key).astype(str).to_numpy()[rows]
    return out.astype(str)


def _donor_ages(path, age_key: str, codes: np.ndarray, n_donors: int) -> dict:
    """Each donor's first cell, its age there, and whether every donor has one finite age, from the age
    column read a million cells at a time (``stream_obs.column_numbers``: non-numbers are NaN)."""
    first = np.full(n_donors, -1, dtype=np.int64)
    age = np.full(n_donors, np.nan)
    low, high = np.full(n_donors, np.inf), np.full(n_donors, -np.inf)
    finite = True
    for a, ages in column_numbers(path, age_key):
        own = codes[a : a + len(ages)]
        finite = finite and bool(np.isfinite(ages).all())
        present, at = np.unique(own, return_index=True)
        new = first[present] < 0
        first[present[new]], age[present[new]] = a + at[new], ages[at[new]]
        with np.errstate(invalid="ignore"):  # a missing age is reported by validate_obs
            np.minimum.at(low, own, ages)
            np.maximum.at(high, own, ages)
    return {"first": first, "age": age, "consistent": finite and bool(np.array_equal(low, high))}


@dataclass
class StreamedCohort:
    """A validated cohort whose matrix stays in its file; two per-cell vectors in memory.

    ``donor_codes`` index ``donor_table`` (donors sorted by id, as in the in-memory ``Cohort``), in
    the smallest integer type that holds them; ``umis`` are the library sizes (float32: exact for
    counts below 2^24). ``ages``, ``split_codes``, ``split``, ``donors`` and ``genes_detected`` are
    computed when asked (each a new per-cell array), so that holding the cohort costs 5-6 bytes a cell.
    """

    path: Path
    n_cells: int
    n_genes: int
    nnz: int
    gene_names: np.ndarray
    donor_codes: np.ndarray
    donor_table: pd.DataFrame
    umis: np.ndarray
    is_counts: bool = True
    donor_key: str = "donor_id"
    age_key: str = "age"
    split_source: str = "study"
    block_rows: int = CHUNK_ROWS
    #: raw counts summed per donor (donors x genes, float64) in the validation pass, when small enough
    _donor_sums: np.ndarray = field(default=None, repr=False)

    # -- per-cell views, as the in-memory Cohort names them -----------------------------------------
    @property
    def n_donors(self) -> int:
        return int(len(self.donor_table))

    @property
    def donor_split_codes(self) -> np.ndarray:
        """Each donor's split as an index into :data:`SPLITS` (int8, one per donor)."""
        return np.array([SPLITS.index(s) for s in self.donor_table["split"]], dtype=np.int8)

    @property
    def ages(self) -> np.ndarray:
        """One age per cell (float64, from the donor table: a donor has one age, checked at load)."""
        return self.donor_table["age"].to_numpy(dtype=float)[self.donor_codes]

    @property
    def split_codes(self) -> np.ndarray:
        return self.donor_split_codes[self.donor_codes]

    @property
    def donors(self) -> np.ndarray:
        """One donor id per cell (strings: about 60 bytes a cell; the codes are cheaper)."""
        return self.donor_table["donor_id"].to_numpy().astype(str)[self.donor_codes]

    @property
    def split(self) -> np.ndarray:
        return np.asarray(SPLITS)[self.split_codes]

    @property
    def genes_detected(self) -> np.ndarray:
        """Genes detected per cell (int32), from the file's row offsets read block by block."""
        out = np.empty(self.n_cells, dtype=np.int32)
        with _open(self.path) as f:
            node, kind = _matrix_node(f)
            for a in range(0, self.n_cells, self.block_rows):
                b = min(a + self.block_rows, self.n_cells)
                if kind == "csr_matrix":
                    out[a:b] = np.diff(np.asarray(node["indptr"][a : b + 1], dtype=np.int64))
                else:
                    out[a:b] = np.count_nonzero(np.asarray(node[a:b]), axis=1)
        return out

    def donor_mask(self, *splits: str) -> np.ndarray:
        """Boolean per donor: is the donor in any of ``splits``."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use {SPLITS}")
        return np.isin(self.donor_table["split"].to_numpy(), list(splits))

    def mask(self, *splits: str) -> np.ndarray:
        """Boolean mask of the cells whose donor is in any of ``splits`` (one byte a cell)."""
        return self.donor_mask(*splits)[self.donor_codes]

    # -- reading blocks -------------------------------------------------------------------------------
    def blocks(self, normalise: bool = False, target_sum: float = 1e4, start: int = 0, stop: int | None = None,
               needed=None):
        """Yield ``(first_row, csr_block)`` of raw counts (float32), or of log1p(CP10k) when ``normalise``.

        The normalisation is ``log_normalize``'s, row by row (each row's float64 total, its float32
        scale): the same float32 values. With a boolean ``needed`` per cell, blocks without a needed
        cell are not read (cells are stored by donor, so a split's donors sit in few blocks).
        """
        stop = self.n_cells if stop is None else stop
        with _open(self.path) as f:
            node, kind = _matrix_node(f)
            for a in range(start, stop, self.block_rows):
                b = min(a + self.block_rows, stop)
                if needed is not None and not needed[a:b].any():
                    continue
                block = self._read(node, kind, a, b)
                if normalise and self.is_counts:
                    totals = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
                    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
                    block.data *= np.repeat(scale, np.diff(block.indptr))
                    np.log1p(block.data, out=block.data)
                yield a, block

    def _read(self, node, kind: str, a: int, b: int) -> sp.csr_matrix:
        if kind != "csr_matrix":
            return sp.csr_matrix(np.asarray(node[a:b], dtype=np.float32))
        offsets = np.asarray(node["indptr"][a : b + 1], dtype=np.int64)  # read per block: no per-cell copy
        lo, hi = int(offsets[0]), int(offsets[-1])
        # a block's own offsets fit int32 even when the file's indptr needs int64
        local = np.int32 if hi - lo < np.iinfo(np.int32).max else np.int64
        indptr = (offsets - lo).astype(local)
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
        present = np.flatnonzero(count_codes(self.donor_codes[cells], self.n_donors))
        remap = np.zeros(self.n_donors, dtype=np.int32)
        remap[present] = np.arange(len(present), dtype=np.int32)
        return present, remap[self.donor_codes[cells]]

    def _donor_sums_of(self, rows, present: np.ndarray) -> np.ndarray:
        """Dense float64 raw-count sums of the cells in boolean ``rows`` (None: all) of each donor in
        ``present``, block by block: no per-cell index array (exact for counts)."""
        group = np.full(self.n_donors, -1, dtype=np.int64)
        group[present] = np.arange(len(present))
        out = np.zeros((len(present), self.n_genes))
        for a, block in self.blocks(needed=rows):
            b = a + block.shape[0]
            own = group[self.donor_codes[a:b]]
            keep = own >= 0 if rows is None else (own >= 0) & rows[a:b]
            member = sp.csr_matrix((np.ones(int(keep.sum())), (own[keep], np.flatnonzero(keep))),
                                   shape=(len(present), b - a))
            out += (member @ block.astype(np.float64)).toarray()
        return out

    def pseudobulk(self, rows=None, normalise: str | None = "log_cpm"):
        """``features.pseudobulk`` of the cells in ``rows`` (default all): (profiles CSR, sorted donor ids).

        Memory: the selected cells' donor codes (1-2 bytes a cell) and the donors x genes sums."""
        what = "pseudobulk"
        _check_normalise(normalise)
        rows = None if rows is None else np.asarray(rows, dtype=bool)
        counts = count_codes(self.donor_codes, self.n_donors, rows)
        present = np.flatnonzero(counts)
        whole = np.array_equal(counts[present], self.donor_table["n_cells"].to_numpy()[present])
        if self._donor_sums is not None and whole:  # whole donors: their sums from the validation pass, no read
            sums = sp.csr_matrix(self._donor_sums[present])
        else:
            sums = sp.csr_matrix(self._donor_sums_of(rows, present))
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
        own = self.donor_codes[keep]  # the sample's donor codes: per-cell arrays of the sample only
        donors = self.donor_table["donor_id"].to_numpy().astype(str)[own]
        ages = self.donor_table["age"].to_numpy(dtype=float)[own]
        obs = pd.DataFrame({self.donor_key: donors, self.age_key: ages},
                           index=pd.Index(np.flatnonzero(keep).astype(str), name="row"))
        notes = self.annotations()
        adata = ad.AnnData(X=X, obs=obs, var=notes.var, uns=dict(notes.uns))
        return Cohort(adata=adata, X=X, donors=donors, ages=ages, split=np.asarray(SPLITS)[self.donor_split_codes[own]],
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
    codes = np.asarray(donor_codes)
    n_groups = int(codes.max()) + 1
    sizes = count_codes(codes, n_groups, mask)
    present = np.flatnonzero(sizes)
    caps = np.arange(1, sizes.max() + 1)
    kept = np.minimum(sizes[present][None, :], caps[:, None]).sum(axis=1)  # cells kept at each cap
    cap = int(caps[np.searchsorted(kept, int(max_cells))])
    # Each donor's chosen ranks (its k-th cell in file order), drawn donor by donor as
    # rng.choice(cells, cap) draws them; a flat boolean over (donor, rank): one byte a cell, no index arrays.
    offset = np.concatenate([[0], np.cumsum(sizes)])
    chosen = np.ones(int(offset[-1]), dtype=bool)
    for d in present:
        if sizes[d] > cap:
            chosen[offset[d] : offset[d + 1]] = False
            chosen[offset[d] + rng.choice(sizes[d], cap, replace=False)] = True
    out = np.zeros_like(mask)
    seen = np.zeros(n_groups, dtype=np.int64)
    for a in range(0, len(codes), 1 << 20):  # ranks within donors, a million cells at a time
        rows = np.flatnonzero(mask[a : a + (1 << 20)])
        own = codes[a + rows].astype(np.int64)
        order = np.argsort(own, kind="stable")
        counts = np.bincount(own, minlength=n_groups)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(own), dtype=np.int64)
        rank[order] = np.arange(len(own)) - starts[own[order]]
        out[a + rows] = chosen[offset[own] + seen[own] + rank]
        seen += counts
    return out


def _check_blocks(cohort: StreamedCohort, allow_non_counts: bool, donor_sums_limit: float) -> None:
    """One pass: finite values, counts (as ``require_counts`` says it), library sizes, and the per-donor
    sums of raw counts when donors x genes float64 fit in ``donor_sums_limit`` bytes."""
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
        if sums is not None:  # float64 sums of integer counts: exact, in any order
            codes = cohort.donor_codes[a:b]
            member = sp.csr_matrix((np.ones(b - a), (codes, np.arange(b - a))), shape=(cohort.n_donors, b - a))
            sums += (member @ block.astype(np.float64)).toarray()
    cohort.is_counts = lowest >= 0 and example is None
    cohort._donor_sums = sums if cohort.is_counts else None
    if not cohort.is_counts and not allow_non_counts:
        # the one home of these sentences is checks.require_counts: hand it the offending value
        require_counts(np.array([[lowest if lowest < 0 else example]], dtype=np.float64), _WHO)


def _validate_whole(obs, donor_key: str, age_key: str, codes=None) -> None:
    """The in-memory checks on whole obs columns: for files whose donor or age columns fail a check
    (an error is coming, so their memory does not matter) and reach here to get its message."""
    from neuroage_utils.data.cohort import MIN_DONORS

    donor_col, age_col = _read_column(obs, donor_key), _read_column(obs, age_key)
    if len(donor_col) == 0 or donor_col.isna().any() or codes is None:
        validate_obs(pd.DataFrame({donor_key: donor_col, age_key: age_col}), donor_key, age_key)
    # the remaining checks depend only on the distinct (donor, age) pairs in order of first appearance
    distinct = pd.DataFrame({"donor": codes, "age": age_col.to_numpy()}).drop_duplicates().index.to_numpy()
    validate_obs(pd.DataFrame({donor_key: donor_col.iloc[distinct].to_numpy(), age_key: age_col.iloc[distinct].to_numpy()}),
                 donor_key, age_key, min_donors=MIN_DONORS)


def load_streamed(path, donor_key: str = "donor_id", age_key: str = "age", seed: int = 0,
                  allow_non_counts: bool = False, block_rows: int = CHUNK_ROWS,
                  donor_sums_gb: float = 0.5) -> StreamedCohort:
    """Validate and split the cohort in ``path`` without loading its matrix (see the module docstring).

    The same checks, split and messages as ``load_cohort``; one pass over the matrix, which also sums
    every donor's counts when donors x genes float64 fit in ``donor_sums_gb`` (69 donors x 17,658 genes:
    10 MB), so that the pseudobulk of whole donors needs no further pass. The obs columns are read
    as codes or block by block (``stream_obs.column_codes``, :func:`values_at`): no per-cell string or float.
    """
    from neuroage_utils.data.cohort import MIN_DONORS

    mmap_large_blocks()  # blocks mapped and unmapped whole: a heap that does not grow with the cells read
    path = Path(path)
    with _open(path) as f:
        if "obs" not in f:
            raise DataValidationError(f"{path} has no obs: pass an .h5ad written by anndata or scanpy")
        obs = f["obs"]
        columns = _obs_columns(obs)
        if donor_key not in columns or age_key not in columns:
            validate_obs(pd.DataFrame(columns=columns), donor_key, age_key)  # raises the missing-column message
        node, kind = _matrix_node(f)
        if kind == "csr_matrix":
            n_cells, n_genes = (int(v) for v in node.attrs["shape"])
            nnz = int(node["indptr"][-1]) if n_cells else 0
        else:
            n_cells, n_genes = (int(v) for v in node.shape)
            nnz = n_cells * n_genes
        names, codes = column_codes(path, donor_key) if n_cells else (None, None)
        if codes is None or (codes == missing_code(codes)).any():  # no cells, or cells without a donor
            _validate_whole(obs, donor_key, age_key)
        # Every remaining check depends only on the distinct (donor, age) pairs in order of first
        # appearance: with one finite age per donor (the usual case) they are the donors' first cells,
        # found block by block; otherwise the whole columns are read and pandas finds them.
        seen = _donor_ages(path, age_key, codes, len(names))
        first = seen["first"]
        if not seen["consistent"]:
            _validate_whole(obs, donor_key, age_key, codes)
        distinct = np.sort(first)
        validate_obs(pd.DataFrame({donor_key: names[codes[distinct]], age_key: seen["age"][codes[distinct]]}),
                     donor_key, age_key, min_donors=MIN_DONORS)
        sex_key = next((c for c in ("sex", "Sex") if c in columns), None)
        sex = values_at(obs, sex_key, first) if sex_key else None
        var_index = f["var"].attrs.get("_index", "_index")
        gene_names = np.asarray(f["var"][var_index if isinstance(var_index, str) else var_index.decode()][:]).astype(str)
    if n_genes == 0:
        raise DataValidationError("the data has no genes: pass an .h5ad with a non-empty expression matrix")
    donors = pd.DataFrame({"donor_id": names, "age": seen["age"], "n_cells": count_codes(codes, len(names))})
    if sex is not None:
        donors["sex"] = sex
    study_split = _study_split(donors)
    split = study_split if study_split is not None else split_donors(donors, seed=seed, use_study_split=False)
    donors["split"] = split.loc[donors["donor_id"]].to_numpy()
    cohort = StreamedCohort(
        path=path, n_cells=n_cells, n_genes=n_genes, nnz=nnz, gene_names=gene_names, donor_codes=codes,
        donor_table=donors, umis=np.zeros(n_cells, dtype=np.float32), donor_key=donor_key, age_key=age_key,
        split_source="study" if study_split is not None else f"age-stratified (seed {seed})",
        block_rows=int(block_rows),
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
