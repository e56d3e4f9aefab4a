"""Before a chapter runs: will it fit in memory?

The runner asks three things of a data file and the machine, none of which loads the matrix:

- :func:`read_shape`: the stored matrices' shapes, non-zeros and types, read with h5py from the
  .h5ad's metadata (and the donor column of ``obs``, for a per-donor cap on cells);
- :func:`available_memory`: what this process may still use, the smaller of the cgroup's limit minus
  its usage and the kernel's ``MemAvailable`` (``NEUROAGE_MEMORY_AVAILABLE`` overrides both, e.g.
  ``2G``: for tests, or to keep room for other work);
- :func:`estimate`: a chapter's peak memory, summed over the notebook kernel and its worker
  processes, from the shape and the profile's settings.

The estimate is one small formula per data path, looked up in :data:`FORMULAS` by name: the
in-memory path below (the whole matrix in the kernel, as today); a streamed path registers its own
function under another name and the runner asks for it. The runner records the estimate beside the
measured peak of each chapter (``memory`` in ``results/<section>.json``, and the status page), so the
formula can be checked against reality and recalibrated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from neuroage_utils import profiles
from neuroage_utils.errors import DataValidationError

__all__ = ["DataShape", "Estimate", "read_shape", "available_memory", "estimate", "FORMULAS", "refusal",
           "cells_cap_that_fits", "gb", "MEMORY_ENV", "memory_cgroup_folders"]

#: Environment override of the memory available (bytes, or a number with K/M/G/T, e.g. ``2G``).
MEMORY_ENV = "NEUROAGE_MEMORY_AVAILABLE"
GB = 1e9


def gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.1f} GB" if n_bytes >= 0.95 * GB else f"{n_bytes / GB:.2f} GB"


# --------------------------------------------------------------------------------------------------
# The file: shapes and stored values, no load
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataShape:
    """What a chapter's memory depends on, read from the file's metadata.

    ``nnz`` and ``csr_bytes`` describe the matrix the models use (``layers['counts']`` if present,
    else ``X``) as the chapters hold it: CSR, float32 values, int32 column indices. ``stored_bytes``
    is what reading the file puts in memory (anndata reads ``X`` and every layer), ``converted``
    whether the matrix must be copied to become CSR float32. ``cells_per_donor``: when the donor
    column was read, for a per-donor cap (``max_cells``) the cap applies before anything is fitted.
    """

    n_cells: int
    n_genes: int
    nnz: int
    stored_bytes: int
    converted: bool
    cells_per_donor: tuple = field(default=(), repr=False)
    max_cells: int | None = None  # cells per donor kept (None: all)

    @property
    def kept_cells(self) -> int:
        if self.max_cells is None or not self.cells_per_donor:
            return self.n_cells
        return int(np.minimum(np.asarray(self.cells_per_donor), self.max_cells).sum())

    @property
    def kept_share(self) -> float:
        return self.kept_cells / max(1, self.n_cells)

    @property
    def csr_bytes(self) -> int:
        """One CSR float32 copy of the (kept) matrix: values and indices 4 bytes each, int64 row pointers."""
        return int(8 * self.nnz * self.kept_share + 8 * (self.kept_cells + 1))

    def describe(self) -> str:
        cells = (f"{self.kept_cells:,} of {self.n_cells:,} cells (at most {self.max_cells} per donor)"
                 if self.max_cells is not None else f"{self.n_cells:,} cells")
        nnz = self.nnz * self.kept_share
        return f"{cells} x {self.n_genes:,} genes, " + (f"{nnz / 1e6:,.0f} M non-zeros" if nnz >= 1e6 else f"{nnz:,.0f} non-zeros")


def _matrix_info(node) -> tuple[int, int, int, int, bool]:
    """``(rows, cols, nnz, bytes in memory, is CSR float32)`` of a stored matrix, from metadata (a
    dense one: its non-zeros counted on at most 2,000 rows)."""
    import h5py

    if isinstance(node, h5py.Group):  # anndata's sparse encoding: data, indices, indptr
        rows, cols = (int(v) for v in node.attrs["shape"])
        data, indices, indptr = node["data"], node["indices"], node["indptr"]
        nnz = int(data.shape[0])
        size = nnz * (data.dtype.itemsize + indices.dtype.itemsize) + int(indptr.shape[0]) * indptr.dtype.itemsize
        encoding = node.attrs.get("encoding-type", "")
        encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        return rows, cols, nnz, size, encoding.startswith("csr") and data.dtype == np.float32
    rows, cols = (int(v) for v in node.shape)
    sample = node[: min(rows, 2000)]
    nnz = int(round(np.count_nonzero(sample) * rows / max(1, sample.shape[0])))
    return rows, cols, nnz, rows * cols * node.dtype.itemsize, False


def read_shape(path, donor_key: str | None = None, max_cells: int | None = None) -> DataShape:
    """The shape of an .h5ad's matrices and stored values, read without loading them.

    Raises :class:`DataValidationError` for a file h5py cannot open or that holds no matrix (the
    same problems the full validation would report later, said earlier).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"data file {path} does not exist: pass the path of an .h5ad file")
    try:
        with h5py.File(path, "r") as f:
            nodes = {"X": f["X"]} if "X" in f else {}
            if "layers" in f:
                nodes.update({f"layers/{k}": f["layers"][k] for k in f["layers"]})
            if not nodes:
                raise DataValidationError(f"{path} holds no matrix in X or layers: store the counts in X")
            info = {name: _matrix_info(node) for name, node in nodes.items()}
            counts = []
            if donor_key and "obs" in f and donor_key in f["obs"]:
                from neuroage_utils.data.stream import count_codes
                from neuroage_utils.data.stream_obs import column_codes, missing_code

                names, codes = column_codes(path, donor_key)  # codes, not a string per cell
                counts = count_codes(codes, len(names) + 1, codes != missing_code(codes))[: len(names)].tolist()
    except (OSError, KeyError) as exc:
        raise DataValidationError(
            f"cannot read {path} as AnnData ({type(exc).__name__}: {exc}): pass an .h5ad written by anndata or scanpy"
        ) from None
    used = info["layers/counts"] if "layers/counts" in info else info.get("X", next(iter(info.values())))
    rows, cols, nnz, _, is_csr32 = used
    return DataShape(n_cells=rows, n_genes=cols, nnz=nnz, stored_bytes=sum(v[3] for v in info.values()),
                     converted=not is_csr32, cells_per_donor=tuple(counts), max_cells=max_cells)


