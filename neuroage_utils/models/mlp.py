"""The age MLP of the paper's baselines: (Linear -> BatchNorm1d -> ReLU -> Dropout) blocks, Linear(1).

The paper's baseline (Table 1) and the head of its NMF model: Adam, lr 1e-3, dropout 0.4, batch 4096,
widths tuned over [500, 500], [1000, 1000] and [5000, 5000, 5000]. The loss is the mean squared
error on the z-scored age; inputs are z-scored with statistics of the training cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataValidationError, SparseStandardScaler
from ..train import DEFAULT_MAX_DENSE_BYTES, CellBatches, InputTransform, TorchAgeRegressor

__all__ = ["mlp_blocks", "AgeMLP", "MLPRegressor"]


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


class AgeMLP(nn.Module):
    r"""Age regressor :math:`\hat y = f(T(x))`: ``input_transform`` T, MLP blocks, then Linear(1).

    ``loss`` is :math:`\frac1n \sum_i (\hat y_i - y_i)^2` on the scaled age :math:`y`; ``kl_weight``
    is accepted for the training-loop interface and ignored.
    """

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (500, 500), dropout: float = 0.4):
        super().__init__()
        if n_inputs < 1:
            raise ValueError(f"AgeMLP needs at least one input feature, got {n_inputs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_inputs = int(n_inputs)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.input_transform = InputTransform(n_inputs)  # identity until set_scaling
        last = self.hidden[-1] if self.hidden else self.n_inputs
        self.layers = nn.Sequential(*mlp_blocks(n_inputs, self.hidden, dropout), nn.Linear(last, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.input_transform(x)).squeeze(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def loss(self, batch: dict, kl_weight: float = 0.0) -> dict:
        mse = F.mse_loss(self.forward(batch["x"]), batch["y"])
        return {"loss": mse, "mse": mse}


class MLPRegressor(TorchAgeRegressor):
    """Fit :class:`AgeMLP` on a cells x features matrix; predict ages in years.

    Parameters
    ----------
    hidden, dropout
        Block widths and dropout probability (paper: [500, 500] ... [5000, 5000, 5000], 0.4).
    epochs, lr, batch_size
        Adam learning rate and cells per batch (paper: 1e-3, 4096).
    scale_inputs
        ``True``: z-score every feature with mean and standard deviation of the training rows
        (``data.SparseStandardScaler``; applied per batch, so a sparse X is never densified whole).
        ``False``: X is used as given (already scaled, e.g. by the caller).
    early_stopping_patience
        Epochs without a better validation MAE before stopping (needs ``validation`` in ``fit``).
    device, seed, checkpoint_path, checkpoint_every, progress
        See :func:`neuroage_utils.train.fit`.

    Attributes after ``fit``: ``module_`` (the AgeMLP), ``history_`` (per-epoch losses),
    ``age_mean_``, ``age_std_``.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (500, 500),
        dropout: float = 0.4,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 4096,
        scale_inputs: bool = True,
        early_stopping_patience: int | None = None,
        device: str = "auto",
        seed: int = 0,
        checkpoint_path=None,
        checkpoint_every: int = 10,
        progress: bool = True,
        weight_decay: float = 0.0,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    ):
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.scale_inputs = bool(scale_inputs)
        self._set_training_options(epochs, lr, batch_size, early_stopping_patience, device, seed,
                                   checkpoint_path, checkpoint_every, progress, weight_decay, max_dense_bytes)

    def _build_module(self, X, batches: CellBatches) -> AgeMLP:
        if X.shape[1] < 1:
            raise DataValidationError("X has no features: pass a matrix with at least one column")
        module = AgeMLP(X.shape[1], self.hidden, self.dropout)
        if self.scale_inputs:
            scaler = SparseStandardScaler().fit(X)
            module.input_transform.set_scaling(scaler.mean_, scaler.scale_)
        return module

    def fit(self, X, ages, donors=None, validation=None):
        """Fit on ``X`` (cells x features, sparse or dense) and per-cell ``ages`` (years).

        See :meth:`neuroage_utils.train.TorchAgeRegressor.fit` for ``donors`` and ``validation``.
        """
        return super().fit(X, ages, donors=donors, validation=validation)

    def predict(self, X) -> np.ndarray:
        """Predicted age (years) of every cell of ``X``."""
        return super().predict(X)
