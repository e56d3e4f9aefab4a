"""Torch age clocks (``neuroage fit --model vae|mlp [--nproc N]``): trained once, scored on held-out donors, no pickle.

An elastic-net clock is cheap enough to estimate its error by refitting it in every fold of an
outer cross-validation (:mod:`neuroage_utils.clock.models`). A VAE or an MLP on a million cells is
not, so a torch clock is honest in another way:

- an age-stratified ~20% of the donors (one fold of
  :func:`~neuroage_utils.evaluation.crossval.age_stratified_folds`, at least :data:`MIN_HELD_OUT`
  donors) is held out before training and never seen by it (no validation set, no early stopping);
- the network is trained **once**, on the other donors' cells: in this process (``nproc=1``) or
  data-parallel over ``nproc`` ``torchrun`` processes per machine
  (:func:`~neuroage_utils.models.data_parallel.fit_distributed`; several machines with ``nnodes``,
  ``node_rank``, ``master``);
- the held-out donors are predicted (mean of their cells' predictions) and their MAE, with a
  bootstrap interval over donors, is the clock's error. **The clock is that model**, trained on the
  training donors; it is not refitted on all donors afterwards.

Rows are read from the ``.h5ad`` by position (:func:`~neuroage_utils.models.data_parallel.read_rows`):
a process holds its training rows, never the whole file.

The clock directory (``format: neuroage-torch-clock``): ``clock.json`` (model, estimator settings, age
scaling, normalisation, SHA-256 of the arrays and genes), ``genes.json``, ``parameters.npz`` (every
tensor of the network's ``state_dict`` as an array, ``net.<name>``, plus each gene's training share
of counts and mean; read with ``allow_pickle=False``), ``training.json`` (donors, the held-out score
and predictions, world size, nodes, device, precision, cells per second per rank, the loss per
epoch) and ``MODEL_CARD.md``. :meth:`TorchClock.load` rebuilds the network from these.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils import __version__
from neuroage_utils.clock.alignment import align_genes
from neuroage_utils.clock.columns import control_mask, obs_column, prediction_columns, sha256_file
from neuroage_utils.data.checks import donor_ages, is_count_matrix, require_counts
from neuroage_utils.data.cohort import MIN_DONORS, counts_matrix, file_sha256, validate_obs
from neuroage_utils.data.features import log_normalize
from neuroage_utils.errors import DataValidationError
from neuroage_utils.evaluation.acceleration import add_age_gaps, fit_age_trend
from neuroage_utils.metrics import bootstrap_mae_ci, donor_metrics, donor_table
from neuroage_utils.results import atomic_write_text

# torch, the estimators and the data-parallel runner are imported where used: the ``neuroage``
# command names these models in its parser without paying for torch on an elastic-net predict.

__all__ = ["TORCH_MODELS", "TORCH_FORMAT", "HELD_OUT_FOLDS", "MIN_HELD_OUT", "TorchClock", "fit_torch_clock",
           "fit_command"]

#: ``--model`` keys of the torch clocks -> what they are.
TORCH_MODELS = {"vae": "Poisson VAE with an age head on its latent means (cells)",
                "mlp": "MLP on log-normalised cells"}
TORCH_FORMAT = "neuroage-torch-clock"
TORCH_FORMAT_VERSION = 1
#: The held-out donors are one of this many age-stratified folds (about 20%) ...
HELD_OUT_FOLDS = 5
#: ... and at least this many donors (the age-gap correction fits a line through them).
MIN_HELD_OUT = 3
#: Settings the command line cannot take: they would choose the model on the donors that score it.
_REFUSED = {"early_stopping_patience": "early stopping would pick the epoch on the held-out donors that score "
                                       "the clock"}
#: Rows read and predicted at a time (memory per block: these rows of the matrix, dense per batch).
_BLOCK_ROWS = 16_384
_PREDICTION_COLUMNS = ["donor_id", "cell_type", "age", "predicted_age", "age_gap", "age_gap_corrected", "correction",
                       "age_gap_scaled", "n_cells", "genes_missing"]


def _read_obs_var(path) -> tuple[pd.DataFrame, np.ndarray, int]:
    """``(obs, gene names, n_cells)`` of an .h5ad without reading its matrix; a one-line error otherwise."""
    import h5py
    from anndata.io import read_elem

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"data file {path} does not exist: pass the path of an .h5ad file")
    try:
        with h5py.File(path, "r") as handle:
            obs = read_elem(handle["obs"])
            genes = np.asarray(read_elem(handle["var"]).index).astype(str)
    except Exception as exc:  # h5py / anndata raise many types for a broken file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataValidationError(f"cannot read {path} as AnnData ({type(exc).__name__}: {first}): "
                                  "pass an .h5ad written by anndata or scanpy") from None
    return obs, genes, len(obs)


def _read_rows(path, rows):
    """Rows of the counts read from the file by position (:func:`~neuroage_utils.models.data_parallel.read_rows`)."""
    from neuroage_utils.models.data_parallel import read_rows as read

    return read(path, rows)


def _blocks(rows: np.ndarray):
    for start in range(0, len(rows), _BLOCK_ROWS):
        yield rows[start:start + _BLOCK_ROWS]


def _scan(path, rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(per-gene sums, whether every value is a count)`` over ``rows``, read block by block: one
    pass over the training cells before training, so the input a model gets is decided on all of them."""
    total, counts = None, True
    for block in _blocks(rows):
        X = _read_rows(path, block)
        if X.nnz and not np.isfinite(X.data).all():
            raise DataValidationError("the data hold NaN or infinite values: remove or impute them before fitting")
        counts = counts and is_count_matrix(X)
        part = np.asarray(X.sum(axis=0, dtype=np.float64)).ravel()
        total = part if total is None else total + part
    return total, counts


