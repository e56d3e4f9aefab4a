"""Building blocks shared by the torch networks: the per-batch input transform and MLP blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["InputTransform", "mlp_blocks"]


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
    standard deviation; constant features get scale 1).
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
        """Steps 1-2 only (what the z-scoring statistics are fitted on)."""
        if self.target_sum is not None:
            totals = x.sum(dim=1, keepdim=True)
            # an empty cell stays 0 (target_sum / tiny overflows to inf, and 0 * inf is NaN)
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
