"""Real human donors: the book's clocks on published donor-level T-cell transcriptomes.

The data are the two held-out sets shipped in the MIT-licensed package ``grnimmuneclock==1.2.0``
(only that release ships them): pseudobulk CD4 and CD8 T-cell profiles of healthy donors, one row
per donor, values ``log1p(CPM)``, ``obs['age']`` in years and ``obs['dataset']`` (three cohorts).

They are fetched **at install time** (``python -m neuroage_utils.data.realdata fetch``, run by ``make``):
the exact wheel is downloaded without its dependencies, its SHA-256 checked, and only the data
files and the package's published clocks extracted under ``data/grnimmuneclock-1.2.0/`` with a
manifest of their hashes. Nothing is downloaded at run time; when the files are absent the chapter
says so in one line.

This module holds the files: their install-time fetch, and finding, checking and loading them.
The clocks fitted on them, and how they are scored, are in :mod:`neuroage_utils.chapters.donor_clocks`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils.errors import DataValidationError

__all__ = [
    "WHEEL_NAME", "WHEEL_SHA256", "CELL_TYPES", "fetch", "install_from_wheel", "locate", "load_realdata",
    "RealData", "CellTypeData", "fingerprint", "data_record", "page_summary", "donor_overview",
]

PACKAGE_SPEC = "grnimmuneclock==1.2.0"
WHEEL_NAME = "grnimmuneclock-1.2.0-py3-none-any.whl"
WHEEL_SHA256 = "4fb7b3083c65fe61a1a2024de9299b55e51779d35c5edc388a398d585f7963ab"
#: Where ``make`` puts the files, relative to the repository (a build product, git-ignored).
DATA_SUBDIR = Path("data") / "grnimmuneclock-1.2.0"
#: Points the chapter at another folder of the same layout (tests; a mirror of the files).
ENV_DIR = "NEUROAGE_REALDATA_DIR"
MANIFEST = "MANIFEST.json"

#: key -> (label, file in the wheel, the published clock's folder in the wheel)
CELL_TYPES = {
    "cd4t": ("CD4 T cells", "grnimmuneclock/data/heldout_CD4T.h5ad", "grnimmuneclock/models/CD4T"),
    "cd8t": ("CD8 T cells", "grnimmuneclock/data/heldout_CD8T.h5ad", "grnimmuneclock/models/CD8T"),
}
CLOCK_FILES = ("model_V1.pkl", "feature_names_V1.txt", "metadata.json")
AGE_KEY, DATASET_KEY = "age", "dataset"

# --------------------------------------------------------------------------------------------------
# Install time: fetch the wheel, check it, extract the files
# --------------------------------------------------------------------------------------------------


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _members() -> list[str]:
    names = [f for _, f, _ in CELL_TYPES.values()]
    names += [f"{folder}/{name}" for _, _, folder in CELL_TYPES.values() for name in CLOCK_FILES]
    return names


def install_from_wheel(wheel, dest, expected_sha256: str = WHEEL_SHA256) -> Path:
    """Check ``wheel``'s SHA-256 and extract the data files and published clocks into ``dest``.

    Written to a temporary folder and renamed into place, with ``MANIFEST.json`` (the wheel's and
    every file's SHA-256) last, so a failed install never leaves a half-written folder.
    """
    wheel, dest = Path(wheel), Path(dest)
    actual = _sha256(wheel)
    if actual != expected_sha256:
        raise DataValidationError(
            f"{wheel.name} has SHA-256 {actual[:16]}..., expected {expected_sha256[:16]}...: "
            "the download is not the published 1.2.0 wheel; delete it and run `make realdata` again"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        files = {}
        with zipfile.ZipFile(wheel) as zf:
            present = set(zf.namelist())
            for name in _members():
                if name not in present:
                    raise DataValidationError(f"{wheel.name} lacks {name}: use the 1.2.0 release")
                target = tmp / name.split("/", 1)[1]  # drop the leading package folder
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                files[str(target.relative_to(tmp))] = _sha256(target)
        (tmp / MANIFEST).write_text(json.dumps(
            {"package": PACKAGE_SPEC, "wheel": wheel.name, "wheel_sha256": actual, "files": files}, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _installed(dest: Path) -> bool:
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("wheel_sha256") == WHEEL_SHA256 and all(
        (dest / name).exists() for name in manifest.get("files", {}))


def fetch(dest=None, wheel=None, python: str = sys.executable, timeout: int = 300) -> Path:
    """Install the real-donor files into ``dest`` (default: ``data/grnimmuneclock-1.2.0`` of the
    repository); a no-op when they are there. Downloads the wheel with ``pip download --no-deps``
    unless ``wheel`` (a local copy) is given. Raises :class:`DataValidationError` on failure."""
    dest = Path(dest) if dest else _repo() / DATA_SUBDIR
    if _installed(dest):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                   "--disable-pip-version-check", PACKAGE_SPEC, "-d", tmp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DataValidationError(f"pip download {PACKAGE_SPEC} timed out after {timeout} s: "
                                          "check the connection to the package index") from None
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                raise DataValidationError(f"pip download {PACKAGE_SPEC} failed ({last}): "
                                          "check the connection to the package index")
            wheel = Path(tmp) / WHEEL_NAME
            if not wheel.exists():
                raise DataValidationError(f"pip download {PACKAGE_SPEC} gave no {WHEEL_NAME}")
        return install_from_wheel(wheel, dest)


def _repo() -> Path:
    return Path(__file__).resolve().parents[2]  # neuroage_utils/data/realdata.py -> the checkout


# --------------------------------------------------------------------------------------------------
# Run time: find, check and load the files (never downloads)
# --------------------------------------------------------------------------------------------------


def locate(out_dir=None) -> Path | None:
    """The folder holding the files: ``$NEUROAGE_REALDATA_DIR``, else ``<out_dir>/data/...``, else the
    repository's ``data/...``; None when none holds them."""
    if os.environ.get(ENV_DIR):
        candidates = [Path(os.environ[ENV_DIR])]
    else:
        candidates = [Path(out_dir) / DATA_SUBDIR] if out_dir else []
        candidates.append(_repo() / DATA_SUBDIR)
    for folder in candidates:
        if all((folder / f.split("/", 1)[1]).exists() for _, f, _ in CELL_TYPES.values()):
            return folder
    return None


@dataclass
class CellTypeData:
    """One cell type's donors: expression (donors x genes, float32), ages, donor ids, cohorts."""

    key: str
    label: str
    X: np.ndarray
    ages: np.ndarray
    donors: np.ndarray
    datasets: np.ndarray
    genes: np.ndarray
    path: Path
    sha256: str

    @property
    def n_donors(self) -> int:
        return int(len(self.ages))

    def describe(self) -> pd.DataFrame:
        """Donors and ages per cohort."""
        frame = pd.DataFrame({"dataset": self.datasets, "age": self.ages})
        table = frame.groupby("dataset", sort=True)["age"].agg(["size", "mean", "min", "max"])
        table.columns = ["donors", "mean age", "min age", "max age"]
        return table.round(1)


@dataclass
class RealData:
    """What the chapter found: the cell types, or the one-line reason there are none."""

    folder: Path | None
    cell_types: dict = field(default_factory=dict)
    reason: str = ""
    verified: bool = False  # files match the manifest written from the checked wheel

    @property
    def available(self) -> bool:
        return bool(self.cell_types)


def _check(adata, path: Path) -> None:
    for key in (AGE_KEY, DATASET_KEY):
        if key not in adata.obs:
            raise DataValidationError(f"{path.name} has no obs['{key}']: expected the grnimmuneclock layout")
    ages = pd.to_numeric(adata.obs[AGE_KEY], errors="coerce").to_numpy(float)
    if not np.isfinite(ages).all() or (ages < 0).any():
        raise DataValidationError(f"{path.name}: obs['{AGE_KEY}'] has missing or negative ages")
    if adata.obs[DATASET_KEY].nunique() < 2:
        raise DataValidationError(f"{path.name}: cross-cohort tests need at least 2 datasets in obs['{DATASET_KEY}']")
    if not adata.obs_names.is_unique:
        raise DataValidationError(f"{path.name}: donor ids (obs_names) are not unique")


def load_realdata(out_dir=None) -> RealData:
    """Load both cell types, or say in one line why they cannot be had (never downloads)."""
    import anndata as ad

    folder = locate(out_dir)
    if folder is None:
        return RealData(None, reason=(
            f"the real-donor files of `{PACKAGE_SPEC}` are not installed (`make realdata` fetches them "
            f"at install time into `{DATA_SUBDIR}/`; it needs the package index), so this chapter did not run."))
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    cell_types, verified = {}, manifest is not None
    for key, (label, member, _) in CELL_TYPES.items():
        rel = member.split("/", 1)[1]
        path = folder / rel
        sha = _sha256(path)
        if manifest is not None and manifest.get("files", {}).get(rel) != sha:
            return RealData(folder, reason=f"`{path}` does not match the checked wheel (SHA-256 differs): "
                                           "delete the folder and run `make realdata` again.")
        adata = ad.read_h5ad(path)
        _check(adata, path)
        X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        X = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X).all() or (X < 0).any():
            raise DataValidationError(f"{path.name}: expression must be finite and non-negative (log1p(CPM))")
        cell_types[key] = CellTypeData(
            key=key, label=label, X=X, ages=adata.obs[AGE_KEY].to_numpy(float),
            donors=adata.obs_names.to_numpy().astype(str), datasets=adata.obs[DATASET_KEY].astype(str).to_numpy(),
            genes=adata.var_names.to_numpy().astype(str), path=path, sha256=sha)
    return RealData(folder, cell_types=cell_types, verified=verified)