# --------------------------------------------------------------------------------------------------
# The machine: memory available
# --------------------------------------------------------------------------------------------------


def _parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text.split()[0])


def memory_cgroup_folders() -> list[tuple[str, Path]]:
    """This process's memory cgroup folders, most specific first, with the hierarchy's version ("v2"
    unified, or "v1" with the folder inside a container's view and the controller's root); [] when
    there is no cgroup to read."""
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2 unified hierarchy
            return [("v2", root / rel.lstrip("/"))]
        if "memory" in controllers.split(","):
            base = root / "memory"
            return [("v1", base / rel.lstrip("/")), ("v1", base)]
    return []


def _cgroup_room() -> int | None:
    """The cgroup's memory limit minus its usage (v2 ``memory.max``, v1 ``memory.limit_in_bytes``),
    None when there is no limit or no cgroup to read."""
    folders = memory_cgroup_folders()
    if not folders:
        return None
    version, folder = next(((v, f) for v, f in folders if f.exists()), folders[-1])
    if version == "v2":
        limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
    else:
        limit, used = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
    if limit is not None and used is not None and limit < 1 << 60:  # v1 says "no limit" with a huge number
        return max(0, limit - used)
    return None


def available_memory() -> tuple[int, str]:
    """Bytes this run may still use, and where the number came from."""
    override = os.environ.get(MEMORY_ENV, "").strip()
    if override:
        try:
            return _parse_bytes(override), f"${MEMORY_ENV}"
        except ValueError:
            raise DataValidationError(f"{MEMORY_ENV}={override!r} is not a size: use bytes or e.g. 8G") from None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    room = _cgroup_room()
    if room is not None:
        found.append((room, "the cgroup's limit"))
    if not found:  # not Linux: no number to compare with, so never refuse
        return 1 << 62, "unknown (no /proc/meminfo)"
    return min(found)


