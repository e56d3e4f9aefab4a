"""The one torch training loop: devices, cell batches, input transforms, schedules, checkpoints.

Kept apart from the models (scvi-tools style): a model is an ``nn.Module`` that exposes

- ``loss(batch, kl_weight) -> dict[str, Tensor]`` with the scalar to minimise under ``"loss"`` and
  any parts worth logging (reconstruction, KL, age MSE, ...), each a mean per cell;
- ``predict(x) -> Tensor`` of scaled ages, one per row of ``x``;

and :func:`fit` trains any such model on a :class:`CellBatches` source. :class:`TorchAgeRegressor`
is the shared sklearn-like plumbing (age scaling, validation set, prediction in years) of the MLP and
VAE regressors.

Performance notes (2-core CPU): the enemy is per-batch Python and copying. When the dense float32
matrix fits under ``max_dense_bytes`` it is densified once onto the device and a batch is one
``index_select``; otherwise each batch is densified from CSR rows (scipy, ~0.1 s per 4096 x 17,658
batch). Transforms (library-size normalisation, log1p, z-scoring, noise) run per batch as torch ops,
so nothing ever densifies the full paper-scale matrix on the host.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from .data import DataValidationError

__all__ = [
    "resolve_device",
    "InputTransform",
    "CellBatches",
    "Validation",
    "transformed_stats",
    "cyclical_kl_weight",
    "cyclical_kl_schedule",
    "cosine_warm_restarts_lr",
    "fit",
    "predict_batches",
    "TorchAgeRegressor",
    "DEFAULT_MAX_DENSE_BYTES",
]

#: Densify the whole matrix once when its float32 copy is at most this many bytes (2 GiB).
DEFAULT_MAX_DENSE_BYTES = 2 * 1024**3
#: Epochs over which a KL schedule is probed when hashing a run's configuration.
_KL_PROBE_EPOCHS = 1000
_CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` / ``"cpu"`` / ``"cuda"`` (or ``"cuda:N"``) to a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else the CPU. Asking for CUDA on a machine without it is a
    user error (:class:`~neuroage_utils.data.DataValidationError`), not a silent fallback: a run
    planned for a GPU would otherwise take days on a CPU without anyone noticing.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DataValidationError(
                f"device '{device}' was requested but this torch build sees no CUDA GPU: "
                "use device='cpu' or device='auto' (--device auto)"
            )
        resolved = torch.device(name)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DataValidationError(
                f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA device(s)): "
                "use device='cuda' or 'auto'"
            )
        return resolved
    raise DataValidationError(f"unknown device '{device}': use 'auto', 'cpu' or 'cuda'")


# --------------------------------------------------------------------------------------------------
# Input transform (torch ops, applied per batch)
# --------------------------------------------------------------------------------------------------


class InputTransform(nn.Module):
    r"""Per-batch input transform, stored with the model so prediction sees the same maths.

    For a row :math:`x` (one cell) the steps, each optional, are

    1. library-size normalisation: :math:`x \leftarrow x \cdot s / \sum_g x_g` (``target_sum`` = s;
       an empty cell stays 0);
    2. :math:`x \leftarrow \log(1 + x)` (``log1p``);
    3. z-scoring with training statistics: :math:`x \leftarrow (x - m) / d` (``set_scaling``);
    4. in training mode only, additive Gaussian noise :math:`x \leftarrow x + \sigma\varepsilon`,
       :math:`\varepsilon \sim N(0, I)` (``noise_std`` = :math:`\sigma`; see :meth:`add_noise`).

    Steps 1-2 equal ``data.log_normalize`` and step 3 ``data.SparseStandardScaler`` (population
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

    def set_noise_std(self, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"noise standard deviation must be finite and >= 0, got {value}")
        self.noise_std.fill_(float(value))

    def unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-2 only (what the z-scoring statistics are fitted on)."""
        if self.target_sum is not None:
            totals = x.sum(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            x = x * (self.target_sum / totals)
        if self.log1p:
            x = torch.log1p(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-3 (deterministic: no noise)."""
        x = self.unscaled(x)
        if bool(self.scaled):
            x = (x - self.mean) * self.inv_scale
        return x

    def add_noise(self, x: torch.Tensor) -> torch.Tensor:
        """Step 4: add N(0, noise_std^2) noise, in training mode only (a no-op at prediction)."""
        if self.training and float(self.noise_std) > 0:
            x = x + torch.randn_like(x) * self.noise_std
        return x

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, target_sum={self.target_sum}, log1p={self.log1p}, "
            f"zscore={bool(self.scaled)}, noise_std={float(self.noise_std):.4g}"
        )


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def _as_float32_matrix(X):
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


