"""The results contract: what every chapter writes to ``results/<section>.json``.

```
{
  "section": "baselines",
  "data": {"path", "sha256", "simulated", "n_cells", "n_genes", "n_donors"},
  "profile": "quick",
  "params": {...},            # the configuration that actually ran
  "runtime_s": 12.3,
  "models": {
     "<model key>": {"split", "mae", "r", "mae_ci95": [lo, hi], "n_donors",
                      "predictions": [{"donor_id", "age", "predicted"}, ...], ...extra},
     "<model key>": {"skipped": "reason"},
     "<group>": {"<model key>": {...entry...}}   # one level of nesting (e.g. realdata's cell types)
  }
}
```
Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a failed
or interrupted run leaves the previous good file in place, never a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["tuning_key", "write_results", "read_results", "validate_results", "atomic_write_text", "atomic_write", "atomic_path", "ResultsError"]

TOP_LEVEL_KEYS = ("section", "data", "profile", "params", "runtime_s", "models")
DATA_KEYS = ("path", "sha256", "simulated", "n_cells", "n_genes", "n_donors")
ENTRY_KEYS = ("split", "mae", "r", "mae_ci95", "n_donors", "predictions")
# Optional top-level keys of the summary chapter: ``cv`` (model -> repeated-CV score) and ``leaderboard``.
CV_KEYS = ("mae", "mae_ci95", "folds", "repeats", "n_donors")
LEADERBOARD_KEYS = ("model", "section", "mae", "mae_ci95", "r", "n_donors", "paper_mae")


def tuning_key(model: str, table: int, row: int) -> str:
    """The results key of row ``row`` (1-based) of the paper's tuning table ``table`` for ``model``:
    ``tuning_key("vae_poisson", 3, 2) == "vae_poisson_t3_m2"``. The one place this key is spelt."""
    return f"{model}_t{int(table)}_m{int(row)}"


class ResultsError(ValueError):
    """A results document that does not follow the contract."""


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``os.replace`` is atomic on POSIX and Windows: a reader (or a resumed run) sees the old file or
    the new one, never a half-written one, whatever kills the writer; on failure the old file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path, write, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file, fsync it, then move it onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    return atomic_write(path, lambda fh: fh.write(text))


def _clean(value):
    """JSON-safe copy: numpy scalars to Python, NaN to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            value = value.tolist()
            return _clean(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _flat_entries(models: dict):
    """``(key, entry)`` pairs; a group (a mapping of model keys to entries, such as
    ``models['cd4t']['elastic_net']``) is entered one level down, as ``'cd4t/elastic_net'``."""
    for key, entry in models.items():
        if not isinstance(entry, dict):
            raise ResultsError(f"model '{key}': an entry must be a mapping")
        is_group = "split" not in entry and "skipped" not in entry and entry and all(
            isinstance(v, dict) and ("split" in v or "skipped" in v) for v in entry.values())
        if is_group:
            yield from ((f"{key}/{k}", v) for k, v in entry.items())
        else:
            yield key, entry


def validate_results(doc: dict) -> dict:
    """Raise :class:`ResultsError` unless ``doc`` follows the contract; return it."""
    missing = [k for k in TOP_LEVEL_KEYS if k not in doc]
    if missing:
        raise ResultsError(f"results lack top-level keys {missing}")
    missing = [k for k in DATA_KEYS if k not in doc["data"]]
    if missing:
        raise ResultsError(f"results 'data' lacks {missing}")
    if not isinstance(doc["models"], dict):
        raise ResultsError("results 'models' must be a mapping from model key to entry")
    for key, entry in _flat_entries(doc["models"]):
        if "skipped" in entry:
            if not isinstance(entry["skipped"], str) or not entry["skipped"]:
                raise ResultsError(f"model '{key}': 'skipped' must give a reason")
            continue
        missing = [k for k in ENTRY_KEYS if k not in entry]
        if missing:
            raise ResultsError(f"model '{key}' lacks {missing}")
        if entry["split"] not in ("train", "val", "test", "cv"):
            raise ResultsError(f"model '{key}': unknown split {entry['split']!r}")
        if len(entry["predictions"]) != entry["n_donors"]:
            raise ResultsError(f"model '{key}': {len(entry['predictions'])} predictions for {entry['n_donors']} donors")
        lo, hi = entry["mae_ci95"]
        if not (lo <= entry["mae"] + 1e-9 and entry["mae"] <= hi + 1e-9):
            raise ResultsError(f"model '{key}': MAE {entry['mae']} outside its interval [{lo}, {hi}]")
    for key, entry in doc.get("cv", {}).items():
        missing = [k for k in CV_KEYS if k not in entry]
        if missing:
            raise ResultsError(f"cv entry '{key}' lacks {missing}")
    for row in doc.get("leaderboard", []):
        missing = [k for k in LEADERBOARD_KEYS if k not in row]
        if missing:
            raise ResultsError(f"leaderboard row {row.get('model')!r} lacks {missing}")
    return doc


def write_results(out_dir, section: str, data: dict, profile: str, params: dict, runtime_s: float, models: dict,
                  extra: dict | None = None) -> Path:
    """Validate and atomically write ``out_dir/results/<section>.json``; return its path."""
    doc = _clean(
        {
            "section": section,
            "data": data,
            "profile": profile,
            "params": params,
            "runtime_s": float(runtime_s),
            "models": models,
            **(extra or {}),
        }
    )
    validate_results(doc)
    return atomic_write_text(Path(out_dir) / "results" / f"{section}.json", json.dumps(doc, indent=1) + "\n")


def read_results(out_dir, section: str) -> dict:
    """Read and validate one chapter's results."""
    path = Path(out_dir) / "results" / f"{section}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run `python -m neuroage_utils.run --only {section}` first"
        )
    return validate_results(json.loads(path.read_text()))