# --------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A chapter's estimated peak (bytes, over the kernel and its workers) and its parts."""

    section: str
    bytes: int
    parts: dict
    formula: str
    workers: int

    def record(self) -> dict:
        return {"estimate_gb": round(self.bytes / GB, 3), "formula": self.formula,
                "parts_gb": {k: round(v / GB, 3) for k, v in self.parts.items()}}


# Calibration of the in-memory formula: `bench/bench_preflight.py --cells 40000 200000 --genes 2000`
# (Poisson counts, 10% non-zero, 30 donors; profile smoke, so the models are small and the matrix
# terms dominate; 2 CPU cores, 2 workers), 2026-12-06. Peaks are PSS summed over the kernel and its
# workers, sampled every 0.5 s by the runner. One CSR copy (``csr_bytes``) is 0.064 GB at 40,000
# cells and 0.321 GB at 200,000. Measured peak -> this formula's estimate (GB):
#   data       0.41 -> 0.45   | 0.76 -> 0.79
#   svd        0.52 -> 0.53   | 1.13 -> 1.17
#   baselines  2.06 -> 2.07   | 5.42 -> 5.68    (3,000 cells x 500 genes: 1.10 -> 1.09)
#   nmf        1.69 -> 1.70   | 3.32 -> 3.33    (40,000 cells: densified for the factorisation)
#   summary    2.01 -> 2.03   | 4.82 -> 4.86
#   vae        2.32 -> 2.32 (40,000 cells only: the chapter took 13 min there)
#   (vae and dae: one size each, so their slope assumes the kernel and workers of the other chapters)
#   dae        1.95 -> 1.93 (40,000 cells only; 3.6 min)
# The copies are many because each parallel fit receives its own slices of the matrix (training and
# evaluation cells, per job) besides the normalised copy, the pseudobulk / pseudocell slices and the
# memory-mapped copy the workers read; the streamed data path is meant to remove most of them.
#: Memory of a notebook kernel with the package imported (intercept of the data and svd points), and
#: of one fitting worker process (the 3,000-cell baselines point, less the kernel).
KERNEL_BYTES = 0.37 * GB
WORKER_BYTES = 0.35 * GB
#: Extra CSR float32 copies of the matrix a chapter holds at its peak, beyond the file as read (slopes
#: of the measured peaks against ``csr_bytes``).
COPIES = {"data": 0.3, "svd": 1.4, "baselines": 13.0, "nmf": 8.2, "vae": 18.0, "dae": 12.0, "summary": 10.0,
          "realdata": 0.0}
#: NMF densifies its input when it fits in 1 GiB as float32 (``models/nmf.py``), for the fit and the
#: transform: this many dense copies at the 40,000-cell point.
NMF_DENSE_COPIES = 2.3
NMF_DENSE_LIMIT = 2**30
#: Fixed needs beyond the kernel and workers (intercepts): the summary's per-fold models and CV tables.
FIXED = {"summary": 0.25 * GB}
#: Sections that fit in worker processes (one per core on a CPU).
PARALLEL = {"baselines", "vae", "dae", "summary", "realdata"}
#: What the real-donor chapter needs beyond the kernel (its data are the small real-donor files; quick
#: profile: 0.58 GB per process, bench/README.md).
REALDATA_BYTES = 0.35 * GB


def _torch_model_bytes(n_in: int, hidden, batch: int, out: int = 1) -> int:
    """Training memory of one dense network: weights, gradients and Adam's two moments (4 x float32),
    and the densified batch with its activations forward and back."""
    sizes = [n_in, *[int(h) for h in hidden], out]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return int(16 * params + 4 * batch * (n_in * 2 + 3 * sum(sizes[1:])))