def _check_finite_matrix(X, what: str = "X") -> None:
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
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        X = _as_float32_matrix(X)
        _check_finite_matrix(X)
        self.n_cells, self.n_features = int(X.shape[0]), int(X.shape[1])
        if self.n_cells == 0:
            raise DataValidationError("no cells to batch: pass a matrix with at least one row")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.dense = self.n_cells * self.n_features * 4 <= int(max_dense_bytes)
        self._fingerprint = self._matrix_fingerprint(X)
        if self.dense:
            array = X.toarray() if sp.issparse(X) else X
            self._X = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)
        else:
            self._X = X  # host CSR (or dense ndarray); batches densified on demand
        self._cell = {}
        for name, values in (("y", targets), ("library", library_size), *((extras or {}).items())):
            if values is None:
                continue
            values = np.asarray(values, dtype=np.float32)
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
        """Yield batch dicts; with ``shuffle`` the order comes from ``generator`` (CPU generator)."""
        n, size = self.n_cells, self.batch_size
        if not self.shuffle:
            for start in range(0, n, size):
                yield self._slice(start, min(start + size, n))
            return
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, size):
            idx = order[start : start + size]
            if len(idx) < 2 and n > 1:
                continue
            yield self._gather(torch.sort(idx).values)

    def _slice(self, start: int, stop: int) -> dict:
        if self.dense:
            x = self._X[start:stop]
        else:
            block = self._X[start:stop]
            x = torch.from_numpy(block.toarray() if sp.issparse(block) else np.array(block)).to(self.device)
        batch = {"x": x}
        batch.update({k: v[start:stop] for k, v in self._cell.items()})
        return batch

    def _gather(self, idx: torch.Tensor) -> dict:
        if self.dense:
            dev_idx = idx.to(self.device)
            x = self._X.index_select(0, dev_idx)
        else:
            dev_idx = idx.to(self.device)
            rows = self._X[idx.numpy()]
            x = torch.from_numpy(rows.toarray() if sp.issparse(rows) else rows).to(self.device)
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
    source = batches.with_options(shuffle=False)
    count, mean, m2, lo, hi = 0, None, None, None, None
    for batch in source.iterate():
        z = transform(batch["x"]).double()
        nb = z.shape[0]
        bmean = z.mean(dim=0)
        bm2 = ((z - bmean) ** 2).sum(dim=0)
        bmin, bmax = z.min(dim=0).values, z.max(dim=0).values
        if mean is None:
            count, mean, m2, lo, hi = nb, bmean, bm2, bmin, bmax
            continue
        total = count + nb
        delta = bmean - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + bm2 + delta**2 * (count * nb / total)
        lo, hi = torch.minimum(lo, bmin), torch.maximum(hi, bmax)
        count = total
    std = torch.sqrt(m2 / count)
    return {k: v.cpu().numpy() for k, v in {"mean": mean, "std": std, "min": lo, "max": hi}.items()}


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


def cyclical_kl_weight(
    epoch: int, zero_epochs: int = 20, rise_epochs: int = 10, hold_epochs: int = 10, rate: float = 5.0
) -> float:
    r"""The paper's cyclical KL annealing weight at (0-based) ``epoch``.

    A cycle lasts :math:`C = Z + R + H` epochs (defaults 20 + 10 + 10 = 40). With
    :math:`t = \text{epoch} \bmod C`:

    .. math::

        w(t) = \begin{cases}
          0 & t < Z \\
          \dfrac{e^{k (t - Z + 1)/R} - 1}{e^{k} - 1} & Z \le t < Z + R \\
          1 & t \ge Z + R
        \end{cases}

    i.e. zero for the first ``zero_epochs`` of each cycle, an exponential rise over ``rise_epochs``
    that reaches exactly 1 on the last rise epoch (``rate`` = k sets the curvature; k -> 0 is a
    linear ramp), then ``hold_epochs`` at 1, then reset (Fu et al. 2019). With the defaults:
    w(19) = 0, w(20) = 0.0044, w(24) = 0.0611 (half-way: (e^2.5-1)/(e^5-1)), w(29) = 1, w(39) = 1,
    w(40) = 0.

    The authors' code instead switches the weight on and off every 20 epochs and raises it by a
    cumulative linear step (1.0 after 5 epochs); the book follows the paper's description.
    """
    zero_epochs, rise_epochs, hold_epochs = int(zero_epochs), int(rise_epochs), int(hold_epochs)
    if min(zero_epochs, rise_epochs, hold_epochs) < 0 or zero_epochs + rise_epochs + hold_epochs == 0:
        raise ValueError("cyclical_kl_weight: epoch counts must be >= 0 with a positive cycle length")
    if epoch < 0:
        raise ValueError(f"cyclical_kl_weight: epoch must be >= 0, got {epoch}")
    t = int(epoch) % (zero_epochs + rise_epochs + hold_epochs)
    if t < zero_epochs:
        return 0.0
    if t < zero_epochs + rise_epochs:
        frac = (t - zero_epochs + 1) / rise_epochs
        if abs(rate) < 1e-12:
            return float(frac)
        return float(math.expm1(rate * frac) / math.expm1(rate))
    return 1.0


