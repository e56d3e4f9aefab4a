"""The one place a device request (``auto`` / ``cpu`` / ``cuda[:N]``) becomes a :class:`torch.device`."""

from __future__ import annotations

import contextlib
import os

import torch

from neuroage_utils.errors import DataValidationError

__all__ = ["resolve_device", "device_label", "make_deterministic", "autocast", "amp_active", "native_bf16"]


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
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DataValidationError(
                f"device '{device}' was requested but this torch build sees no CUDA GPU: "
                "use device='cpu' or device='auto' (--device auto)"
            )
        # Deterministic cuBLAS products need this before cuBLAS starts (the first product of the
        # process, e.g. an SVD before any training): set here, where every CUDA run passes first.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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


def make_deterministic(device: torch.device) -> None:
    """Deterministic kernels where torch has them, on CUDA: ``use_deterministic_algorithms(True,
    warn_only=True)`` (an op without a deterministic kernel warns instead of failing), cuDNN
    autotuning off, and the cuBLAS workspace setting that deterministic matrix products need (it only
    takes effect if set before cuBLAS starts, so it is set here, before the first product). A no-op
    on the CPU, whose kernels already are."""
    if torch.device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16 support, or a CPU
    with AMX tiles (Intel Sapphire Rapids and later; 5-6x its float32 matmul rate on the 2-core
    development machine). Elsewhere bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: guard it
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:
            return False
    return False


def amp_active(amp: bool, device: torch.device) -> bool:
    """Mixed precision runs only where asked for and where the device has native bf16 matrix units
    (:func:`native_bf16`): asked for on a CPU without them, it stays off (it would be slower)."""
    return bool(amp) and native_bf16(device)


def autocast(amp: bool, device: torch.device):
    """bf16 autocast when :func:`amp_active`; otherwise a context that changes nothing."""
    if not amp_active(amp, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