def _estimator(model: str, params: dict):
    from neuroage_utils.models.data_parallel import ESTIMATORS

    for key, why in _REFUSED.items():
        if params.get(key) is not None:
            raise DataValidationError(f"--params {key}: {why}; leave it out")
    try:
        return ESTIMATORS[model](**params)
    except TypeError as exc:  # an unknown keyword
        raise DataValidationError(f"--params for {model}: {exc}: use the arguments of "
                                  f"{ESTIMATORS[model].__name__}") from None
    except ValueError as exc:
        raise DataValidationError(f"--params for {model}: {str(exc).splitlines()[0]}") from None


def _held_out_donors(donor_age: pd.Series, seed: int) -> np.ndarray:
    """About 20% of the donors, one per age band (fold 0 of the book's age-stratified folds); at
    least :data:`MIN_HELD_OUT` (fewer folds for a small cohort)."""
    from neuroage_utils.evaluation.crossval import age_stratified_folds

    folds = max(2, min(HELD_OUT_FOLDS, len(donor_age) // MIN_HELD_OUT))
    assigned = age_stratified_folds(donor_age, folds, seed=seed)
    return np.sort(assigned.index[assigned == 0].to_numpy().astype(str))


@dataclass
class TorchClock:
    """A fitted torch age clock: the estimator (network loaded), its genes and how it was trained."""

    model: str  # "vae" or "mlp"
    estimator: object  # the fitted MLPRegressor / VAEAgeRegressor
    params: dict  # its constructor arguments (JSON)
    genes: np.ndarray
    normalisation: str  # "log1p_cp10k" (the MLP on counts), "counts" (the VAE), "as_given"
    count_share: np.ndarray  # each gene's share of the training cells' summed values
    gene_mean: np.ndarray  # each gene's mean over training cells (fills a missing gene in values as given)
    keys: dict
    training: dict

    # -- predicting ---------------------------------------------------------------------------------
    def _cell_predictions(self, aligned: sp.csr_matrix, missing: np.ndarray) -> np.ndarray:
        """Every cell's predicted age, block by block; a missing gene holds its expected value."""
        out = []
        share_missing = float(self.count_share[missing].sum())
        for block in _blocks(np.arange(aligned.shape[0])):
            X = aligned[block]
            if missing.any():
                if self.normalisation == "as_given":
                    fill = np.broadcast_to(self.gene_mean[missing], (len(block), int(missing.sum())))
                else:  # the counts the cell's library would hold there at the training composition
                    present = np.asarray(X.sum(axis=1), dtype=float)
                    fill = np.round(present * self.count_share[missing][None, :] / max(1.0 - share_missing, 1e-12))
                X = X.tolil()
                X[:, np.flatnonzero(missing)] = fill
                X = sp.csr_matrix(X)
            if self.normalisation == "log1p_cp10k":
                X = log_normalize(X)
            out.append(np.asarray(self.estimator.predict(X), dtype=float))
        return np.concatenate(out) if out else np.zeros(0)

    def predict(self, adata, donor_key: str | None = None, age_key: str | None = None,
                cell_type_key: str | None = None, control_key: str | None = None, control_value=None) -> pd.DataFrame:
        """One row per donor (the mean of its cells' predictions), with the age gaps of
        :meth:`neuroage_utils.clock.Clock.predict`. ``correction`` is ``new_controls`` with a control
        column, else ``held_out_donors`` (the line through this clock's held-out training donors).
        A torch clock has one pooled member: with ``cell_type_key`` its rows say ``cell_type == "all"``."""
        donor_key = donor_key or self.keys["donor_key"]
        age_key = age_key or self.keys["age_key"]
        obs = adata.obs
        donors, ages, controls = prediction_columns(obs, donor_key, age_key, control_key, control_value)
        if cell_type_key:
            obs_column(obs, cell_type_key, "cell-type-key")
        X = counts_matrix(adata)
        if self.normalisation != "as_given":
            require_counts(X, f"this clock ({self.model}, fitted on raw counts)")
        aligned, missing = align_genes(X, adata.var_names, self.genes, None, "the data")
        cells = pd.DataFrame({"donor_id": donors, "age": ages,
                              "predicted": self._cell_predictions(sp.csr_matrix(aligned), missing)})
        per_donor = cells.groupby("donor_id", sort=True).agg(age=("age", "first"), predicted_age=("predicted", "mean"),
                                                             n_cells=("age", "size")).reset_index()
        table = per_donor.assign(cell_type="all", genes_missing=float(missing.mean()))
        if controls is not None:
            ref = table[table["donor_id"].isin(set(donors[controls]))]
            trend = fit_age_trend(ref["age"], ref["predicted_age"], "new_controls")
        else:
            held = pd.DataFrame(self.training["held_out"]["predictions"])
            trend = fit_age_trend(held["age"], held["predicted"], "held_out_donors")
        table = add_age_gaps(table, trend)[_PREDICTION_COLUMNS]
        return table if cell_type_key else table.drop(columns="cell_type")

    # -- saving and loading -------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write the clock directory (module docstring): whole or not at all; an existing clock there
        is replaced, any other non-empty directory is an error."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not (directory / "clock.json").exists():
            raise DataValidationError(f"{directory} exists and is not a clock directory: pass a new or empty --out")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self._write(tmp)
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    def _write(self, out: Path) -> None:
        state = self.estimator.module_.state_dict()
        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in state.items()}
        arrays["gene.count_share"] = np.asarray(self.count_share, np.float64)
        arrays["gene.mean"] = np.asarray(self.gene_mean, np.float64)
        with open(out / "parameters.npz", "wb") as fh:
            np.savez(fh, **arrays)
        atomic_write_text(out / "genes.json", json.dumps([str(g) for g in self.genes]))
        est = self.estimator
        doc = {
            "format": TORCH_FORMAT, "format_version": TORCH_FORMAT_VERSION, "model": self.model,
            "estimator": type(est).__name__, "params": self.params, "n_features": int(est.n_features_),
            "age_mean": float(est.age_mean_), "age_std": float(est.age_std_),
            "encoder_input_max": getattr(est, "encoder_input_max_", None),
            "normalisation": self.normalisation, "keys": self.keys, "n_genes": int(len(self.genes)),
            "files": {name: sha256_file(out / name) for name in ("parameters.npz", "genes.json")},
            "package_version": __version__,
        }
        atomic_write_text(out / "clock.json", json.dumps(doc, indent=1))
        atomic_write_text(out / "training.json", json.dumps(self.training, indent=1))
        atomic_write_text(out / "MODEL_CARD.md", torch_model_card(self))

    @classmethod
    def load(cls, directory, doc: dict | None = None) -> "TorchClock":
        """Rebuild the network from a clock directory (arrays loaded with ``allow_pickle=False``)."""
        import torch

        from neuroage_utils.models.data_parallel import ESTIMATORS

        directory = Path(directory)
        doc = doc if doc is not None else json.loads((directory / "clock.json").read_text())
        if doc.get("format") != TORCH_FORMAT or doc.get("format_version") != TORCH_FORMAT_VERSION:
            raise DataValidationError(f"{directory} is not a {TORCH_FORMAT} v{TORCH_FORMAT_VERSION} clock: refit it "
                                      "with this version")
        for name, digest in doc["files"].items():
            if not (directory / name).exists() or sha256_file(directory / name) != digest:
                raise DataValidationError(f"{directory / name} is missing or was changed after the clock was "
                                          "saved: refit the clock or restore the file")
        with np.load(directory / "parameters.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        params = {**doc["params"], "device": "cpu", "progress": False}  # prediction in this process
        est = ESTIMATORS[doc["model"]](**params)
        est.n_features_ = int(doc["n_features"])
        est.age_mean_, est.age_std_ = float(doc["age_mean"]), float(doc["age_std"])
        est.device_, est.amp_ = torch.device("cpu"), False
        if doc.get("encoder_input_max") is not None:
            est.encoder_input_max_ = float(doc["encoder_input_max"])
        module = est.blank_module(est.n_features_)
        module.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")})
        module.eval()
        est.module_ = module
        genes = np.asarray(json.loads((directory / "genes.json").read_text()), dtype=str)
        training = json.loads((directory / "training.json").read_text())
        return cls(doc["model"], est, doc["params"], genes, doc["normalisation"], arrays["gene.count_share"],
                   arrays["gene.mean"], doc["keys"], training)


def _finite(records: list[dict]) -> list[dict]:
    """Per-epoch records with NaN / inf as null (JSON has no NaN)."""
    return [{k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in r.items()} for r in records]


def fit_torch_clock(data, model: str, *, nproc: int = 1, params: dict | None = None, donor_key: str = "donor_id",
                    age_key: str = "age", control_key: str | None = None, control_value=None, device="auto",
                    seed: int = 0, nnodes: int = 1, node_rank: int = 0, master: str | None = None,
                    work_dir=None, timeout: float | None = None) -> TorchClock | None:
    """Fit a torch clock (see the module docstring) on the cells of the .h5ad ``data``.

    ``params``: arguments of the estimator (``MLPRegressor`` / ``VAEAgeRegressor``) over its defaults.
    ``nproc > 1`` or ``nnodes > 1`` trains data-parallel (``torchrun``; NCCL on GPUs, gloo on CPUs);
    every machine of a multi-machine run calls this with the same arguments and its ``node_rank``,
    and only node 0 gets the clock (the others get None).
    """
    import torch

    from neuroage_utils.models.data_parallel import estimator_params, fit_distributed
    from neuroage_utils.train.device import device_label, resolve_device

    if model not in TORCH_MODELS:
        raise DataValidationError(f"unknown torch model {model!r}: use one of {', '.join(TORCH_MODELS)}")
    nproc, nnodes = int(nproc), int(nnodes)
    if nproc < 1 or nnodes < 1 or not 0 <= int(node_rank) < nnodes:
        raise DataValidationError(f"--nproc {nproc}, --nnodes {nnodes}, --node-rank {node_rank}: need nproc >= 1, "
                                  "nnodes >= 1 and 0 <= node-rank < nnodes")
    if nnodes > 1 and not master:
        raise DataValidationError("several machines need node 0's address: pass --master host:port")
    distributed = nproc > 1 or nnodes > 1
    torch_device = resolve_device(device)  # a one-line error when CUDA is asked for and absent
    if distributed and torch_device.type == "cuda" and nproc > torch.cuda.device_count():
        raise DataValidationError(f"--nproc {nproc} with --device {device} needs a GPU per process but this machine "
                                  f"has {torch.cuda.device_count()}: pass --nproc {torch.cuda.device_count()}")
    obs, genes, n_cells = _read_obs_var(data)
    if len(set(genes)) != len(genes):
        raise DataValidationError("the data have duplicated gene names: make var_names unique "
                                  "(adata.var_names_make_unique()) before fitting")
    validate_obs(obs, donor_key, age_key, min_donors=MIN_DONORS)
    donors = obs[donor_key].astype(str).to_numpy()
    ages = pd.to_numeric(obs[age_key]).to_numpy(dtype=float)
    keep = control_mask(obs, control_key, control_value)
    if keep is not None:
        mixed = sorted(set(donors[keep]) & set(donors[~keep]))
        if mixed:
            raise DataValidationError(f"donor {mixed[0]} has control and non-control cells in obs['{control_key}']: "
                                      "a torch clock trains on whole donors; mark donors, not cells")
        validate_obs(obs[keep], donor_key, age_key, min_donors=MIN_DONORS)
    else:
        keep = np.ones(n_cells, bool)
    donor_age = donor_ages(ages[keep], donors[keep])
    held = _held_out_donors(donor_age, seed)
    train = np.sort(np.setdiff1d(donor_age.index.to_numpy().astype(str), held))
    train_rows = np.flatnonzero(np.isin(donors, train))
    held_rows = np.flatnonzero(np.isin(donors, held))
    estimator = _estimator(model, {"device": str(torch_device) if not distributed else str(device), "seed": int(seed),
                                   **(params or {})})
    params_used = estimator_params(estimator)
    totals, is_counts = _scan(data, train_rows)
    if model == "vae" and not is_counts:
        raise DataValidationError("the VAE clock needs raw UMI counts but the data are not counts: pass counts in X "
                                  "or layers['counts'], or use --model mlp")
    normalisation = ("log1p_cp10k" if model == "mlp" else "counts") if is_counts else "as_given"
    if distributed:
        work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="neuroage-clock-"))
        tic = time.perf_counter()
        try:
            fitted, run = fit_distributed(estimator, data, nproc, donor_key=donor_key, age_key=age_key,
                                          train_donors=train, out_dir=work, timeout=timeout, nnodes=nnodes,
                                          node_rank=node_rank, master=master, log_normalise=normalisation == "log1p_cp10k",
                                          backend="gloo" if torch_device.type == "cpu" else None)
        finally:
            if work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
        if fitted is None:  # another machine of a multi-machine run: node 0 holds the model
            return None
        record = {"world_size": int(run["world_size"]), "nnodes": nnodes, "nproc_per_node": nproc,
                  "backend": run["backend"], "device": device_label(torch.device(run["device"])), "precision": "bf16 autocast" if run["amp"]
                  else "float32", "epochs": int(run["epochs"]), "fit_seconds": float(run["fit_seconds"]),
                  "launch_seconds": float(time.perf_counter() - tic),
                  "cells_per_second_per_rank": float(run["cells_per_second_per_rank"]),
                  "cells_per_rank": run["cells_per_rank"], "history": _finite(run["history"])}
    else:
        X = _read_rows(data, train_rows)
        if normalisation == "log1p_cp10k":
            X = log_normalize(X)
        tic = time.perf_counter()
        fitted = estimator.fit(X, ages[train_rows], donors=donors[train_rows])
        seconds = time.perf_counter() - tic
        epochs = len(fitted.history_)
        record = {"world_size": 1, "nnodes": 1, "nproc_per_node": 1, "backend": None,
                  "device": device_label(fitted.device_), "precision": "bf16 autocast" if fitted.amp_ else "float32",
                  "epochs": epochs, "fit_seconds": float(seconds), "launch_seconds": float(seconds),
                  "cells_per_second_per_rank": float(len(train_rows) * epochs / seconds),
                  "cells_per_rank": [int(len(train_rows))], "history": _finite(fitted.history_.to_dict("records"))}
        del X
    if distributed and torch_device.type == "cuda":  # the network came back on the CPU: score on the GPU
        fitted.module_, fitted.device_ = fitted.module_.to(torch_device), torch_device
    fitted.module_.eval()
    clock = TorchClock(model, fitted, params_used, genes, normalisation,
                       count_share=totals / totals.sum() if totals.sum() > 0 else np.zeros_like(totals),
                       gene_mean=totals / max(len(train_rows), 1),
                       keys={"donor_key": donor_key, "age_key": age_key, "cell_type_key": None,
                             "control_key": control_key,
                             "control_value": None if control_value is None else str(control_value)},
                       training={})
    pred = np.concatenate([clock._cell_predictions(_read_rows(data, block), np.zeros(len(genes), bool))
                           for block in _blocks(held_rows)])
    table = donor_table(pred, donors[held_rows], ages[held_rows])
    metrics = donor_metrics(table)
    clock.training = {
        "model": model, "estimator": type(fitted).__name__, "normalisation": normalisation,
        "error_estimate": "held_out_donors",
        "n_donors": int(len(donor_age)), "n_train_donors": int(len(train)), "n_held_out_donors": int(len(held)),
        "n_cells": int(keep.sum()), "n_train_cells": int(len(train_rows)), "n_genes": int(len(genes)),
        "age_range": [float(donor_age.min()), float(donor_age.max())], "age_mean": float(donor_age.mean()),
        "train_age_mean": float(donor_age.loc[train].mean()),
        "train_donor_ids": [str(d) for d in train], "held_out_donor_ids": [str(d) for d in held],
        "fitted_on": f"cells with obs['{control_key}'] == '{control_value}'" if control_key else "every cell",
        "held_out": {"mae": metrics["mae"], "mae_ci95": bootstrap_mae_ci(table, seed=seed),
                     "r": None if np.isnan(metrics["r"]) else metrics["r"], "n_donors": metrics["n_donors"],
                     "predictions": [{"donor_id": str(r.donor_id), "age": float(r.age), "predicted": float(r.predicted),
                                      "n_cells": int(r.n_cells)} for r in table.itertuples(index=False)]},
        **record,
        "data_sha256": file_sha256(data), "data_path": str(data), "package": "neuroage-utils",
        "package_version": __version__,
        "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params_used, "seed": int(seed),
    }
    return clock


