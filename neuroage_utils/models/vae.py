"""The sklearn-like VAE age regressor (the paper's standard, Poisson and denoising VAEs; an NB VAE).

The network (:class:`~neuroage_utils.nn.networks.AgeVAE`) and its loss are documented in
``models.networks``; the likelihoods in ``models.likelihoods``. This module adds fitting on a cells x
genes matrix, ages in years and the latent space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.data.checks import is_count_matrix
from neuroage_utils.errors import DataValidationError
from neuroage_utils.train import (
    DEFAULT_MAX_DENSE_BYTES,
    CellBatches,
    cyclical_kl_schedule,
    predict_batches,
    transformed_stats,
)
from neuroage_utils.train.distributed import sharded_transformed_stats
from neuroage_utils.models.estimator import TorchAgeRegressor
from neuroage_utils.nn.likelihoods import LIKELIHOODS
from neuroage_utils.nn.networks import AgeVAE, layer_table

__all__ = ["VAEAgeRegressor", "latent_pcs"]


class VAEAgeRegressor(TorchAgeRegressor):
    """Fit :class:`AgeVAE` on a raw count matrix; predict ages in years; expose the latent space.

    Parameters
    ----------
    likelihood, hidden, latent, age_hidden, dropout, age_dropout, age_weight, gaussian_variance
        See :class:`AgeVAE` (paper's Poisson VAE: ``"poisson"``, (300, 150), 100, (20, 20)).
    input_noise, noise_reference
        Denoising level and what it is relative to (paper: levels 0.5 and 5); see :class:`AgeVAE`.
    log_normalize, target_sum
        Gaussian model only: log-normalise counts per ``target_sum`` before z-scoring
        (``log_normalize=False``: X is already normalised; it is only z-scored).
    epochs, lr, batch_size
        Adam (paper: lr 1e-3, batch 4096, 1000 epochs for the final Poisson VAE).
    kl_schedule, kl_cycle
        ``"cyclical"`` (the paper's schedule; ``kl_cycle`` = dict of
        :func:`~neuroage_utils.train.cyclical_kl_weight` arguments), a constant weight, a callable
        ``epoch -> weight``, or ``None`` (weight 1).
    lr_schedule, T_0
        ``"cosine_warm_restarts"`` with period ``T_0`` epochs (paper: 20), or ``None``.
    optimizer
        ``"adam"`` (the paper, the default) or ``"authors"`` (the authors' code: SGD for the
        autoencoder, Adam for the age head); with ``likelihood="mse"`` this is the VAE as the authors
        coded it. See :func:`neuroage_utils.train.loop.fit`.
    early_stopping_patience, device, seed, checkpoint_path, checkpoint_every, progress
        See :func:`neuroage_utils.train.loop.fit`. With a ``checkpoint_path`` a re-run resumes, and a
        run can be extended by raising ``epochs``.
    amp
        bf16 autocast where the device has native bf16 (a CUDA GPU, a CPU with AMX or a measured-fast AVX512-BF16; likelihood and KL in float32); ignored elsewhere. See :func:`neuroage_utils.train.loop.fit`.

    The count likelihoods need raw UMI counts; ``fit`` raises ``DataValidationError`` otherwise.
    """

    def __init__(
        self,
        likelihood: str = "poisson",
        hidden: Sequence[int] = (300, 150),
        latent: int = 100,
        age_hidden: Sequence[int] = (20, 20),
        dropout: float = 0.0,
        age_dropout: float = 0.4,
        input_noise: float = 0.0,
        noise_reference: str = "max",
        age_weight: float = 1.0,
        gaussian_variance: str = "gene",
        log_normalize: bool = True,
        target_sum: float = 1e4,
        epochs: int = 100,
        lr: float = 1e-3,
        batch_size: int = 4096,
        kl_schedule="cyclical",
        kl_cycle: dict | None = None,
        lr_schedule: str | None = "cosine_warm_restarts",
        T_0: int = 20,
        early_stopping_patience: int | None = None,
        device: str = "auto",
        seed: int = 0,
        checkpoint_path=None,
        checkpoint_every: int = 10,
        progress: bool = True,
        weight_decay: float = 0.0,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        amp: bool = False,
        optimizer: str = "adam",
    ):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}: use one of {', '.join(LIKELIHOODS)}")
        self.likelihood = likelihood
        self.hidden = tuple(int(h) for h in hidden)
        self.latent_dim = int(latent)
        self.age_hidden = tuple(int(h) for h in age_hidden)
        self.dropout = float(dropout)
        self.age_dropout = float(age_dropout)
        self.input_noise = float(input_noise)
        self.noise_reference = noise_reference
        self.age_weight = float(age_weight)
        self.gaussian_variance = gaussian_variance
        self.log_normalize = bool(log_normalize)
        self.target_sum = float(target_sum)
        self.kl_schedule = kl_schedule
        self.kl_cycle = dict(kl_cycle) if kl_cycle else None
        self.lr_schedule = lr_schedule
        self.T_0 = int(T_0)
        if optimizer != "adam":  # set only when used: the checkpoint identity of Adam runs is unchanged
            self.optimizer = optimizer
        self._set_training_options(epochs, lr, batch_size, early_stopping_patience, device, seed,
                                   checkpoint_path, checkpoint_every, progress, weight_decay, max_dense_bytes)
        self.amp = bool(amp)  # bf16 autocast where the device has native bf16

    # -- hooks of TorchAgeRegressor ----------------------------------------------------------------
    def _make_module(self, n_genes: int) -> AgeVAE:
        return AgeVAE(
            n_genes, hidden=self.hidden, latent=self.latent_dim, age_hidden=self.age_hidden,
            likelihood=self.likelihood, dropout=self.dropout, input_noise=self.input_noise,
            noise_reference=self.noise_reference, age_dropout=self.age_dropout, age_weight=self.age_weight,
            gaussian_variance=self.gaussian_variance, log_normalize=self.log_normalize, target_sum=self.target_sum,
        )

    def blank_module(self, n_features: int) -> AgeVAE:
        """The untrained network for ``n_features`` genes (a saved state_dict is loaded into it)."""
        return self._make_module(int(n_features))

    def _check_X(self, X, fitting: bool) -> None:
        if not fitting:
            super()._check_X(X, fitting)
        values = X.data if sp.issparse(X) else X
        if self.likelihood in ("poisson", "nb"):
            if values.size and (values < 0).any():
                raise DataValidationError(
                    f"the {self.likelihood} VAE needs raw UMI counts but X has negative values (min {values.min():g}): "
                    "pass raw UMI counts, or use likelihood='gaussian'"
                )
            if not is_count_matrix(X):
                example = values[values != np.round(values)].ravel()[0]
                raise DataValidationError(
                    f"the {self.likelihood} VAE needs raw UMI counts but X has non-integer values (e.g. {example:g}): "
                    "pass raw UMI counts, or use likelihood='gaussian'"
                )
        elif self.likelihood == "mse" and values.size and (values < 0).any():
            raise DataValidationError(
                f"the coded MSE VAE reads log(1 + x) but X has negative values (min {values.min():g}): "
                "pass raw counts, or use likelihood='gaussian'"
            )
        elif self.log_normalize and values.size and (values < 0).any():
            raise DataValidationError(
                f"log-normalisation needs non-negative values but X has negatives (min {values.min():g}): "
                "pass raw counts, or set log_normalize=False for already-normalised input"
            )

    def _extras(self, X) -> dict:
        """Per-cell :math:`\\sum_g \\log x_g!` of the count models, from the non-zeros only."""
        if self.likelihood not in ("poisson", "nb"):
            return {}
        from scipy.special import gammaln

        if sp.issparse(X):
            per_entry = sp.csr_matrix((gammaln(X.data.astype(np.float64) + 1.0), X.indices, X.indptr), shape=X.shape)
            return {"log_factorial": np.asarray(per_entry.sum(axis=1)).ravel()}
        rows = range(0, X.shape[0], 4096)  # blocks of rows: no full-size float64 temporary
        return {"log_factorial": np.concatenate(
            [gammaln(np.asarray(X[i : i + 4096], dtype=np.float64) + 1.0).sum(axis=1) for i in rows])}

    def _build_module(self, X, batches: CellBatches) -> AgeVAE:
        module = self._make_module(X.shape[1]).to(batches.device)
        needs_max = self.input_noise > 0 and self.noise_reference == "max"
        if self.likelihood == "gaussian" or needs_max:
            stats_of = sharded_transformed_stats if getattr(batches, "sharded", False) else transformed_stats
            stats = stats_of(batches, module.input_transform.unscaled)
            if self.likelihood == "gaussian":
                scale = np.where(stats["std"] > 0, stats["std"], 1.0)  # constant genes map to 0, not NaN
                module.input_transform.set_scaling(stats["mean"], scale)
                encoder_max = float(np.max((stats["max"] - stats["mean"]) / scale))
            else:
                encoder_max = float(np.max(stats["max"]))
            self.encoder_input_max_ = encoder_max
            module.set_noise_reference(encoder_max)
        return module

    def _kl_schedule(self):
        if isinstance(self.kl_schedule, str):
            if self.kl_schedule != "cyclical":
                raise ValueError(
                    f"unknown kl_schedule {self.kl_schedule!r}: use 'cyclical', a number, a callable or None"
                )
            return cyclical_kl_schedule(**(self.kl_cycle or {}))
        return self.kl_schedule

    # -- API ---------------------------------------------------------------------------------------
    def fit(self, X, ages, donors=None, validation=None, library_size=None, monitors=None, *, shard=None):
        """Fit on ``X`` (cells x genes; raw counts for the count likelihoods) and per-cell ages (years).

        ``library_size`` (count likelihoods): per-cell offset; default the row sums of ``X`` (the
        genes modelled), as scVI. See :meth:`neuroage_utils.models.estimator.TorchAgeRegressor.fit` for
        ``donors``, ``validation`` and ``monitors``.
        """
        if library_size is not None and self.likelihood not in ("poisson", "nb"):
            raise ValueError("library_size is used by the count likelihoods only (likelihood='poisson' or 'nb')")
        return super().fit(X, ages, donors=donors, validation=validation, library_size=library_size,
                           monitors=monitors, shard=shard)

    def predict(self, X) -> np.ndarray:
        """Predicted age (years) per cell, from the deterministic latent layer."""
        return super().predict(X)

    def latent(self, X) -> np.ndarray:
        """Posterior means (cells x latent) for the latent-space figure."""
        batches = self._predict_batches(X)  # checks fitted and X first
        return predict_batches(self.module_, batches, fn=lambda m, x: m.latent(x))

    def architecture_table(self, n_genes: int | None = None) -> pd.DataFrame:
        """:func:`layer_table` of the fitted model, or of a fresh one with ``n_genes`` inputs."""
        if hasattr(self, "module_"):
            return layer_table(self.module_)
        if n_genes is None:
            raise ValueError("architecture_table: fit the model first or pass n_genes")
        return layer_table(self._make_module(int(n_genes)))


def latent_pcs(Z, n_components: int = 2, max_rows: int = 20_000) -> np.ndarray:
    """Latent means ``Z`` (cells x latent) projected on their first principal axes.

    The axes come from the first ``max_rows`` rows (an SVD of the centred means), every row is projected.
    """
    Zc = Z - Z.mean(0)
    _, _, vt = np.linalg.svd(Zc[: min(len(Zc), max_rows)], full_matrices=False)
    return Zc @ vt[:n_components].T