def cyclical_kl_schedule(zero_epochs: int = 20, rise_epochs: int = 10, hold_epochs: int = 10, rate: float = 5.0):
    """:func:`cyclical_kl_weight` with its cycle fixed: a callable ``epoch -> weight`` for :func:`fit`."""
    # Validate once, now, rather than at epoch 0 of a long run.
    cyclical_kl_weight(0, zero_epochs, rise_epochs, hold_epochs, rate)

    def schedule(epoch: int) -> float:
        return cyclical_kl_weight(epoch, zero_epochs, rise_epochs, hold_epochs, rate)

    schedule.__qualname__ = f"cyclical_kl_schedule({zero_epochs}, {rise_epochs}, {hold_epochs}, {rate})"
    return schedule


def cosine_warm_restarts_lr(epoch: float, lr: float, T_0: int, eta_min: float = 0.0) -> float:
    r"""Learning rate of SGDR (Loshchilov & Hutter) at a (fractional) epoch, restart period ``T_0``:

    .. math:: \eta(t) = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})\,(1 + \cos(\pi\, (t \bmod T_0) / T_0)).

    The closed form that ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` follows (T_mult=1);
    here for documentation and tests.
    """
    return eta_min + 0.5 * (lr - eta_min) * (1.0 + math.cos(math.pi * (epoch % T_0) / T_0))


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


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

    def fingerprint(self) -> dict:
        n_donors = None if self.donors is None else int(len(set(self.donors)))
        return {"data": self.batches.fingerprint(), "donors": n_donors,
                "target_mean": float(self.target_mean), "target_std": float(self.target_std)}

    @torch.no_grad()
    def evaluate(self, module: nn.Module, kl_weight: float) -> dict:
        """``val_<part>`` for each loss part (mean per cell) and ``val_mae`` in years."""
        was_training = module.training
        module.eval()
        sums, n_total, preds, ys = {}, 0, [], []
        for batch in self.batches.with_options(shuffle=False).iterate():
            parts = module.loss(batch, kl_weight)
            n = batch["x"].shape[0]
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            n_total += n
            preds.append(module.predict(batch["x"]).reshape(-1).double().cpu())
            ys.append(batch["y"].double().cpu())
        module.train(was_training)
        pred = torch.cat(preds).numpy() * self.target_std + self.target_mean
        true = torch.cat(ys).numpy() * self.target_std + self.target_mean
        if self.donors is not None:
            frame = pd.DataFrame({"d": self.donors, "p": pred, "t": true}).groupby("d").mean()
            mae = float(np.mean(np.abs(frame["p"] - frame["t"])))
        else:
            mae = float(np.mean(np.abs(pred - true)))
        out = {f"val_{k}": v / n_total for k, v in sums.items()}
        out["val_mae"] = mae
        return out


def _kl_schedule_fn(kl_schedule) -> Callable[[int], float]:
    if kl_schedule is None:
        return lambda epoch: 1.0  # the plain ELBO
    if callable(kl_schedule):
        return kl_schedule
    if isinstance(kl_schedule, (int, float)):
        value = float(kl_schedule)
        return lambda epoch: value
    raise ValueError(f"kl_schedule must be None, a number or a callable epoch -> weight, got {kl_schedule!r}")


