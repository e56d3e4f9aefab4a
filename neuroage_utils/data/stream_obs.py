"""An .h5ad read in row blocks without the cohort's checks: obs columns as small codes, count blocks.

:mod:`neuroage_utils.data.stream` validates a training cohort (donors, one age each, the split,
counts). A clock streamed over a file needs more and less than that: a cell-type or control column
(fit and predict), and, for ``neuroage predict``, donors, ages (optional there) and count blocks
of new data that may hold three donors and no age at all. Here:

- :func:`obs_column_names` and :func:`column_codes`: an obs column (categorical, strings, numbers,
  booleans, nullable) read ``block_rows`` cells at a time as its sorted distinct values (as strings,
  the ``astype(str)`` of the in-memory path) plus one small integer code per cell (uint8 / uint16:
  1-2 bytes a cell, never a string per cell); missing values get the code :data:`MISSING`;
- :func:`column_numbers`: a numeric column (e.g. ages) one block at a time, non-numbers as NaN;
- :func:`count_blocks` and :func:`gene_names`: the raw counts (``layers['counts']`` or ``X``) as
  float32 CSR blocks, reading only each block's slice of ``indptr`` (memory: one block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.data.features import CHUNK_ROWS
from neuroage_utils.errors import DataValidationError

__all__ = ["MISSING", "obs_column_names", "column_codes", "missing_code", "column_numbers", "count_blocks",
           "gene_names"]

# -- the file: opening it, its count matrix's node, its obs columns (the streamed cohort reads these too) --


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


def _obs_columns(obs) -> list[str]:
    order = obs.attrs.get("column-order", [])
    return [c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(order)]


#: The code of a missing value (the largest uint16; a column's distinct values stay below it).
MISSING = np.iinfo(np.uint16).max


def obs_column_names(path) -> list[str]:
    """The obs columns of an .h5ad, in the file's order."""
    with _open(path) as f:
        if "obs" not in f:
            raise DataValidationError(f"{path} has no obs: pass an .h5ad written by anndata or scanpy")
        return _obs_columns(f["obs"])


def _kind(node) -> str:
    kind = node.attrs.get("encoding-type", "array")
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def _as_text(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "SO":
        values = np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)
    return values


def _length(node, kind: str) -> int:
    """Cells in an obs column, whatever its encoding."""
    return node["codes"].shape[0] if kind == "categorical" else (
        node["values"].shape[0] if kind.startswith("nullable") else node.shape[0])


def _block_values(node, kind: str, a: int, b: int):
    """``(values, missing)`` of cells ``a:b``: values as stored (categorical: the codes), missing a mask."""
    if kind == "categorical":
        codes = np.asarray(node["codes"][a:b])
        return codes, codes < 0
    if kind.startswith("nullable"):
        values = _as_text(np.asarray(node["values"][a:b]))
        return values, np.asarray(node["mask"][a:b], dtype=bool)
    values = _as_text(np.asarray(node[a:b]))
    missing = pd.isna(values) if values.dtype == object else (
        np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool))
    return values, np.asarray(missing, dtype=bool)