def torch_model_card(clock: TorchClock) -> str:
    """Markdown describing a torch clock: what it is, how it was trained and scored, how to use it."""
    t = clock.training
    h = t["held_out"]
    r = "–" if h.get("r") is None else f"{h['r']:.2f}"
    keys = clock.keys
    return "\n".join([
        f"# Age clock: `{clock.model}` ({t['estimator']})",
        "",
        f"A {TORCH_MODELS[clock.model]} fitted with NeuroAge {t['package_version']} on {t['fitted_at']}. "
        "A donor's predicted age is the mean of its cells' predictions.",
        "",
        "## Training",
        "",
        f"- donors: {t['n_donors']} ({t['fitted_on']}): {t['n_train_donors']} trained on "
        f"({t['n_train_cells']:,} cells), {t['n_held_out_donors']} held out; genes: {t['n_genes']:,}",
        f"- ages: {t['age_range'][0]:g}–{t['age_range'][1]:g} years (mean {t['age_mean']:.1f})",
        f"- input: {clock.normalisation}; data SHA-256: `{t['data_sha256']}`",
        f"- {t['epochs']} epochs; world size {t['world_size']} ({t['nnodes']} machine(s), backend "
        f"{t['backend'] or 'none: one process'}), device {t['device']}, {t['precision']}; "
        f"{t['fit_seconds']:.1f} s of training, {t['cells_per_second_per_rank']:,.0f} cells/s per process",
        "",
        "## How good it is",
        "",
        f"Scored on {h['n_donors']} held-out donors (an age-stratified ~20% of the donors, at least "
        f"{MIN_HELD_OUT}, never seen in training): MAE **{h['mae']:.2f} years** (95% bootstrap interval over donors "
        f"{h['mae_ci95'][0]:.1f}–{h['mae_ci95'][1]:.1f}), r {r}. This clock **is the model trained on the "
        f"{t['n_train_donors']} training donors**; it was not refitted on all donors, so the held-out error is the "
        "error of this very model (few donors: read the interval, not the point).",
        "",
        "## Using it",
        "",
        "```bash",
        f"neuroage predict --clock THIS_DIRECTORY --data new.h5ad --out predictions.csv --donor-key {keys['donor_key']} "
        f"--age-key {keys['age_key']}",
        "```",
        "",
        "- Genes are matched by name; a missing gene gets the counts a cell of its library size would hold at the "
        "training composition (the training mean for values that are not counts), never zero; above 20% missing a "
        "warning is printed.",
        "- `age_gap_corrected` removes the clock's pull towards the training mean age with a line of predicted on "
        "age fitted on the new data's controls (`--control-key`), else on this clock's held-out donors "
        "(`correction` = `held_out_donors`).",
        f"- Valid for data like the training data (tissue, cell types, assay; donors aged "
        f"{t['age_range'][0]:g}–{t['age_range'][1]:g}).",
        "",
        "## Files",
        "",
        "`clock.json` (estimator settings, age scaling, checksums), `genes.json`, `parameters.npz` (the network's "
        "tensors as arrays; loads with `allow_pickle=False`), `training.json` (this summary, the loss per epoch and "
        "every held-out donor's prediction). No file is a pickle: loading the clock runs no code from it.",
        "",
    ])


