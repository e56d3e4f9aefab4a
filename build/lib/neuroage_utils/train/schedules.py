"""Epoch schedules: the cyclical KL weight and cosine warm-restart learning rates."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["cyclical_kl_weight", "cyclical_kl_schedule", "cosine_warm_restarts_lr", "kl_schedule_fn"]


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


def kl_schedule_fn(kl_schedule) -> Callable[[int], float]:
    if kl_schedule is None:
        return lambda epoch: 1.0  # the plain ELBO
    if callable(kl_schedule):
        return kl_schedule
    if isinstance(kl_schedule, (int, float)):
        value = float(kl_schedule)
        return lambda epoch: value
    raise ValueError(f"kl_schedule must be None, a number or a callable epoch -> weight, got {kl_schedule!r}")