def fingerprint(out_dir=None) -> str:
    """What the runner hashes for this chapter's inputs: the files' manifest, or 'absent'."""
    folder = locate(out_dir)
    if folder is None:
        return "absent"
    manifest = folder / MANIFEST
    if manifest.exists():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    return hashlib.sha256("".join(_sha256(folder / f.split("/", 1)[1]) for _, f, _ in CELL_TYPES.values())
                          .encode()).hexdigest()


def data_record(rd: RealData) -> dict:
    """The results file's ``data`` block: rows are donor profiles, so ``n_cells`` counts profiles."""
    if not rd.available:
        return {"path": str(DATA_SUBDIR), "sha256": "absent", "simulated": False, "n_cells": 0, "n_genes": 0,
                "n_donors": 0, "available": False, "reason": rd.reason}
    cts = rd.cell_types.values()
    combined = hashlib.sha256("".join(c.sha256 for c in cts).encode()).hexdigest()
    return {
        "path": str(rd.folder), "sha256": combined, "simulated": False,
        "n_cells": int(sum(c.n_donors for c in cts)),
        "n_genes": int(len(set().union(*[set(c.genes) for c in cts]))),
        "n_donors": int(len(set().union(*[set(c.donors) for c in cts]))),
        "available": True, "verified_against_wheel": rd.verified, "source": PACKAGE_SPEC, "rows": "donor profiles",
        "files": {c.key: {"path": str(c.path), "sha256": c.sha256, "n_donors": c.n_donors, "n_genes": len(c.genes)}
                  for c in cts},
    }