def _model_bytes(section: str, params: dict, n_genes: int) -> int:
    """The largest torch model a chapter trains (per concurrent fit), from the profile's grids."""
    if section == "baselines":
        return max(_torch_model_bytes(n_genes, c["hidden"], params["batch_size"]) for c in params["mlp_grid"])
    if section in ("vae", "dae"):
        grid = params.get("grid") or [*params.get("gaussian_grid", []), *params.get("poisson_grid", [])]
        # encoder and decoder (mirror) of the widest row
        return max(2 * _torch_model_bytes(n_genes, c["hidden"], params["batch_size"], out=c["latent"]) for c in grid)
    if section == "nmf":
        return _torch_model_bytes(params["n_components"], params["mlp"]["hidden"], params["batch_size"])
    return 0


def _in_memory(section: str, shape: DataShape, params: dict, workers: int, profile: str | None = None) -> dict:
    """The in-memory path: the file read whole into the kernel, chapters slicing it in memory."""
    parts = {"kernel": KERNEL_BYTES}
    if section == "realdata":
        parts["real-donor data and fits"] = REALDATA_BYTES
        parts["workers"] = workers * WORKER_BYTES
        return parts
    share = shape.kept_share
    # the file as read (every stored matrix), its CSR float32 copy when it is stored otherwise; with a
    # per-donor cap the kept rows are copied out and the full read is freed
    held = shape.stored_bytes * share + (shape.csr_bytes if shape.converted else 0)
    parts["matrix as read"] = held
    parts["copies of the matrix"] = COPIES.get(section, 3.0) * shape.csr_bytes
    if section in FIXED:
        parts["fits and tables"] = FIXED[section]
    if workers > 1 and section in PARALLEL:
        parts["workers"] = workers * WORKER_BYTES
    n = shape.kept_cells
    if section in ("svd", "nmf"):  # dense factor scores of every cell, float64
        k = params["n_components"]
        parts["factor scores"] = 2 * 8 * n * min(k, shape.n_genes)
    if section == "nmf" and 4 * n * shape.n_genes <= NMF_DENSE_LIMIT:
        parts["dense input"] = NMF_DENSE_COPIES * 4 * n * shape.n_genes
    if section == "baselines":  # the elastic net densifies its (scaled) training cells up to 2 GB
        en = params["elastic_net"]
        cells = n if en.get("max_cells") is None else min(n, en["max_cells"])
        parts["elastic net design"] = 2 * min(8 * cells * shape.n_genes, 2 * GB)
    model = _model_bytes(section, params, shape.n_genes)
    if model:
        parts["torch models"] = model * (workers if section in PARALLEL else 1)
    if share < 1:  # the whole file is read before the cap applies (and by the runner's input check)
        rest = sum(v for k, v in parts.items() if k != "kernel")
        parts["whole file, read before the cap"] = max(0, shape.stored_bytes + held - rest)
    return parts


#: What the streamed data path holds per cell of the file (``data.stream``: the donor code and the float32
#: library size, 5-6 bytes) and its largest transient per cell (a boolean mask, the selected cells'
#: codes, a sample's index): about 24 bytes a cell at its peak.
STREAM_BYTES_PER_CELL = 24
#: Donors x genes float64 sums the streamed path keeps (the validation pass's, a pseudobulk's, its
#: normalised copy).
STREAM_DONOR_SUM_COPIES = 3


