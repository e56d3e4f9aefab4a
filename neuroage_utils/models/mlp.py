"""The sklearn-like age MLP of the paper's baselines: (Linear -> BatchNorm1d -> ReLU -> Dropout) blocks, Linear(1).

The paper's baseline (Table 1) and the head of its NMF model: Adam, lr 1e-3, dropout 0.4, batch 4096,
widths tuned over [500, 500], [1000, 1000] and [5000, 5000, 5000]. The loss is the mean squared
error on the z-scored age; inputs are z-scored with statistics of the training cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import SparseStandardScaler
from neuroage_utils.train import DEFAULT_MAX_DENSE_BYTES, CellBatches
from neuroage_utils.train.distributed import column_sums
from neuroage_utils.models.estimator import TorchAgeRegressor
from neuroage_utils.nn.networks import AgeMLP

__all__ = ["MLPRegressor"]


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
        (``features.SparseStandardScaler``; applied per batch, so a sparse X is never densified whole).
        ``False``: X is used as given (already scaled, e.g. by the caller).
    early_stopping_patience
        Epochs without a better validation MAE before stopping (needs ``validation`` in ``fit``).
    device, seed, checkpoint_path, checkpoint_every, progress
        See :func:`neuroage_utils.train.loop.fit`.
    amp
        bf16 autocast where the device has native bf16 (a CUDA GPU, a CPU with AMX or a measured-fast AVX512-BF16); ignored elsewhere. See :func:`neuroage_utils.train.loop.fit`.

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
        amp: bool = False,
    ):
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.scale_inputs = bool(scale_inputs)
        self._set_training_options(epochs, lr, batch_size, early_stopping_patience, device, seed,
                                   checkpoint_path, checkpoint_every, progress, weight_decay, max_dense_bytes)
        self.amp = bool(amp)  # bf16 autocast where the device has native bf16

    def _build_module(self, X, batches: CellBatches) -> AgeMLP:
        if X.shape[1] < 1:
            raise DataValidationError("X has no features: pass a matrix with at least one column")
        module = self.blank_module(X.shape[1])
        if self.scale_inputs:
            if getattr(batches, "sharded", False):  # a data-parallel run: moments of every rank's rows
                total, total_sq, n = column_sums(X)
                mean = total / n
                scale = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))  # as features.column_moments
                scale[scale == 0] = 1.0
                module.input_transform.set_scaling(mean.astype(np.float32), scale.astype(np.float32))
            else:
                scaler = SparseStandardScaler().fit(X)
                module.input_transform.set_scaling(scaler.mean_, scaler.scale_)
        return module

    def blank_module(self, n_features: int) -> AgeMLP:
        """The untrained network for ``n_features`` inputs (a saved state_dict is loaded into it)."""
        return AgeMLP(int(n_features), self.hidden, self.dropout)

    def fit(self, X, ages, donors=None, validation=None, monitors=None, *, shard=None):
        """Fit on ``X`` (cells x features, sparse or dense) and per-cell ``ages`` (years).

        See :meth:`neuroage_utils.models.estimator.TorchAgeRegressor.fit` for ``donors`` and ``validation``.
        """
        return super().fit(X, ages, donors=donors, validation=validation, monitors=monitors, shard=shard)

    def predict(self, X) -> np.ndarray:
        """Predicted age (years) of every cell of ``X``."""
        return super().predict(X)