def main(argv=None) -> int:
    """``python -m neuroage_utils.data.realdata fetch [--dest DIR] [--wheel PATH]`` (run by ``make``).

    Exits 0 even when the files cannot be had (offline), printing one line: the book then builds and
    the real-data chapter says the files are absent. ``--strict`` exits 1 instead.
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m neuroage_utils.data.realdata")
    p.add_argument("command", choices=["fetch"])
    p.add_argument("--dest", default=None, help=f"target folder (default: {DATA_SUBDIR} in the repository)")
    p.add_argument("--wheel", default=None, help="a local copy of the wheel instead of downloading it")
    p.add_argument("--strict", action="store_true", help="exit 1 when the files cannot be had")
    args = p.parse_args(argv)
    try:
        dest = fetch(args.dest, wheel=args.wheel)
    except (DataValidationError, OSError, zipfile.BadZipFile) as exc:
        print(f"realdata: not installed ({exc}); the real-data chapter will say so", file=sys.stderr)
        return 1 if args.strict else 0
    print(f"realdata: {PACKAGE_SPEC} files ready in {dest}")
    return 0



# --------------------------------------------------------------------------------------------------
# What the notebook calls
# --------------------------------------------------------------------------------------------------


def page_summary(rd: RealData, P: dict, profile: str) -> str:
    """One Markdown paragraph naming the data this page ran on (or the one line saying it could not)."""
    if not rd.available:
        return f"This page ran on no data: {rd.reason}"
    parts = [f"{c.label} ({c.n_donors} donors x {len(c.genes):,} genes)" for c in rd.cell_types.values()]
    datasets = sorted(set().union(*[set(c.datasets) for c in rd.cell_types.values()]))
    check = ("matching the SHA-256 manifest written when the checked wheel was unpacked" if rd.verified
             else "**not** checked against the published wheel (no manifest)")
    sub = (f", at most {P['max_donors']} donors and {P['max_genes']} genes per cell type on this profile"
           if P.get("max_donors") else "")
    return (f"This page ran on **real human donors, not the book's cohort**: the held-out pseudobulk T-cell profiles "
            f"shipped in `{PACKAGE_SPEC}` (MIT licence), {' and '.join(parts)}; one row per donor, values "
            f"log1p(CPM), ages in years, datasets {', '.join(f'`{d}`' for d in datasets)}; files from `{Path(rd.folder).name}/`, "
            f"{check}. Profile `{profile}`{sub}.")


def donor_overview(rd: RealData) -> pd.DataFrame:
    """Donors and ages per dataset and cell type (empty when the files are absent)."""
    if not rd.available:
        return pd.DataFrame()
    return pd.concat({c.key.upper(): c.describe() for c in rd.cell_types.values()}, names=["cell type"])


if __name__ == "__main__":
    sys.exit(main())