def column_codes(path, key: str, block_rows: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """``(names, codes)`` of obs column ``key``: its distinct values as sorted strings and each cell's
    index into them (uint8 below 255 values, else uint16), :data:`MISSING` where the cell has none.

    The caller checks that ``key`` exists (:func:`obs_column_names`) and what a missing value means.
    More than 65,534 distinct values is a :class:`DataValidationError` (a label column, not an id).
    """
    from anndata.io import read_elem

    with _open(path) as f:
        node = f["obs"][key]
        kind = _kind(node)
        n = _length(node, kind)
        seen: dict[str, int] = {}  # value -> first-seen index (remapped to sorted order at the end)
        lookup = None
        if kind == "categorical":
            categories = np.asarray(read_elem(node["categories"])).astype(str)
            lookup = np.array([seen.setdefault(c, len(seen)) for c in categories], dtype=np.int64)
        codes = np.empty(n, dtype=np.uint16)
        for a in range(0, n, block_rows):
            b = min(a + block_rows, n)
            values, missing = _block_values(node, kind, a, b)
            if lookup is not None:
                index = lookup[np.where(missing, 0, values)]
            else:
                distinct, inverse = np.unique(np.asarray(values[~missing]).astype(str), return_inverse=True)
                index = np.zeros(b - a, dtype=np.int64)
                index[~missing] = np.array([seen.setdefault(v, len(seen)) for v in distinct], dtype=np.int64)[inverse]
            if len(seen) >= MISSING:
                raise DataValidationError(f"obs['{key}'] holds more than {MISSING - 1:,} distinct values: pass a "
                                          "column of labels (cell types, control status)")
            codes[a:b] = np.where(missing, MISSING, index)
    names = np.array(list(seen), dtype=str)
    order = np.argsort(names, kind="stable")
    used = np.zeros(len(names) + 1, dtype=bool)
    used[np.unique(codes[codes != MISSING])] = True  # only values some cell holds (unused categories drop)
    keep = order[used[order]]
    remap = np.full(MISSING + 1, MISSING, dtype=np.uint16)
    remap[keep] = np.arange(len(keep), dtype=np.uint16)
    codes = remap[codes]
    small = np.uint8 if len(keep) < np.iinfo(np.uint8).max else np.uint16
    if small is np.uint8:
        codes = np.where(codes == MISSING, np.iinfo(np.uint8).max, codes).astype(np.uint8)
    return names[keep], codes


def missing_code(codes: np.ndarray) -> int:
    """The code of a missing value in ``codes`` (as returned by :func:`column_codes`)."""
    return int(np.iinfo(codes.dtype).max)


def column_numbers(path, key: str, block_rows: int = 1 << 20):
    """Yield ``(first_row, float64 values)`` of obs column ``key`` block by block; non-numbers are NaN
    (``pd.to_numeric(errors="coerce")``, as the in-memory path reads ages)."""
    from anndata.io import read_elem

    with _open(path) as f:
        node = f["obs"][key]
        kind = _kind(node)
        categories = None
        if kind == "categorical":
            categories = pd.to_numeric(pd.Series(np.asarray(read_elem(node["categories"]))),
                                       errors="coerce").to_numpy(dtype=float)
        n = _length(node, kind)
        for a in range(0, n, block_rows):
            b = min(a + block_rows, n)
            values, missing = _block_values(node, kind, a, b)
            if categories is not None:
                out = categories[np.where(missing, 0, values)]
            else:
                out = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
            yield a, np.where(missing, np.nan, out)


def gene_names(path) -> np.ndarray:
    """var_names of an .h5ad, as strings."""
    with _open(path) as f:
        var_index = f["var"].attrs.get("_index", "_index")
        key = var_index if isinstance(var_index, str) else var_index.decode()
        return np.asarray(_as_text(np.asarray(f["var"][key][:]))).astype(str)


def count_blocks(path, block_rows: int = CHUNK_ROWS):
    """Yield ``(first_row, float32 CSR block)`` of the raw counts (``layers['counts']`` or ``X``),
    reading each block's slice of ``indptr`` only; NaN or infinite values are the in-memory message."""
    with _open(Path(path)) as f:
        node, kind = _matrix_node(f)
        if kind == "csr_matrix":
            n_cells, n_genes = (int(v) for v in node.attrs["shape"])
        else:
            n_cells, n_genes = (int(v) for v in node.shape)
        for a in range(0, n_cells, block_rows):
            b = min(a + block_rows, n_cells)
            if kind == "csr_matrix":
                ptr = np.asarray(node["indptr"][a : b + 1], dtype=np.int64)
                lo, hi = int(ptr[0]), int(ptr[-1])
                block = sp.csr_matrix((np.asarray(node["data"][lo:hi], dtype=np.float32),
                                       np.asarray(node["indices"][lo:hi]).astype(np.int64 if n_genes > 2**31 - 1
                                                                                  else np.int32),
                                       ptr - lo), shape=(b - a, n_genes))
            else:
                block = sp.csr_matrix(np.asarray(node[a:b], dtype=np.float32))
            if block.nnz and not np.isfinite(block.data).all():
                raise DataValidationError("the expression matrix holds NaN or infinite values: remove or fill them")
            yield a, block