def config_hash(module: nn.Module, batches: CellBatches, settings: dict) -> str:
    """SHA-256 of everything that decides a run's trajectory except its length (``epochs``).

    Leaving ``epochs`` out lets a finished run be extended (e.g. 500 -> 1000 epochs, as in the
    paper's Table 3) by re-running with more epochs; nothing in the loop depends on the total.
    The module enters through its ``repr`` (architecture), parameter shapes and buffer values (input
    scaling statistics), the data through cheap fingerprints, a KL schedule through its values.
    """
    buffers = {name: float(buf.double().sum()) for name, buf in module.named_buffers() if "running" not in name
               and "num_batches" not in name}
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "module_class": type(module).__qualname__,
        "module": repr(module),
        "parameters": [[name, list(p.shape)] for name, p in module.named_parameters()],
        "buffers": buffers,
        "data": batches.fingerprint(),
        "settings": settings,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then ``os.replace``.

    ``os.replace`` is atomic on POSIX and Windows: a reader (or a resumed run) sees either the old
    checkpoint or the new one, never a half-written file, whatever kills the writer.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_checkpoint(path: Path, key: str, device: torch.device):
    """The checkpoint at ``path`` if it exists, is readable and matches ``key``; else ``None``."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a file from elsewhere or a damaged disk: never fatal, never loaded
        warnings.warn(
            f"ignoring unreadable checkpoint {path} ({type(exc).__name__}); training from scratch", stacklevel=3
        )
        return None
    if not isinstance(state, dict) or state.get("config_hash") != key:
        warnings.warn(
            f"ignoring checkpoint {path}: it was written by a different configuration (model, data or "
            "settings changed); training from scratch and overwriting it",
            stacklevel=3,
        )
        return None
    return state


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["generator"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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
    kl_fn = _kl_schedule_fn(kl_schedule)
    device = batches.device
    module.to(device)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=int(T_0))
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
    key = config_hash(module, batches, settings) if path is not None else ""
    if path is not None:
        state = _load_checkpoint(path, key, device)
        if state is not None and int(state["epochs_done"]) > epochs:
            # A longer run of the same model (e.g. the 1000-epoch row of Table 3 before the 200-epoch
            # row is re-run): resuming would return the longer run, so start over instead.
            warnings.warn(
                f"checkpoint {path} holds {int(state['epochs_done'])} epochs, more than the {epochs} asked for: "
                "training from scratch", stacklevel=2)
            state = None
        if state is not None:
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"], generator)
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
        _atomic_torch_save(
            {
                "format": _CHECKPOINT_FORMAT, "config_hash": key, "epochs_done": epochs_done,
                "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": _rng_state(generator), "history": history, "early": early, "best_state": best_state,
            },
            path,
        )

    n_batches = max(len(batches), 1)
    bar = _progress_bar(epochs, min(start, epochs), progress, desc or type(module).__name__)
    try:
        for epoch in range(start, epochs):
            if early["stopped"]:
                break
            tic = time.perf_counter()
            kl_weight = float(kl_fn(epoch))
            module.train()
            sums: dict[str, torch.Tensor] = {}
            n_seen = 0
            lr_first = None
            for i, batch in enumerate(batches.iterate(generator)):
                if scheduler is not None:
                    scheduler.step(epoch + i / n_batches)
                if lr_first is None:
                    lr_first = optimizer.param_groups[0]["lr"]
                parts = module.loss(batch, kl_weight)
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                optimizer.step()
                n = batch["x"].shape[0]
                for name, value in parts.items():
                    value = value.detach() * n
                    sums[name] = sums[name] + value if name in sums else value
                n_seen += n
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
            row["seconds"] = time.perf_counter() - tic
            history.append(row)
            done = epoch + 1
            if path is not None and (done % int(checkpoint_every) == 0 or done == epochs or early["stopped"]):
                save(done)
            bar.update(1)
            bar.set_postfix(_postfix(row), refresh=False)
    finally:
        bar.close()
    if early_stopping_patience is not None and best_state is not None:
        module.load_state_dict(best_state)  # the best validation epoch, not the last
    module.eval()
    frame = pd.DataFrame(history)
    frame.attrs["best_epoch"] = early["best_epoch"] if early_stopping_patience is not None else None
    frame.attrs["stopped_early"] = bool(early["stopped"])
    return frame


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
        outputs.append(out.detach().double().cpu())
    module.train(was_training)
    return torch.cat(outputs).numpy()


# --------------------------------------------------------------------------------------------------
# Shared regressor plumbing
# --------------------------------------------------------------------------------------------------


def _check_ages(ages, n_cells: int, donors=None, what: str = "ages") -> np.ndarray:
    ages = np.asarray(ages, dtype=float).reshape(-1)
    if len(ages) != n_cells:
        raise DataValidationError(f"{what} has {len(ages)} values for {n_cells} cells: pass one age per cell")
    if not np.isfinite(ages).all():
        raise DataValidationError(f"{what} holds NaN or infinite values: drop those cells or fill the ages")
    if donors is not None:
        donors = np.asarray(donors).astype(str).reshape(-1)
        if len(donors) != n_cells:
            raise DataValidationError(
                f"donors has {len(donors)} values for {n_cells} cells: pass one donor id per cell"
            )
        per = pd.Series(ages).groupby(donors).nunique()
        if (per > 1).any():
            raise DataValidationError(
                f"donor {per[per > 1].index[0]} has more than one age: give every cell of a donor the donor's age"
            )
    return ages


class TorchAgeRegressor:
    """sklearn-like base of the torch age regressors: scaling of ages, validation set, years out.

    Ages are z-scored with the mean and (population) standard deviation over training *cells*, as
    the paper's StandardScaler on the per-cell target; predictions are mapped back to years.
    Subclasses implement ``_build_module(X)`` (returning an ``nn.Module`` whose input transform is
    fitted on ``X``) and may override ``_check_X``, ``_extras`` and ``_kl_schedule``.
    """

    max_dense_bytes = DEFAULT_MAX_DENSE_BYTES

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
    _RUN_ONLY = ("epochs", "checkpoint_path", "checkpoint_every", "progress", "device")

    def _config(self) -> dict:
        def plain(value):  # a function's repr holds its address: identify it by name instead
            return getattr(value, "__qualname__", type(value).__name__) if callable(value) else value

        return {k: plain(v) for k, v in vars(self).items()
                if not k.endswith("_") and not k.startswith("_") and k not in self._RUN_ONLY}

    # -- API ---------------------------------------------------------------------------------------
    def fit(self, X, ages, donors=None, validation=None, library_size=None):
        """Fit on ``X`` (cells x features) and per-cell ``ages`` in years.

        ``donors`` (optional, one id per cell) only checks that every donor has one age.
        ``validation`` is ``(X_val, ages_val)`` or ``(X_val, ages_val, donors_val)``; its loss and
        MAE (donor-level when donors are given) are recorded per epoch in ``history_``.
        """
        X = _as_float32_matrix(X)
        _check_finite_matrix(X)
        if X.shape[0] < 2:
            raise DataValidationError(f"need at least 2 training cells, got {X.shape[0]}: pass more cells")
        ages = _check_ages(ages, X.shape[0], donors)
        self._check_X(X, fitting=True)
        self.n_features_ = int(X.shape[1])
        self.device_ = resolve_device(self.device)
        self.age_mean_ = float(ages.mean())
        self.age_std_ = float(ages.std()) or 1.0  # one age only: avoid dividing by zero
        y = (ages - self.age_mean_) / self.age_std_
        batches = CellBatches(X, y, library_size=library_size, extras=self._extras(X), batch_size=self.batch_size,
                              shuffle=True, device=self.device_, max_dense_bytes=self.max_dense_bytes)
        torch.manual_seed(self.seed)  # parameter initialisation
        module = self._build_module(X, batches)
        val = None
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) not in (2, 3):
                raise ValueError("validation must be (X_val, ages_val) or (X_val, ages_val, donors_val)")
            Xv = _as_float32_matrix(validation[0])
            _check_finite_matrix(Xv, "validation X")
            self._check_X(Xv, fitting=False)
            dv = validation[2] if len(validation) == 3 else None
            av = _check_ages(validation[1], Xv.shape[0], dv, "validation ages")
            yv = (av - self.age_mean_) / self.age_std_
            vb = CellBatches(Xv, yv, extras=self._extras(Xv), batch_size=max(self.batch_size, 4096), shuffle=False,
                             device=self.device_, max_dense_bytes=self.max_dense_bytes)
            val = Validation(vb, dv, self.age_mean_, self.age_std_)
        self.history_ = fit(
            module, batches, self.epochs, self.lr,
            lr_schedule=getattr(self, "lr_schedule", None), T_0=getattr(self, "T_0", 20),
            kl_schedule=self._kl_schedule(), validation=val,
            early_stopping_patience=self.early_stopping_patience,
            checkpoint_path=self.checkpoint_path, checkpoint_every=self.checkpoint_every,
            seed=self.seed, progress=self.progress, weight_decay=getattr(self, "weight_decay", 0.0),
            config=self._config(), desc=type(self).__name__,
        )
        self.module_ = module
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(X, ages) first")

    def _predict_batches(self, X) -> CellBatches:
        self._check_fitted()
        X = _as_float32_matrix(X)
        _check_finite_matrix(X)
        self._check_X(X, fitting=False)
        return CellBatches(X, batch_size=max(self.batch_size, 4096), shuffle=False, device=self.device_,
                           max_dense_bytes=self.max_dense_bytes)

    def predict(self, X) -> np.ndarray:
        """Predicted age in years, one per cell (the model in eval mode: deterministic)."""
        batches = self._predict_batches(X)  # checks fitted and X first
        scaled = predict_batches(self.module_, batches)
        return scaled.reshape(-1) * self.age_std_ + self.age_mean_
