"""The simulated cohort written to an .h5ad block by block: millions of cells in flat memory.

:func:`neuroage_utils.data.simulate.write_simulated_h5ad` calls :func:`write_blocks`; the cells are
those of :func:`~neuroage_utils.data.simulate.simulate_cohort` (same blocks, same random streams),
bit for bit. The file is plain AnnData (``anndata.read_h5ad`` reads it): ``X`` a CSR group whose
``data`` and ``indices`` grow by appending, ``indptr`` int32, or int64 once the non-zeros pass
2^31 - 1 (``indices`` stay int32: they index at most 17,658 genes).

Command line (the benchmarks use it)::

    python -m neuroage_utils.data.simulate OUT.h5ad --cell-fraction 5.28 --n-genes 2000
"""

from __future__ import annotations

import numpy as np

__all__ = ["write_blocks"]

#: Elements per HDF5 chunk of the CSR's data and indices (1 MiB of float32).
_H5_CHUNK = 1 << 18
#: Cells per slice when writing the cell names (bounds the Python strings alive at once).
_NAME_ROWS = 1 << 16


def _encoding(node, kind: str, version: str) -> None:
    node.attrs["encoding-type"] = kind
    node.attrs["encoding-version"] = version


def _write_csr(f, design, n_genes: int, chunk_cells: int, n_threads, progress: bool):
    """Append the counts' CSR unit by unit; returns per-cell UMIs, the per-gene sum of means, nnz."""
    from tqdm import tqdm

    from neuroage_utils.data.simulate_counts import sample_blocks

    n_cells = len(design.donor_idx)
    group = f.create_group("X")
    _encoding(group, "csr_matrix", "0.1.0")
    group.attrs["shape"] = np.array([n_cells, n_genes])
    data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(_H5_CHUNK,))
    indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(_H5_CHUNK,))
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    n_counts = np.zeros(n_cells, dtype=np.int64)
    mu_sum = np.zeros(n_genes)
    pos = row = 0
    with tqdm(total=n_cells, disable=not progress, desc="writing cells", unit="cell") as bar:
        for row_nnz, cols, counts, unit_mu in sample_blocks(design, chunk_cells, n_threads):
            k, rows = len(cols), len(row_nnz)
            data.resize((pos + k,))
            indices.resize((pos + k,))
            data[pos : pos + k] = counts
            indices[pos : pos + k] = cols
            indptr[row + 1 : row + 1 + rows] = pos + np.cumsum(row_nnz)
            # exact: every per-cell total is an integer far below 2^53
            n_counts[row : row + rows] = np.bincount(np.repeat(np.arange(rows), row_nnz), weights=counts,
                                                     minlength=rows).astype(np.int64)
            mu_sum += unit_mu
            pos, row = pos + k, row + rows
            bar.update(rows)
    index_dtype = np.int32 if pos < np.iinfo(np.int32).max else np.int64
    group.create_dataset("indptr", data=indptr.astype(index_dtype, copy=False))
    return n_counts, mu_sum, pos


def _write_obs(f, sim: dict, n_counts: np.ndarray) -> None:
    """obs as AnnData's dataframe encoding; the cell names (one string per cell) in slices."""
    import h5py
    from anndata.io import write_elem

    from neuroage_utils.data.simulate_tables import cell_names, obs_columns

    cohort, cells = sim["cohort"], sim["cells"]
    n_cells = len(n_counts)
    columns = obs_columns(cohort, cells, n_counts)
    group = f.create_group("obs")
    _encoding(group, "dataframe", "0.2.0")
    group.attrs["_index"] = "cell"
    group.attrs["column-order"] = np.array(list(columns), dtype=object)
    for name, values in columns.items():
        write_elem(group, name, values)
    names = group.create_dataset("cell", shape=(n_cells,), dtype=h5py.string_dtype())
    _encoding(names, "string-array", "0.2.0")
    for start in range(0, n_cells, _NAME_ROWS):
        stop = min(start + _NAME_ROWS, n_cells)
        names[start:stop] = cell_names(cohort, cells, start, stop)


def _strings_to_categoricals(frame):
    """What ``AnnData.write_h5ad`` does to string columns, so both writers store the same var."""
    import pandas as pd

    for key in frame.columns:
        if pd.api.types.infer_dtype(frame[key], skipna=False) == "string":
            values = pd.Categorical(frame[key])
            if len(values.categories) < len(values):
                frame[key] = values
    return frame


def write_blocks(path, sim: dict, chunk_cells: int = 4096, n_threads=None, progress: bool = False) -> None:
    """Write the prepared simulation ``sim`` (``simulate._prepare``) to ``path`` as .h5ad."""
    import h5py
    from anndata.io import write_elem

    from neuroage_utils.data.simulate_tables import make_uns, make_var

    kept = sim["kept"]
    with h5py.File(path, "w") as f:
        _encoding(f, "anndata", "0.1.0")
        n_counts, mu_sum, nnz = _write_csr(f, sim["design"], len(kept), chunk_cells, n_threads, progress)
        var = _strings_to_categoricals(make_var(sim["genes"], kept, mu_sum / len(n_counts)))
        _write_obs(f, sim, n_counts)
        write_elem(f, "var", var)
        for empty in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, empty, {})
        write_elem(f, "uns", make_uns(sim, var, n_counts, nnz))
