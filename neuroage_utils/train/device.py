"""The one place a device request (``auto`` / ``cpu`` / ``cuda[:N]``) becomes a :class:`torch.device`."""

from __future__ import annotations

import contextlib
import os
import time

import torch

from neuroage_utils.data.heap import M_MMAP_MAX, M_TRIM_THRESHOLD, glibc
from neuroage_utils.errors import DataValidationError

__all__ = ["resolve_device", "device_label", "make_deterministic", "autocast", "amp_active", "native_bf16",
           "heap_reuse", "cpu_bf16_flags", "measured_bf16_speedup", "BF16_ENV", "BF16_MIN_SPEEDUP"]

#: ``0`` or ``1``: whether this CPU runs the torch models in bf16, decided by hand (no measurement).
#: Set by the first decision of a process, so its workers and ranks decide the same.
BF16_ENV = "NEUROAGE_CPU_BF16"
#: How much faster a bf16 matrix product must be than a float32 one for a CPU to train in bf16.
BF16_MIN_SPEEDUP = 1.3


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


def cpu_bf16_flags() -> dict:
    """The CPU's bf16 matrix instructions: ``amx`` (AMX tiles, Intel Sapphire Rapids and later) and
    ``avx512_bf16`` (bf16 dot products, e.g. AMD Zen 4 and later), from ``/proc/cpuinfo`` (Linux) and
    torch's AMX probe."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: guard it
    try:
        amx = bool(probe()) if probe is not None else False
    except RuntimeError:
        amx = False
    return {"amx": amx or "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def measured_bf16_speedup(size: int = 768, repeats: int = 5) -> float:
    """float32 time / bf16 time of a ``size``-square matrix product on this CPU (the best of
    ``repeats``, the two interleaved so that a busy machine slows both alike)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = {dtype: float("inf") for dtype in pairs}
    for dtype, (x, y) in pairs.items():
        torch.mm(x, y)  # warm-up: kernels chosen, memory touched
    for _ in range(int(repeats)):
        for dtype, (x, y) in pairs.items():
            tic = time.perf_counter()
            torch.mm(x, y)
            best[dtype] = min(best[dtype], time.perf_counter() - tic)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-12)


def _cpu_native_bf16() -> bool:
    """The CPU's decision, once per process tree: ``$NEUROAGE_CPU_BF16`` when set; else AMX, or
    AVX512-BF16 with a measured bf16 product at least :data:`BF16_MIN_SPEEDUP` times as fast as
    float32 (on the 2-core AMD development machine about 2.5x). Written to the environment so that
    worker processes and torchrun ranks started later decide the same without measuring."""
    told = os.environ.get(BF16_ENV, "").strip()
    if told in ("0", "1"):
        return told == "1"
    flags = cpu_bf16_flags()
    if flags["amx"]:
        decided = True
    elif flags["avx512_bf16"]:
        decided = measured_bf16_speedup() >= BF16_MIN_SPEEDUP
    else:
        decided = False
    os.environ[BF16_ENV] = "1" if decided else "0"
    return decided


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware, fast enough to train in bf16: a CUDA GPU
    with bf16 support, or a CPU with AMX tiles (5-6x its float32 rate) or with AVX512-BF16 where a
    measured bf16 product beats float32 (:func:`_cpu_native_bf16`). Elsewhere bf16 is emulated and
    slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_native_bf16()
    return False


def amp_active(amp: bool, device: torch.device) -> bool:
    """Mixed precision runs only where asked for and where the device has native bf16 matrix units
    (:func:`native_bf16`): asked for on a CPU without them, it stays off (it would be slower). Not
    asked for, nothing is measured: the float32 path does not depend on the machine's load."""
    return bool(amp) and native_bf16(device)


def autocast(amp: bool, device: torch.device):
    """bf16 autocast when :func:`amp_active`; otherwise a context that changes nothing."""
    if not amp_active(amp, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# glibc's defaults of the two settings heap_reuse changes (the library itself: data.heap)
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


@contextlib.contextmanager
def heap_reuse(device: torch.device):
    """On a CPU with glibc: freed memory stays in the heap while the block runs, and is given back after.

    Why: a training step of a paper-scale model allocates several cells x genes float32 tensors (a
    4096 x 17,658 batch: 289 MB each), above glibc's largest mmap threshold (32 MiB). Each is then a
    fresh ``mmap`` whose pages the kernel faults in and zeroes one by one, and is unmapped at free: at
    17,658 genes the system time of a run was ~40% of its user time. With ``mmap`` off
    (``M_MMAP_MAX`` 0) and no trimming, the next batch reuses the same heap memory. Cost: the heap holds
    its peak while the block runs (measured +20% peak RSS at 17,658 genes), returned by ``malloc_trim``
    at the end; afterwards both settings are back at glibc's defaults (glibc's dynamic mmap threshold
    stays at its last value). No effect on results; a no-op on CUDA and off glibc.
    """
    libc = glibc() if torch.device(device).type == "cpu" else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # the largest int mallopt takes
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