def fit_command(args) -> int:
    """``neuroage fit --model vae|mlp``: fit, save and print the held-out error (the CLI's torch branch)."""
    if getattr(args, "cell_type_key", None):
        raise DataValidationError("per-cell-type clocks are elastic nets only: leave out --cell-type-key with "
                                  f"--model {args.model}")
    try:
        params = json.loads(args.params or "{}")
    except ValueError as exc:
        raise DataValidationError(f"--params is not valid JSON ({exc}): pass e.g. '{{\"epochs\": 20}}'") from None
    if not isinstance(params, dict):
        raise DataValidationError("--params must be a JSON object, e.g. '{\"epochs\": 20}'")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "clock.json").exists():  # refuse before training
        raise DataValidationError(f"{out} exists and is not a clock directory: pass a new or empty --out")
    clock = fit_torch_clock(args.data, args.model, nproc=args.nproc, params=params, donor_key=args.donor_key,
                            age_key=args.age_key, control_key=args.control_key, control_value=args.control_value,
                            device=args.device, seed=args.seed, nnodes=args.nnodes, node_rank=args.node_rank,
                            master=args.master)
    if clock is None:
        print(f"node {args.node_rank} done; node 0 writes the clock")
        return 0
    out = clock.save(args.out)
    t, h = clock.training, clock.training["held_out"]
    processes = f"{t['world_size']} process" + ("es" if t["world_size"] > 1 else "")
    print(f"{args.model}: trained on {t['n_train_donors']} donors ({processes}, {t['device']}, "
          f"{t['cells_per_second_per_rank']:,.0f} cells/s per process); held-out MAE {h['mae']:.2f} years "
          f"(95% CI {h['mae_ci95'][0]:.2f}-{h['mae_ci95'][1]:.2f}) on {h['n_donors']} donors", file=sys.stdout)
    print(f"clock written to {out}")
    return 0
