"""Building blocks shared by the torch networks: the per-batch input transform and MLP blocks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["InputTransform", "mlp_blocks", "is_sparse_rows", "csr_row_index", "row_sums", "sparse_rows",
           "to_dense_rows"]


# --------------------------------------------------------------------------------------------------
# Sparse batches: a batch of raw counts may arrive as a torch sparse CSR tensor (``CellBatches`` on a
# CPU with host-resident CSR). Zeros are most of a count matrix (88% at the paper's scale), and the
# steps that keep zeros at zero (library scaling, log1p, the Poisson fit term) then touch only the
# stored values; the layers still see a dense matrix.
# --------------------------------------------------------------------------------------------------


def is_sparse_rows(x: torch.Tensor) -> bool:
    """Whether ``x`` is a sparse CSR batch (rows = cells)."""
    return x.layout == torch.sparse_csr


def csr_row_index(x: torch.Tensor) -> torch.Tensor:
    """The row of every stored value of a sparse CSR ``x`` (int64, in storage order)."""
    counts = x.crow_indices().diff()
    return torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), counts)


def row_sums(x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sums of a dense or sparse CSR ``x`` (``rows``: :func:`csr_row_index`, if already known)."""
    if not is_sparse_rows(x):
        return x.sum(dim=1)
    rows = csr_row_index(x) if rows is None else rows
    values = x.values()
    return torch.zeros(x.shape[0], dtype=values.dtype, device=x.device).index_add(0, rows, values)


def sparse_rows(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A sparse CSR batch from its parts (torch's "beta" notice silenced: only the basic CSR ops are
    used here, and the parts come from a valid scipy CSR)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, tuple(shape), check_invariants=False)


def to_dense_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense tensor (a no-op when it already is)."""
    return x.to_dense() if is_sparse_rows(x) else x


class InputTransform(nn.Module):
    r"""Per-batch input transform, stored with the model so prediction sees the same maths.

    For a row :math:`x` (one cell) the steps, each optional, are

    1. library-size normalisation: :math:`x \leftarrow x \cdot s / \sum_g x_g` (``target_sum`` = s;
       an empty cell stays 0);
    2. :math:`x \leftarrow \log(1 + x)` (``log1p``);
    3. z-scoring with training statistics: :math:`x \leftarrow (x - m) / d` (``set_scaling``);
    4. in training mode only, additive Gaussian noise :math:`x \leftarrow x + \sigma\varepsilon`,
       :math:`\varepsilon \sim N(0, I)` (``noise_std`` = :math:`\sigma`; see :meth:`add_noise`).

    Steps 1-2 equal ``features.log_normalize`` and step 3 ``features.SparseStandardScaler`` (population
    standard deviation; constant features get scale 1). ``x`` may be dense or a sparse CSR batch; the
    output is dense.
    """

    def __init__(self, n_features: int, target_sum: float | None = None, log1p: bool = False, noise_std: float = 0.0):
        super().__init__()
        self.n_features = int(n_features)
        self.target_sum = None if target_sum is None else float(target_sum)
        self.log1p = bool(log1p)
        # Buffers, not attributes: they travel with state_dict (checkpoints) and .to(device).
        self.register_buffer("mean", torch.zeros(self.n_features))
        self.register_buffer("inv_scale", torch.ones(self.n_features))
        self.register_buffer("noise_std", torch.tensor(float(noise_std)))
        self.register_buffer("scaled", torch.tensor(False))  # skip the z-score ops until set_scaling
        # Python mirrors of the two buffers that steer control flow: reading a CUDA buffer per batch
        # (``float(self.noise_std)``) would make the host wait for the device at every batch. Set from
        # Python values (the buffers may live on the meta device, e.g. when FLOPs are counted).
        self._noise_on = float(noise_std) > 0
        self._is_scaled = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        # a loaded checkpoint brings its own buffers: one read at load time, never per batch
        self._noise_on = float(self.noise_std) > 0
        self._is_scaled = bool(self.scaled)

    def set_scaling(self, mean, scale) -> None:
        """Set the z-scoring statistics (per feature, fitted on training rows)."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        scale = torch.as_tensor(np.asarray(scale, dtype=np.float32)).reshape(-1)
        if mean.numel() != self.n_features or scale.numel() != self.n_features:
            raise ValueError(
                f"set_scaling: expected {self.n_features} means and scales, got {mean.numel()}, {scale.numel()}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("set_scaling: means must be finite and scales finite and > 0")
        self.mean.copy_(mean)
        self.inv_scale.copy_(1.0 / scale)
        self.scaled.fill_(True)
        self._is_scaled = True

    def set_noise_std(self, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"noise standard deviation must be finite and >= 0, got {value}")
        self.noise_std.fill_(float(value))
        self._noise_on = float(value) > 0

    def unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-2 only (what the z-scoring statistics are fitted on); always a dense result."""
        if is_sparse_rows(x):
            # Both steps map 0 to 0: apply them to the stored values, then densify once.
            values = x.values()
            if self.target_sum is not None:
                rows = csr_row_index(x)
                totals = row_sums(x, rows)
                values = values * torch.where(totals > 0, self.target_sum / totals, torch.zeros_like(totals))[rows]
            if self.log1p:
                values = torch.log1p(values)
            return sparse_rows(x.crow_indices(), x.col_indices(), values, x.shape).to_dense()
        if self.target_sum is not None:
            totals = x.sum(dim=1, keepdim=True)
            # an empty cell stays 0 (target_sum / 0 would make it NaN)
            x = x * torch.where(totals > 0, self.target_sum / totals, torch.zeros_like(totals))
        if self.log1p:
            x = torch.log1p(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-3 (deterministic: no noise)."""
        x = self.unscaled(x)
        if self._is_scaled:
            x = (x - self.mean) * self.inv_scale
        return x

    def add_noise(self, x: torch.Tensor) -> torch.Tensor:
        """Step 4: add N(0, noise_std^2) noise, in training mode only (a no-op at prediction)."""
        if self.training and self._noise_on:
            x = x + torch.randn_like(x) * self.noise_std
        return x

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, target_sum={self.target_sum}, log1p={self.log1p}, "
            f"zscore={bool(self.scaled)}, noise_std={float(self.noise_std):.4g}"
        )


def mlp_blocks(n_inputs: int, hidden: Sequence[int], dropout: float) -> list[nn.Module]:
    """Per width ``h``: Linear(prev, h) -> BatchNorm1d(h) -> ReLU -> Dropout(dropout) (no dropout layer if 0)."""
    layers: list[nn.Module] = []
    prev = int(n_inputs)
    for width in hidden:
        layers += [nn.Linear(prev, int(width)), nn.BatchNorm1d(int(width)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = int(width)
    return layers
