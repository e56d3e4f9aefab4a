"""The one torch training loop.

A model is an ``nn.Module`` that exposes

- ``loss(batch, kl_weight) -> dict[str, Tensor]`` with the scalar to minimise under ``"loss"`` and
  any parts worth logging (reconstruction, KL, age MSE, ...), each a mean per cell;
- ``predict(x) -> Tensor`` of scaled ages, one per row of ``x``;

and :func:`fit` trains any such model on a :class:`~neuroage_utils.train.batches.CellBatches` source
(scvi-tools style: the loop knows no model).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuroage_utils.errors import DataValidationError
from neuroage_utils.metrics import donor_metrics, donor_table
from neuroage_utils.train.batches import CellBatches
from neuroage_utils.train.checkpoints import (
    CHECKPOINT_FORMAT,
    config_hash,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from neuroage_utils.train import distributed as ddp
from neuroage_utils.train.device import amp_active, autocast, heap_reuse, make_deterministic
from neuroage_utils.train.schedules import kl_schedule_fn

__all__ = ["Validation", "fit", "predict_batches", "OPTIMIZERS"]

#: ``"adam"``: Adam for every parameter (the paper). ``"authors"``: the authors' published code -
#: SGD for the autoencoder, Adam for the age head (the module's ``optimiser_groups()``).
OPTIMIZERS = ("adam", "authors")

#: Epochs over which a KL schedule is probed when hashing a run's configuration.
_KL_PROBE_EPOCHS = 1000


@dataclass
class Validation:
    """A held-out set evaluated after every epoch.

    ``batches`` must carry targets (scaled ages). Ages in years are ``y * target_std + target_mean``.
    With ``donors`` (one id per cell) the MAE is the paper's donor-level MAE (cell predictions
    averaged per donor), otherwise the cell-level MAE.
    """

    batches: CellBatches
    donors: np.ndarray | None = None
    target_mean: float = 0.0
    target_std: float = 1.0

    def __post_init__(self):
        if not self.batches.has_targets:
            raise ValueError("Validation batches need targets")
        if self.donors is not None:
            self.donors = np.asarray(self.donors).astype(str)
            if len(self.donors) != self.batches.n_cells:
                raise DataValidationError(
                    f"validation donors has {len(self.donors)} values for {self.batches.n_cells} cells: "
                    "pass one per cell"
                )
        # A rank's share (train.distributed): scores are reduced over ranks, so every donor's cells
        # count wherever they live; the donor list is gathered once, here.
        self.sharded = bool(getattr(self.batches, "sharded", False))
        if self.sharded and self.donors is not None:
            self._donor_names = sorted(set().union(*ddp.all_gather_objects(sorted(set(self.donors)))))

    def fingerprint(self) -> dict:
        n_donors = None if self.donors is None else int(len(set(self.donors)))
        return {"data": self.batches.fingerprint(), "donors": n_donors,
                "target_mean": float(self.target_mean), "target_std": float(self.target_std)}

    def _mae(self, pred: np.ndarray, true: np.ndarray) -> float:
        pred = pred * self.target_std + self.target_mean
        true = true * self.target_std + self.target_mean
        if self.sharded:
            if self.donors is not None:
                return ddp.donor_mae(pred, self.donors, true, self._donor_names)
            total = ddp.all_reduce_sum([np.abs(pred - true).sum(), len(pred)])
            return float(total[0] / total[1])
        if self.donors is not None:  # the paper's donor-level MAE, as every chapter scores it
            return donor_metrics(donor_table(pred, self.donors, true))["mae"]
        return float(np.mean(np.abs(pred - true)))

    @torch.no_grad()
    def mae(self, module: nn.Module) -> float:
        """The MAE (years) of ``module.predict`` alone: no loss terms, so a monitor costs one
        encoder pass (the decoder and likelihood are skipped)."""
        was_training = module.training
        module.eval()
        preds, ys = [], []
        for batch in self.batches.with_options(shuffle=False).iterate():
            preds.append(module.predict(batch["x"]).reshape(-1).double().cpu())
            ys.append(batch["y"].double().cpu())
        module.train(was_training)
        return self._mae(torch.cat(preds).numpy(), torch.cat(ys).numpy())

    @torch.no_grad()
    def evaluate(self, module: nn.Module, kl_weight: float) -> dict:
        """``val_<part>`` for each loss part (mean per cell) and ``val_mae`` in years."""
        was_training = module.training
        module.eval()
        # Sums and predictions stay on the device (float64 sums: the same numbers as Python floats)
        # and come back in one copy: no host synchronisation per batch.
        sums, n_total, preds, ys = {}, 0, [], []
        for batch in self.batches.with_options(shuffle=False).iterate():
            parts = module.loss(batch, kl_weight)
            n = batch["x"].shape[0]
            for key, value in parts.items():
                value = value.detach().double() * n
                sums[key] = sums[key] + value if key in sums else value
            n_total += n
            preds.append(module.predict(batch["x"]).reshape(-1).double())
            ys.append(batch["y"].double())
        module.train(was_training)
        if self.sharded:
            keys = sorted(sums)
            total = ddp.all_reduce_sum([float(sums[k]) for k in keys] + [n_total])
            sums, n_total = dict(zip(keys, total[:-1])), float(total[-1])
        out = {f"val_{k}": float(v) / n_total for k, v in sums.items()}
        out["val_mae"] = self._mae(torch.cat(preds).cpu().numpy(), torch.cat(ys).cpu().numpy())
        return out


def _progress_bar(total: int, initial: int, enabled: bool, desc: str):
    # Plain (text) tqdm, not tqdm.auto: executed notebooks are rendered statically, where a widget bar
    # would show as a placeholder, and without ipywidgets tqdm.auto prints a warning into the book.
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="epoch", mininterval=1.0,
                dynamic_ncols=True)


def fit(
    module: nn.Module,
    batches: CellBatches,
    epochs: int,
    lr: float = 1e-3,
    *,
    lr_schedule: str | None = None,
    T_0: int = 20,
    kl_schedule=None,
    validation: Validation | None = None,
    early_stopping_patience: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 0.0,
    config: dict | None = None,
    desc: str | None = None,
    amp: bool = False,
    monitors: dict[str, Validation] | None = None,
    optimizer: str = "adam",
    monitor_every: int = 1,
) -> pd.DataFrame:
    """Train ``module`` with Adam on ``batches`` for ``epochs`` epochs; return the per-epoch history.

    Parameters
    ----------
    module
        Exposes ``loss(batch, kl_weight) -> dict`` (``"loss"`` is minimised; every entry is logged)
        and ``predict(x)``. Moved to ``batches.device``.
    epochs, lr, weight_decay
        Adam (the paper's optimiser), learning rate ``lr`` (paper 1e-3).
    lr_schedule
        ``None`` (constant) or ``"cosine_warm_restarts"``: ``CosineAnnealingWarmRestarts(T_0)`` with
        ``T_0`` in epochs (paper 20), stepped before every batch at the fractional epoch
        ``epoch + i / n_batches`` (SGDR as published; smoother than the authors' once-per-epoch
        step). The ``lr`` column of the history is the rate at the first batch of each epoch, which
        equals :func:`cosine_warm_restarts_lr` at the integer epoch.
    kl_schedule
        Callable ``epoch -> weight`` (0-based epoch, e.g. :func:`cyclical_kl_schedule`), a constant,
        or ``None`` for weight 1 (the plain ELBO). Passed to ``module.loss``; models without a KL
        term ignore it.
    validation
        Evaluated after every epoch: ``val_<part>`` losses and ``val_mae`` (years; donor-level when
        the validation set has donors).
    early_stopping_patience
        Stop after this many epochs without improving ``val_mae`` (requires ``validation``) and
        restore the best epoch's parameters.
    checkpoint_path, checkpoint_every
        Every ``checkpoint_every`` epochs and at the end, save model, optimiser, scheduler, RNG
        states, early-stopping state and history atomically. A later call with the same path and the
        same configuration (see :func:`config_hash`; ``epochs`` is not part of it) resumes after the
        last saved epoch and reaches the same final state as an uninterrupted run; a checkpoint of a
        different configuration is ignored with a warning and overwritten.
    seed
        ``torch.manual_seed(seed)`` (dropout, sampling, noise) and a separate ``torch.Generator`` for
        the batch order.
    config
        Extra JSON-able settings that identify the run (e.g. a regressor's hyper-parameters).
    amp
        Mixed precision where the device multiplies bf16 in hardware (a CUDA GPU, or a CPU with AMX or
        with AVX512-BF16 where a measured bf16 product beats float32;
        :func:`~neuroage_utils.train.device.native_bf16`): the forward pass and loss under bf16
        autocast (the models compute their likelihoods and KL in float32); parameters, gradients and
        Adam's state stay float32. Off, or on a device without native bf16, nothing changes.
        Validation and prediction run in float32.

    On CUDA the run is made deterministic where torch allows (:func:`make_deterministic`). Adam uses
    its fused kernel on CPU and CUDA (one pass over the parameters per step).

    monitors
        Named donor sets (e.g. ``{"train": ..., "val": ...}``) whose MAE (years, donor-level when
        they carry donors) is recorded after every epoch as ``<name>_mae``: learning curves. They
        only read the model (eval mode, no randomness drawn), so a run's trajectory is the same with
        or without them; they take part in the checkpoint identity only when given. With
        ``monitor_every`` > 1 they are read every that many epochs and at the last (NaN between).
    optimizer
        ``"adam"`` (the paper: Adam for every parameter) or ``"authors"`` (the authors' code: SGD for
        the autoencoder, Adam for the age head; the module's ``optimiser_groups()`` returns
        ``{"autoencoder": [...], "age_head": [...]}``). The learning-rate schedule drives the first
        optimiser (Adam, or the autoencoder's SGD: the authors' head keeps a constant rate).

    Returns
    -------
    DataFrame, one row per epoch: ``epoch`` (0-based), the mean per cell of each loss part,
    ``kl_weight``, ``lr``, the validation columns, ``seconds``.
    """
    if int(epochs) < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    epochs = int(epochs)
    if lr_schedule not in (None, "cosine_warm_restarts"):
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}: use None or 'cosine_warm_restarts'")
    if early_stopping_patience is not None and validation is None:
        raise ValueError("early_stopping_patience needs a validation set")
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if not batches.has_targets:
        raise ValueError("fit: the training batches need targets")
    monitors = dict(monitors or {})
    for name in monitors:
        if validation is not None and name == "val":
            raise ValueError("a monitor named 'val' would overwrite the validation set's val_mae: rename it")
    kl_fn = kl_schedule_fn(kl_schedule)
    device = batches.device
    make_deterministic(device)
    module.to(device)
    # A rank's share of a data-parallel run (train.distributed): DDP, BatchNorm over the global
    # batch, epoch sums reduced over ranks, checkpoints written by rank 0.
    sharded = bool(getattr(batches, "sharded", False))
    if sharded and not ddp.is_distributed():
        raise RuntimeError("sharded batches need a torch.distributed process group: start the run with launch()")
    lead = not sharded or ddp.rank() == 0

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    # Adam's fused kernel: one pass over all parameters per step instead of several per tensor (on a
    # CPU ~10% of a small VAE's epoch; on CUDA one launch instead of dozens).
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    optimizers = _optimizers(module, optimizer, lr, weight_decay, fused)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizers[0], T_0=int(T_0))
        if lr_schedule == "cosine_warm_restarts" else None
    )

    history: list[dict] = []
    early = {"best": math.inf, "best_epoch": -1, "bad_epochs": 0, "stopped": False}
    best_state = None
    start = 0
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    settings = {
        "lr": lr, "lr_schedule": lr_schedule, "T_0": int(T_0) if scheduler else None, "weight_decay": weight_decay,
        "kl": [round(float(kl_fn(e)), 12) for e in range(_KL_PROBE_EPOCHS)], "seed": seed,
        "validation": None if validation is None else validation.fingerprint(),
        "patience": early_stopping_patience, "config": config,
    }
    if amp_active(amp, device):  # part of a run's identity; absent when off, so older checkpoints resume
        settings["amp"] = "bf16"
    # Only when used, so that the checkpoints of runs without them keep their identity.
    if monitors:
        settings["monitors"] = {name: m.fingerprint() for name, m in sorted(monitors.items())}
    if optimizer != "adam":
        settings["optimizer"] = optimizer
    key = config_hash(module, batches, settings) if path is not None else ""
    if path is not None:
        state = load_checkpoint(path, key, device)
        if state is not None and int(state["epochs_done"]) > epochs:
            # A longer run of the same model (e.g. the 1000-epoch row of Table 3 before the 200-epoch
            # row is re-run): resuming would return the longer run, so start over instead.
            warnings.warn(
                f"checkpoint {path} holds {int(state['epochs_done'])} epochs, more than the {epochs} asked for: "
                "training from scratch", stacklevel=2)
            state = None
        if state is not None:
            module.load_state_dict(state["module"])
            saved = state["optimizer"] if len(optimizers) > 1 else [state["optimizer"]]
            for opt, opt_state in zip(optimizers, saved):
                opt.load_state_dict(opt_state)
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], generator)
            history = list(state["history"])
            early = dict(state["early"])
            best_state = state.get("best_state")
            start = int(state["epochs_done"])
            if start > epochs:
                warnings.warn(
                    f"checkpoint {path} holds {start} epochs, more than the {epochs} requested: returning the "
                    f"{start}-epoch model (use another checkpoint_path to train a shorter run)",
                    stacklevel=2,
                )

    def save(epochs_done: int) -> None:
        save_checkpoint(
            {
                "format": CHECKPOINT_FORMAT, "config_hash": key, "epochs_done": epochs_done,
                "module": module.state_dict(),
                "optimizer": (optimizers[0].state_dict() if len(optimizers) == 1
                              else [opt.state_dict() for opt in optimizers]),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(generator), "history": history, "early": early, "best_state": best_state,
            },
            path,
        )

    n_batches = max(len(batches), 1)
    bar = _progress_bar(epochs, min(start, epochs), progress and lead, desc or type(module).__name__)
    loss_of = module.loss
    if sharded:
        loss_of = ddp.wrap_ddp(ddp.sync_batchnorm(module))
        world = ddp.world_size()
    # per-batch cells x genes tensors reuse heap memory instead of fresh page-faulted mmaps (device.heap_reuse)
    memory = contextlib.ExitStack()
    memory.enter_context(heap_reuse(device))
    try:
        for epoch in range(start, epochs):
            if early["stopped"]:
                break
            tic = time.perf_counter()
            kl_weight = float(kl_fn(epoch))
            if sharded:  # per rank and epoch: a resumed run draws what an uninterrupted one would
                torch.manual_seed(ddp.rank_seed(seed, epoch))
            module.train()
            sums: dict[str, torch.Tensor] = {}
            n_seen = 0
            lr_first = None
            for i, batch in enumerate(batches.iterate(generator)):
                if scheduler is not None:
                    scheduler.step(epoch + i / n_batches)
                if lr_first is None:
                    lr_first = optimizers[0].param_groups[0]["lr"]
                n_global = batch.pop("n_global", None)
                with autocast(amp, device):
                    parts = loss_of(batch, kl_weight)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss = parts["loss"]
                if n_global is not None:  # DDP averages over ranks: this makes it the global batch's mean
                    loss = loss * (batch["x"].shape[0] * world / n_global)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                n = batch["x"].shape[0]
                for name, value in parts.items():
                    value = value.detach() * n
                    sums[name] = sums[name] + value if name in sums else value
                n_seen += n
            if sharded:
                keys = sorted(sums)
                reduced = ddp.all_reduce_sum([float(sums[k]) for k in keys] + [n_seen])
                sums, n_seen = dict(zip(keys, reduced[:-1])), float(reduced[-1])
            row = {"epoch": epoch}
            row.update({name: float(total) / n_seen for name, total in sums.items()})
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(
                    f"training loss became {row['loss']} at epoch {epoch}: lower the learning rate (lr={lr}) "
                    "or check the input scaling"
                )
            row["kl_weight"] = kl_weight
            row["lr"] = float(lr_first)
            if validation is not None:
                row.update(validation.evaluate(module, kl_weight))
                if early_stopping_patience is not None:
                    if row["val_mae"] < early["best"]:
                        early.update(best=row["val_mae"], best_epoch=epoch, bad_epochs=0)
                        best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                    else:
                        early["bad_epochs"] += 1
                        if early["bad_epochs"] >= int(early_stopping_patience):
                            early["stopped"] = True
            if monitors and ((epoch + 1) % max(1, int(monitor_every)) == 0 or epoch + 1 == epochs):
                tic_monitors = time.perf_counter()
                for name, monitor in monitors.items():
                    row[f"{name}_mae"] = monitor.mae(module)
                row["monitor_seconds"] = time.perf_counter() - tic_monitors
            row["seconds"] = time.perf_counter() - tic
            history.append(row)
            done = epoch + 1
            if lead and path is not None and (done % int(checkpoint_every) == 0 or done == epochs or early["stopped"]):
                save(done)
            bar.update(1)
            bar.set_postfix(_postfix(row), refresh=False)
    finally:
        bar.close()
        memory.close()
        if sharded:
            ddp.plain_batchnorm(module)
    if early_stopping_patience is not None and best_state is not None:
        module.load_state_dict(best_state)  # the best validation epoch, not the last
    module.eval()
    frame = pd.DataFrame(history)
    frame.attrs["best_epoch"] = early["best_epoch"] if early_stopping_patience is not None else None
    frame.attrs["stopped_early"] = bool(early["stopped"])
    return frame


def _optimizers(module: nn.Module, name: str, lr: float, weight_decay: float, adam_options: dict | None = None) -> list:
    """The optimiser(s) of a run: ``[Adam]``, or the authors' ``[SGD (autoencoder), Adam (age head)]``;
    ``adam_options`` e.g. ``{"fused": True}``."""
    adam_options = adam_options or {}
    if name == "adam":
        return [torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay, **adam_options)]
    if name == "authors":
        groups = getattr(module, "optimiser_groups", None)
        if groups is None:
            raise ValueError(f"optimizer='authors' needs a module with optimiser_groups(); {type(module).__name__} has none")
        groups = groups()
        return [torch.optim.SGD(groups["autoencoder"], lr=lr, weight_decay=weight_decay),
                torch.optim.Adam(groups["age_head"], lr=lr, weight_decay=weight_decay, **adam_options)]
    raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")


def _postfix(row: dict) -> dict:
    shown = {k: v for k, v in row.items() if k not in ("epoch", "seconds")}
    return {k: f"{v:.4g}" for k, v in shown.items()}


@torch.no_grad()
def predict_batches(module: nn.Module, batches: CellBatches, fn: Callable | None = None) -> np.ndarray:
    """``fn(module, x)`` (default ``module.predict(x)``) over all rows in order, in eval mode."""
    was_training = module.training
    module.eval()
    outputs = []
    for batch in batches.with_options(shuffle=False).iterate():
        out = module.predict(batch["x"]) if fn is None else fn(module, batch["x"])
        outputs.append(out.detach().double())
    module.train(was_training)
    return torch.cat(outputs).cpu().numpy()  # concatenated on the device, copied once
