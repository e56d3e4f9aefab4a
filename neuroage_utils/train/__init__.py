"""Training: devices, cell batches, schedules, checkpoints and the one loop.

Used by the estimators in ``models`` (``models.estimator.TorchAgeRegressor``), never the reverse;
nothing here knows a model beyond the ``loss`` / ``predict`` interface of :func:`loop.fit`.
"""

from neuroage_utils.train.batches import DEFAULT_MAX_DENSE_BYTES, CellBatches, transformed_stats
from neuroage_utils.train.checkpoints import config_hash
from neuroage_utils.train.device import device_label, resolve_device
from neuroage_utils.train.loop import Validation, fit, predict_batches
from neuroage_utils.train.schedules import cosine_warm_restarts_lr, cyclical_kl_schedule, cyclical_kl_weight

__all__ = [
    "resolve_device", "device_label", "CellBatches", "Validation", "transformed_stats", "cyclical_kl_weight",
    "cyclical_kl_schedule", "cosine_warm_restarts_lr", "fit", "predict_batches", "config_hash",
    "DEFAULT_MAX_DENSE_BYTES",
]
