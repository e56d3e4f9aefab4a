"""Checkpoints: a run's identity (config hash), atomic save, safe load, RNG state."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from neuroage_utils.results import atomic_write
from neuroage_utils.train.batches import CellBatches

__all__ = ["CHECKPOINT_FORMAT", "config_hash", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = 1


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
        "format": CHECKPOINT_FORMAT,
        "module_class": type(module).__qualname__,
        "module": repr(module),
        "parameters": [[name, list(p.shape)] for name, p in module.named_parameters()],
        "buffers": buffers,
        "data": batches.fingerprint(),
        "settings": settings,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a checkpoint atomically: a resumed run never reads a half-written file."""
    atomic_write(path, lambda fh: torch.save(state, fh), binary=True)


def load_checkpoint(path: Path, key: str, device: torch.device):
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


def rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["generator"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
