"""The sklearn-like base of the torch age regressors: checks, age scaling, validation set, years out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuroage_utils.data.checks import cell_ages, donor_ages, donor_ids
from neuroage_utils.errors import DataValidationError
from neuroage_utils.train import (
    DEFAULT_MAX_DENSE_BYTES,
    CellBatches,
    Validation,
    fit,
    predict_batches,
    resolve_device,
)
from neuroage_utils.train import distributed as ddp
from neuroage_utils.train.batches import as_float32_matrix, check_finite_matrix
from neuroage_utils.train.device import amp_active

__all__ = ["TorchAgeRegressor"]


def _check_ages(ages, n_cells: int, donors=None, what: str = "ages") -> np.ndarray:
    """One finite age per cell and, with ``donors``, one age per donor (:func:`checks.donor_ages`)."""
    ages = cell_ages(ages, n_cells, what)
    if donors is not None:
        donor_ages(ages, donor_ids(donors, n_cells, what), what)
    return ages


class TorchAgeRegressor:
    """sklearn-like base of the torch age regressors: scaling of ages, validation set, years out.

    Ages are z-scored with the mean and (population) standard deviation over training *cells*, as
    the paper's StandardScaler on the per-cell target; predictions are mapped back to years.
    Subclasses implement ``_build_module(X)`` (returning an ``nn.Module`` whose input transform is
    fitted on ``X``) and may override ``_check_X``, ``_extras`` and ``_kl_schedule``.
    """

    max_dense_bytes = DEFAULT_MAX_DENSE_BYTES
    #: bf16 autocast where the device has native bf16 (see :func:`neuroage_utils.train.loop.fit`); subclasses take it as ``amp``.
    amp = False
    #: Where a sparse matrix lives while training (:class:`~neuroage_utils.train.CellBatches`):
    #: None = on a GPU when it fits, True = on the device (also on a CPU, for tests), False = host.
    device_csr = None

    def _set_training_options(self, epochs, lr, batch_size, early_stopping_patience, device, seed,
                              checkpoint_path, checkpoint_every, progress, weight_decay, max_dense_bytes) -> None:
        """Store the options every subclass shares (see :func:`fit` for their meaning)."""
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.early_stopping_patience = early_stopping_patience
        self.device = device
        self.seed = int(seed)
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = int(checkpoint_every)
        self.progress = bool(progress)
        self.weight_decay = float(weight_decay)
        self.max_dense_bytes = int(max_dense_bytes)

    # -- hooks -------------------------------------------------------------------------------------
    def _build_module(self, X, batches: CellBatches) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_X(self, X, fitting: bool) -> None:
        """Raise DataValidationError when X cannot be used (subclasses add their own rules)."""
        if not fitting and X.shape[1] != self.n_features_:
            raise DataValidationError(
                f"X has {X.shape[1]} features but the model was fitted on {self.n_features_}: "
                "pass the same genes (features) in the same order"
            )

    def _extras(self, X) -> dict:
        return {}

    def _kl_schedule(self):
        return None

    #: Settings that do not change the trajectory of a run, left out of its checkpoint identity.
    _RUN_ONLY = ("epochs", "checkpoint_path", "checkpoint_every", "progress", "device", "device_csr",
                 "amp")  # amp enters the run's identity in fit() when it is active

    def _config(self) -> dict:
        def plain(value):  # a function's repr holds its address: identify it by name instead
            return getattr(value, "__qualname__", type(value).__name__) if callable(value) else value

        return {k: plain(v) for k, v in vars(self).items()
                if not k.endswith("_") and not k.startswith("_") and k not in self._RUN_ONLY}

    # -- API ---------------------------------------------------------------------------------------
    def _held_out(self, data, what: str) -> Validation:
        """A :class:`Validation` from ``(X, ages)`` or ``(X, ages, donors)``, ages scaled as the training
        ages; in a data-parallel run ``(X, ages, donors, shard)`` with this rank's rows of the set."""
        shard = None
        if isinstance(data, (tuple, list)) and len(data) == 4:
            *data, shard = data
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError(f"{what} must be (X, ages) or (X, ages, donors)")
        Xv = as_float32_matrix(data[0])
        check_finite_matrix(Xv, f"{what} X")
        self._check_X(Xv, fitting=False)
        dv = data[2] if len(data) == 3 else None
        av = _check_ages(data[1], Xv.shape[0], dv, f"{what} ages")
        yv = (av - self.age_mean_) / self.age_std_
        options = dict(extras=self._extras(Xv), batch_size=max(self.batch_size, 4096), shuffle=False,
                       device=self.device_, max_dense_bytes=self.max_dense_bytes, device_csr=self.device_csr)
        vb = CellBatches(Xv, yv, **options) if shard is None else shard.batches(Xv, yv, **options)
        return Validation(vb, dv, self.age_mean_, self.age_std_)

    def fit(self, X, ages, donors=None, validation=None, library_size=None, monitors=None, *, shard=None):
        """Fit on ``X`` (cells x features) and per-cell ``ages`` in years.

        ``donors`` (optional, one id per cell) only checks that every donor has one age.
        ``validation`` is ``(X_val, ages_val)`` or ``(X_val, ages_val, donors_val)``; its loss and
        MAE (donor-level when donors are given) are recorded per epoch in ``history_``.
        ``monitors`` maps names to such tuples (e.g. ``{"train": ..., "val": ...}``): their MAE alone
        is recorded per epoch as ``<name>_mae`` (learning curves; the run itself is unchanged).
        ``shard`` (a :class:`~neuroage_utils.train.distributed.Shard`, inside a run started by
        :func:`~neuroage_utils.models.data_parallel.fit_distributed`): ``X``, ``ages``, ``donors`` and
        ``library_size`` are this rank's rows; age and input scaling come from all ranks' rows and
        training is data-parallel (:mod:`neuroage_utils.train.distributed`).
        """
        X = as_float32_matrix(X)
        check_finite_matrix(X)
        if X.shape[0] < 2:
            raise DataValidationError(f"need at least 2 training cells, got {X.shape[0]}: pass more cells")
        ages = _check_ages(ages, X.shape[0], donors)
        self._check_X(X, fitting=True)
        self.n_features_ = int(X.shape[1])
        self.device_ = resolve_device(self.device)
        self.amp_ = amp_active(self.amp, self.device_)  # what ran: off without native bf16, whatever was asked
        if shard is None:
            self.age_mean_ = float(ages.mean())
            self.age_std_ = float(ages.std()) or 1.0  # one age only: avoid dividing by zero
        else:  # the moments of every rank's cells
            total, n = ddp.all_reduce_sum([ages.sum(), len(ages)])
            self.age_mean_ = float(total / n)
            self.age_std_ = float(np.sqrt(ddp.all_reduce_sum(((ages - self.age_mean_) ** 2).sum()) / n)) or 1.0
        y = (ages - self.age_mean_) / self.age_std_
        options = dict(library_size=library_size, extras=self._extras(X), batch_size=self.batch_size, shuffle=True,
                       device=self.device_, max_dense_bytes=self.max_dense_bytes, device_csr=self.device_csr)
        batches = CellBatches(X, y, **options) if shard is None else shard.batches(X, y, **options)
        torch.manual_seed(self.seed)  # parameter initialisation
        module = self._build_module(X, batches)
        val = None if validation is None else self._held_out(validation, "validation")
        watched = {name: self._held_out(data, f"monitor {name!r}") for name, data in (monitors or {}).items()}
        self.history_ = fit(
            module, batches, self.epochs, self.lr,
            lr_schedule=getattr(self, "lr_schedule", None), T_0=getattr(self, "T_0", 20),
            kl_schedule=self._kl_schedule(), validation=val,
            early_stopping_patience=self.early_stopping_patience,
            checkpoint_path=self.checkpoint_path, checkpoint_every=self.checkpoint_every,
            seed=self.seed, progress=self.progress, weight_decay=getattr(self, "weight_decay", 0.0),
            config=self._config(), desc=type(self).__name__, amp=self.amp, monitors=watched,
            optimizer=getattr(self, "optimizer", "adam"),
        )
        self.module_ = module
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(X, ages) first")

    def _predict_batches(self, X) -> CellBatches:
        self._check_fitted()
        X = as_float32_matrix(X)
        check_finite_matrix(X)
        self._check_X(X, fitting=False)
        return CellBatches(X, batch_size=max(self.batch_size, 4096), shuffle=False, device=self.device_,
                           max_dense_bytes=self.max_dense_bytes, device_csr=self.device_csr)

    def predict(self, X) -> np.ndarray:
        """Predicted age in years, one per cell (the model in eval mode: deterministic)."""
        batches = self._predict_batches(X)  # checks fitted and X first
        scaled = predict_batches(self.module_, batches)
        return scaled.reshape(-1) * self.age_std_ + self.age_mean_

    def predict_donors(self, X, donors) -> pd.Series:
        """Predicted age per donor: the mean of its cells' predictions (index ``donor_id``, sorted)."""
        pred = pd.Series(np.asarray(self.predict(X), float)).groupby(np.asarray(donors).astype(str)).mean()
        pred.index.name = "donor_id"
        return pred.rename("predicted")
