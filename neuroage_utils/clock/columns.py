"""What every clock reads from ``obs`` (a named column, the control mask) and the checksum of its files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils.errors import DataValidationError

__all__ = ["obs_column", "control_mask", "sha256_file"]


def sha256_file(path) -> str:
    """SHA-256 of a clock file (checked on load)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def obs_column(obs: pd.DataFrame, key: str, flag: str) -> np.ndarray:
    """``obs[key]`` as strings; a one-line error naming ``--flag`` when the column is absent or has gaps."""
    if key not in obs.columns:
        shown = ", ".join(map(str, list(obs.columns)[:12]))
        raise DataValidationError(f"obs has no column '{key}' (columns: {shown or 'none'}): name the right one "
                                  f"with --{flag}")
    values = obs[key]
    if values.isna().any():
        raise DataValidationError(f"{int(values.isna().sum())} cells have no value in obs['{key}']: fill or drop them")
    return values.astype(str).to_numpy()


def control_mask(obs: pd.DataFrame, control_key: str | None, control_value) -> np.ndarray | None:
    """Boolean mask of control cells, or None without a control key."""
    if control_key is None:
        return None
    values = obs_column(obs, control_key, "control-key")
    if control_value is None:
        raise DataValidationError("a control key needs a control value: pass --control-value (e.g. control)")
    mask = values == str(control_value)
    if not mask.any():
        found = ", ".join(sorted(set(values))[:5])
        raise DataValidationError(f"no cell has obs['{control_key}'] == '{control_value}' (values: {found}): "
                                  "pass the value that marks control donors with --control-value")
    return mask