def _streamed(section: str, shape: DataShape, params: dict, workers: int, profile: str | None = None) -> dict:
    """The streamed path (``data.stream``): the matrix stays in the file. The cell-level models fit an
    in-memory per-donor sample of ``stream_sample_cells`` cells (the profile's; None: every cell), so
    they cost what the in-memory path costs on a cohort of that size; the pseudobulk and pseudocell
    clocks add per-donor sums; the file itself costs a few bytes a cell and one block."""
    if section == "realdata":
        return _in_memory(section, shape, params, workers)
    sample = profiles.section_params(profile, "data").get("stream_sample_cells") if profile else None
    cells = shape.n_cells if sample is None else min(int(sample), shape.n_cells)
    share = cells / max(1, shape.n_cells)
    nnz = int(shape.nnz * share)
    small = DataShape(n_cells=cells, n_genes=shape.n_genes, nnz=nnz, stored_bytes=8 * nnz + 8 * (cells + 1),
                      converted=False)
    parts = _in_memory(section, small, params, workers)
    parts["sample of cells"] = parts.pop("matrix as read")
    donors = max(1, len(shape.cells_per_donor))
    parts["per-cell vectors of the file"] = STREAM_BYTES_PER_CELL * shape.n_cells
    parts["per-donor sums"] = STREAM_DONOR_SUM_COPIES * 8 * donors * shape.n_genes
    parts["one block"] = int(16 * shape.nnz / max(1, shape.n_cells) * 8192)
    return parts


#: Estimate formulas by data path: ``f(section, shape, params, workers, profile=...) -> {part: bytes}``.
FORMULAS = {"in-memory": _in_memory, "streamed": _streamed}


def estimate(section: str, shape: DataShape, profile: str, workers: int = 1, formula: str = "in-memory") -> Estimate:
    """A chapter's peak memory over its kernel and workers, from the data's shape and the profile."""
    params = profiles.section_params(profile, section)
    parts = {k: int(v) for k, v in FORMULAS[formula](section, shape, params, workers, profile=profile).items() if v}
    return Estimate(section, int(sum(parts.values())), parts, formula, workers)


def cells_cap_that_fits(section: str, shape: DataShape, profile: str, workers: int, available: int,
                        formula: str = "in-memory") -> int | None:
    """The largest per-donor cap on cells under which ``section`` fits ``available`` (None: none does,
    or the donors' cell counts are unknown)."""
    if not shape.cells_per_donor:
        return None
    lo, hi = 1, max(shape.cells_per_donor)
    if estimate(section, replace(shape, max_cells=lo), profile, workers, formula).bytes > available:
        return None
    while lo < hi:  # the estimate grows with the cap
        mid = (lo + hi + 1) // 2
        if estimate(section, replace(shape, max_cells=mid), profile, workers, formula).bytes <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def refusal(ests: list[Estimate], shape: DataShape, profile: str, available: int, source: str) -> str:
    """The one line that says chapters will not fit (the largest first), and the ways out that would
    make all of them fit."""
    est = max(ests, key=lambda e: e.bytes)
    ways = []

    def fits(**change) -> bool:
        return all(estimate(e.section, change.get("shape", shape), change.get("profile", profile),
                            change.get("workers", e.workers), change.get("formula", e.formula)).bytes <= available
                   for e in ests)

    if any(e.formula != "streamed" for e in ests) and fits(formula="streamed"):
        ways.append("the streamed data path (--stream: the matrix stays in the file)")
    caps = [cells_cap_that_fits(e.section, shape, profile, e.workers, available, e.formula) for e in ests]
    if all(c is not None for c in caps) and min(caps) < max(shape.cells_per_donor or (0,)):
        ways.append(f"fewer cells per donor (--max-cells {min(caps)} would fit)")
    smaller = [p for p in profiles.PROFILE_NAMES[: profiles.PROFILE_NAMES.index(profile)] if fits(profile=p)]
    if smaller:
        ways.append(f"a smaller profile (--profile {smaller[-1]})")
    if any(e.workers > 1 and e.section in PARALLEL for e in ests) and fits(workers=1):
        ways.append("fewer workers (NEUROAGE_WORKERS=1)")
    ways += ["a machine with more memory (e.g. a GPU machine, --device cuda)", "--force to try anyway"]
    others = len(ests) - 1
    also = f" (and {others} more chapter{'s' if others > 1 else ''})" if others else ""
    return (f"chapter '{est.section}'{also} needs about {gb(est.bytes)} ({shape.describe()}, profile {profile}, "
            f"{est.workers} worker{'s' if est.workers > 1 else ''}) but {gb(available)} is available ({source}): "
            f"run it with {'; '.join(ways)}")
