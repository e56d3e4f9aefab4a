"""What every clock reads from ``obs`` (a named column, the control mask) and the checksum of its files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils.errors import DataValidationError

__all__ = ["prediction_columns", "obs_column", "control_mask", "sha256_file", "check_column", "check_filled", "check_control_value"]


def sha256_file(path) -> str:
    """SHA-256 of a clock file (checked on load)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_column(columns, key: str, flag: str) -> None:
    """The one message for an absent obs column (in-memory and streamed)."""
    if key not in columns:
        shown = ", ".join(map(str, list(columns)[:12]))
        raise DataValidationError(f"obs has no column '{key}' (columns: {shown or 'none'}): name the right one "
                                  f"with --{flag}")


def check_filled(n_missing: int, key: str) -> None:
    """The one message for cells without a value in a column."""
    if n_missing:
        raise DataValidationError(f"{int(n_missing)} cells have no value in obs['{key}']: fill or drop them")


def obs_column(obs: pd.DataFrame, key: str, flag: str) -> np.ndarray:
    """``obs[key]`` as strings; a one-line error naming ``--flag`` when the column is absent or has gaps."""
    check_column(obs.columns, key, flag)
    values = obs[key]
    check_filled(int(values.isna().sum()), key)
    return values.astype(str).to_numpy()


def check_control_value(control_key: str, control_value, values) -> str:
    """The control value as text; absent from ``values`` (the column's distinct values) is an error."""
    if control_value is None:
        raise DataValidationError("a control key needs a control value: pass --control-value (e.g. control)")
    if str(control_value) not in set(values):
        found = ", ".join(sorted(set(values))[:5])
        raise DataValidationError(f"no cell has obs['{control_key}'] == '{control_value}' (values: {found}): "
                                  "pass the value that marks control donors with --control-value")
    return str(control_value)


def control_mask(obs: pd.DataFrame, control_key: str | None, control_value) -> np.ndarray | None:
    """Boolean mask of control cells, or None without a control key."""
    if control_key is None:
        return None
    values = obs_column(obs, control_key, "control-key")
    return values == check_control_value(control_key, control_value, np.unique(values))


def prediction_columns(obs: pd.DataFrame, donor_key: str, age_key: str, control_key: str | None, control_value):
    """What every clock's ``predict`` reads from ``obs``: donors, ages (NaN where unknown or without an
    age column; a donor's known ages must agree) and the control mask (None without a control key)."""
    from neuroage_utils.data.checks import donor_ages

    donors = obs_column(obs, donor_key, "donor-key")
    if age_key in obs.columns:
        ages = pd.to_numeric(obs[age_key], errors="coerce").to_numpy(dtype=float)
        known = np.isfinite(ages)
        if known.any():
            donor_ages(ages[known], donors[known], where=f" in obs['{age_key}']")
    else:
        ages = np.full(len(donors), np.nan)
    return donors, ages, control_mask(obs, control_key, control_value)
