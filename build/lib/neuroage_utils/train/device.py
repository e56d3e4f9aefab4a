"""The one place a device request (``auto`` / ``cpu`` / ``cuda[:N]``) becomes a :class:`torch.device`."""

from __future__ import annotations

import torch

from ..errors import DataValidationError

__all__ = ["resolve_device", "device_label"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``"auto"`` / ``"cpu"`` / ``"cuda"`` (or ``"cuda:N"``) to a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else the CPU. Asking for CUDA on a machine without it is a
    user error (:class:`~neuroage_utils.errors.DataValidationError`), not a silent fallback: a run
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


def device_label(device: torch.device) -> str:
    """What a results file records as the device used: ``cpu``, or ``cuda:0 (<GPU name>)``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
