"""Mini-batches of cells on one device, and streamed statistics of a per-batch transform.

Performance notes: the enemy is per-batch Python, copying and host synchronisation. Three storage
modes, chosen once:

- ``dense``: the dense float32 matrix fits under ``max_dense_bytes``; it is densified once onto the
  device and a batch is one ``index_select``;
- ``device_csr`` (a GPU with room for it, see :func:`device_csr_fits`): the CSR buffers are moved to
  the device once and each batch is densified there by :func:`densify_rows` (fixed-shape tensor ops,
  no data-dependent size, so the host never waits for the device);
- ``host``: each batch is densified from CSR rows by scipy (~0.1 s per 4096 x 17,658 batch on this
  CPU) and copied, so nothing ever densifies the full paper-scale matrix on the host.

All three yield the same batches, bit for bit (``tests/train/test_train.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from neuroage_utils.errors import DataValidationError
from neuroage_utils.train.device import resolve_device

__all__ = ["DEFAULT_MAX_DENSE_BYTES", "CellBatches", "transformed_stats", "as_float32_matrix", "check_finite_matrix",
           "densify_rows", "device_csr_fits", "partial_moments", "merge_moments"]

#: Densify the whole matrix once when its float32 copy is at most this many bytes (2 GiB).
DEFAULT_MAX_DENSE_BYTES = 2 * 1024**3

#: Share of the device's free memory the CSR buffers and a batch's scratch may take; the rest is left
#: to the model, its activations and the optimiser.
DEVICE_CSR_HEADROOM = 0.5


def _device_csr_bytes(X, batch_size: int) -> int:
    """Bytes of device-resident CSR (int64 row pointers, int32 columns, float32 values) plus the
    scratch of one :func:`densify_rows` call and its dense output."""
    n_rows, n_cols = X.shape
    max_row_nnz = int(np.diff(X.indptr).max(initial=0))
    batch = min(int(batch_size), n_rows)
    scratch = batch * max_row_nnz * (8 + 8 + 4 + 4 + 1)  # positions, columns (int64), values, mask
    return (n_rows + 1) * 8 + X.nnz * (4 + 4) + scratch + batch * n_cols * 4


def device_csr_fits(X, device: torch.device, batch_size: int, headroom: float = DEVICE_CSR_HEADROOM) -> bool:
    """Whether sparse ``X`` kept on CUDA ``device`` takes at most ``headroom`` of its free memory
    (``torch.cuda.mem_get_info``). Always False for a dense ``X`` or a device that is not CUDA."""
    if not sp.issparse(X) or torch.device(device).type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return _device_csr_bytes(X, batch_size) <= headroom * free


def densify_rows(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, idx: torch.Tensor, n_cols: int,
                 max_row_nnz: int) -> torch.Tensor:
    """Dense ``X[idx]`` (len(idx) x n_cols) from CSR buffers on one device; fixed shapes, no host sync.

    Rows are padded to the longest row of the matrix (known once, at set-up), so no step needs a
    data-dependent size. Padding slots add 0.0 through ``scatter_add_`` and every real (row, column)
    pair occurs once, so the result is exact and does not depend on the order of the atomic adds CUDA
    uses: it equals scipy's ``X[idx].toarray()``.
    """
    starts = crow.index_select(0, idx)
    counts = crow.index_select(0, idx + 1) - starts
    offsets = torch.arange(max_row_nnz, device=crow.device)
    valid = offsets[None, :] < counts[:, None]
    pos = torch.where(valid, starts[:, None] + offsets[None, :], torch.zeros((), dtype=starts.dtype, device=crow.device))
    values = torch.where(valid, val[pos], torch.zeros((), dtype=val.dtype, device=val.device))
    out = torch.zeros(idx.shape[0], n_cols, dtype=val.dtype, device=val.device)
    if max_row_nnz:
        with _exact_by_construction():
            out.scatter_add_(1, col[pos].long(), values)
    return out


class _exact_by_construction:
    """Lift ``torch.use_deterministic_algorithms`` around one op whose result cannot depend on the order
    of its atomic adds (each target gets one value plus exact zeros), so the slower deterministic CUDA
    kernel (or, in older torch, a warning per batch) buys nothing here."""

    def __enter__(self):
        self._state = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled())
        if self._state[0]:
            torch.use_deterministic_algorithms(False)

    def __exit__(self, *exc):
        if self._state[0]:
            torch.use_deterministic_algorithms(True, warn_only=self._state[1])
        return False


def as_float32_matrix(X):
    """CSR float32 or C-contiguous float32 ndarray, without copying when already so."""
    if sp.issparse(X):
        if X.format != "csr" or X.dtype != np.float32:
            X = sp.csr_matrix(X, dtype=np.float32)
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataValidationError(
            f"expected a cells x features matrix, got an array with {X.ndim} dimension(s): pass a 2-D matrix"
        )
    return np.ascontiguousarray(X, dtype=np.float32)


def check_finite_matrix(X, what: str = "X") -> None:
    values = X.data if sp.issparse(X) else X
    if values.size and not np.isfinite(values).all():
        raise DataValidationError(f"{what} holds NaN or infinite values: remove or fill them before training")


class CellBatches:
    """Mini-batches of cells (rows of X) with their per-cell targets and extras, on one device.

    Parameters
    ----------
    X
        cells x features, ``scipy.sparse`` (CSR preferred) or dense array.
    targets
        One value per cell (the scaled age), or ``None`` for prediction-only batches.
    library_size
        Optional per-cell library size (offset of the count likelihoods); models that need one and
        get none use the row sums of the batch.
    extras
        Optional further per-cell arrays, sliced like ``targets`` and passed in the batch dict under
        their own names (e.g. a precomputed per-cell constant of a likelihood).
    batch_size, shuffle
        ``shuffle=True`` draws a fresh permutation each epoch from the generator given to
        :meth:`iterate`; a trailing batch of a single cell is skipped (BatchNorm cannot train on one
        row; the cell is in another batch next epoch). ``shuffle=False`` yields rows in order, all of
        them.
    device, max_dense_bytes
        The matrix is densified once onto ``device`` when ``n_cells * n_features * 4`` bytes is at
        most ``max_dense_bytes``; otherwise each batch is densified from CSR rows.
    device_csr
        Where a sparse matrix that is not densified lives: ``None`` (default) keeps the CSR on the
        device when the device is CUDA and it fits (:func:`device_csr_fits`), else on the host;
        ``True`` forces the device-resident path (on any device, e.g. to test it on the CPU);
        ``False`` forces the host path. The storage chosen is ``self.storage``.

    A batch is a dict: ``x`` (float32, batch x features), and when given ``y``, ``library`` and the
    extras. Rows within a shuffled batch are sorted by index: row order within a batch does not
    change a mean loss, and sorted rows make CSR row gathers cache-friendly and both storage modes
    yield the same batches.
    """

    def __init__(
        self,
        X,
        targets=None,
        library_size=None,
        extras: Mapping[str, np.ndarray] | None = None,
        batch_size: int = 4096,
        shuffle: bool = True,
        device: str | torch.device = "cpu",
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        device_csr: bool | None = None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        X = as_float32_matrix(X)
        check_finite_matrix(X)
        self.n_cells, self.n_features = int(X.shape[0]), int(X.shape[1])
        if self.n_cells == 0:
            raise DataValidationError("no cells to batch: pass a matrix with at least one row")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.dense = self.n_cells * self.n_features * 4 <= int(max_dense_bytes)
        self._fingerprint = self._matrix_fingerprint(X)
        if self.dense:
            self.storage = "dense"
        elif sp.issparse(X) and (device_csr if device_csr is not None
                                 else device_csr_fits(X, self.device, self.batch_size)):
            self.storage = "device_csr"
        else:
            self.storage = "host"
        if self.storage == "dense":
            array = X.toarray() if sp.issparse(X) else X
            array = np.ascontiguousarray(array, dtype=np.float32)
            if not array.flags.writeable:  # e.g. memory-mapped by a worker process: torch wants its own
                array = array.copy()
            self._X = torch.from_numpy(array).to(self.device)
        elif self.storage == "device_csr":  # moved once; batches are densified on the device
            self._crow = torch.from_numpy(X.indptr.astype(np.int64)).to(self.device)
            self._col = torch.from_numpy(X.indices.astype(np.int32)).to(self.device)
            self._val = torch.from_numpy(np.ascontiguousarray(X.data, dtype=np.float32)).to(self.device)
            self._max_row_nnz = int(np.diff(X.indptr).max(initial=0))
            self._X = None
        else:
            self._X = X  # host CSR (or dense ndarray); batches densified on demand
        self._cell = {}
        for name, values in (("y", targets), ("library", library_size), *((extras or {}).items())):
            if values is None:
                continue
            values = np.array(values, dtype=np.float32)  # a copy: torch wants writable memory
            if values.shape[0] != self.n_cells:
                raise DataValidationError(
                    f"{name} has {values.shape[0]} values for {self.n_cells} cells: pass one value per cell"
                )
            if not np.isfinite(values).all():
                raise DataValidationError(f"{name} holds NaN or infinite values: pass finite values")
            self._cell[name] = torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

    @staticmethod
    def _matrix_fingerprint(X) -> dict:
        """Cheap identity of the data for checkpoint config hashes (shape, nnz, sums)."""
        values = X.data if sp.issparse(X) else X.reshape(-1)
        total = total_sq = 0.0
        for start in range(0, values.size, 1 << 24):  # float64 sums in blocks: no full-size temporaries
            block = values[start : start + (1 << 24)].astype(np.float64)
            total += float(block.sum())
            total_sq += float(np.dot(block, block))
        out = {"shape": list(X.shape), "sum": total, "sumsq": total_sq}
        if sp.issparse(X):
            out["nnz"] = int(X.nnz)
        return out

    def fingerprint(self) -> dict:
        out = dict(self._fingerprint)
        for name, values in self._cell.items():
            out[name] = float(values.double().sum())
        out["batch_size"] = self.batch_size
        return out

    @property
    def has_targets(self) -> bool:
        return "y" in self._cell

    def __len__(self) -> int:
        """Number of batches per pass (an upper bound when shuffling may skip a single-cell tail)."""
        return math.ceil(self.n_cells / self.batch_size)

    def __iter__(self):
        return self.iterate()

    def iterate(self, generator: torch.Generator | None = None):
        """Yield batch dicts; with ``shuffle`` the order comes from ``generator`` (CPU generator).

        The permutation is drawn once per epoch on the CPU generator (the same order on every device,
        and its state is what checkpoints save) and moved to the device in one copy; batch indices are
        then sliced and sorted on the device. Batch boundaries are Python integers: nothing here
        waits for the device.
        """
        n, size = self.n_cells, self.batch_size
        if not self.shuffle:
            for start in range(0, n, size):
                yield self._slice(start, min(start + size, n))
            return
        order = torch.randperm(n, generator=generator)
        on_host = self.storage == "host"
        if not on_host:
            order = order.to(self.device)
        for start in range(0, n, size):
            if min(start + size, n) - start < 2 and n > 1:
                continue
            yield self._gather(torch.sort(order[start : start + size]).values)

    def _slice(self, start: int, stop: int) -> dict:
        if self.storage == "dense":
            x = self._X[start:stop]
        elif self.storage == "device_csr":
            x = self._densify(torch.arange(start, stop, device=self.device))
        else:
            x = self._host_rows(self._X[start:stop])
        batch = {"x": x}
        batch.update({k: v[start:stop] for k, v in self._cell.items()})
        return batch

    def _host_rows(self, rows) -> torch.Tensor:
        """Rows taken from the host matrix, densified (scipy) and moved to the device."""
        return torch.from_numpy(rows.toarray() if sp.issparse(rows) else np.array(rows)).to(self.device)

    def _densify(self, dev_idx: torch.Tensor) -> torch.Tensor:
        return densify_rows(self._crow, self._col, self._val, dev_idx, self.n_features, self._max_row_nnz)

    def _gather(self, idx: torch.Tensor) -> dict:
        """The batch of rows ``idx`` (sorted; on the device unless the storage is ``host``)."""
        if self.storage == "host":
            dev_idx = idx.to(self.device)
            x = self._host_rows(self._X[idx.numpy()])
        else:
            dev_idx = idx
            x = self._X.index_select(0, dev_idx) if self.storage == "dense" else self._densify(dev_idx)
        batch = {"x": x}
        batch.update({k: v.index_select(0, dev_idx) for k, v in self._cell.items()})
        return batch

    def with_options(self, **changes) -> "CellBatches":
        """A shallow copy sharing the stored matrix, with e.g. ``shuffle`` or ``batch_size`` changed."""
        other = copy.copy(self)
        for key, value in changes.items():
            if key not in ("shuffle", "batch_size"):
                raise ValueError(f"with_options: cannot change {key!r}")
            setattr(other, key, value)
        return other


@torch.no_grad()
def transformed_stats(batches: CellBatches, transform: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Per-feature mean, population std, min and max of ``transform(x)`` over all rows, streamed.

    Batch moments are merged with Chan et al.'s pairwise update in float64,
    :math:`M_2 = M_2^a + M_2^b + \\delta^2 n_a n_b / n`, which stays accurate where the naive
    :math:`E[x^2] - E[x]^2` cancels. Used to fit z-scoring on a transform that is only ever applied
    per batch (e.g. log-normalisation), so the full transformed matrix never exists.
    """
    count, mean, m2, lo, hi = partial_moments(batches, transform)
    std = torch.sqrt(m2 / count)
    return {k: v.cpu().numpy() for k, v in {"mean": mean, "std": std, "min": lo, "max": hi}.items()}


def merge_moments(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s merge of two ``(count, mean, M2, min, max)`` partial moments (float64)."""
    count, mean, m2, lo, hi = a
    nb, bmean, bm2, bmin, bmax = b
    total = count + nb
    delta = bmean - mean
    return (total, mean + delta * (nb / total), m2 + bm2 + delta**2 * (count * nb / total),
            torch.minimum(lo, bmin), torch.maximum(hi, bmax))


@torch.no_grad()
def partial_moments(batches: CellBatches, transform: Callable[[torch.Tensor], torch.Tensor]) -> tuple:
    """``(count, mean, M2, min, max)`` of ``transform(x)`` over the rows of ``batches`` in order."""
    source = batches.with_options(shuffle=False)
    merged = (0, None, None, None, None)
    for batch in source.iterate():
        z = transform(batch["x"]).double()
        bmean = z.mean(dim=0)
        part = (z.shape[0], bmean, ((z - bmean) ** 2).sum(dim=0), z.min(dim=0).values, z.max(dim=0).values)
        merged = part if merged[1] is None else merge_moments(merged, part)
    return merged
