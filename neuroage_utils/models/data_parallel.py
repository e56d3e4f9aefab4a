"""Fit a torch age model (MLP, VAE) data-parallel over N processes: the user entry and the rank worker.

The mechanics (shards of blocks, DDP, synchronised BatchNorm, reduced monitors, ``torchrun`` in a
subprocess) are in :mod:`neuroage_utils.train.distributed`; this module builds the estimator on each
rank, gives it the rows the rank owns, read from the .h5ad without loading the rest, and brings the
trained network back into the calling process:

.. code-block:: python

    from neuroage_utils.models.data_parallel import fit_distributed
    from neuroage_utils.models.vae import VAEAgeRegressor

    model, run = fit_distributed(VAEAgeRegressor(likelihood="poisson", epochs=20), "cohort.h5ad", nproc=2,
                                 donor_key="ID", age_key="Age", validation_donors=["CON5", "CON9"])
    run["world_size"], run["cells_per_second_per_rank"]

or from a shell (``python -m neuroage_utils.models.data_parallel --help``). The fitted model is an
ordinary estimator (``predict``, ``latent``); its network comes back as a ``state_dict`` (no pickle).
Several machines: the same call on each with ``nnodes``, ``node_rank`` and ``master``
(``torchrun --nnodes``; see :func:`fit_distributed`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from neuroage_utils.data.cohort import validate_obs
from neuroage_utils.data.features import log_normalize
from neuroage_utils.errors import DataValidationError
from neuroage_utils.models.mlp import MLPRegressor
from neuroage_utils.models.vae import VAEAgeRegressor
from neuroage_utils.results import atomic_write
from neuroage_utils.train import distributed as ddp
from neuroage_utils.train.device import native_bf16

__all__ = ["ESTIMATORS", "estimator_params", "fit_distributed", "fit_from_cli", "write_h5ad", "rank_fit", "read_rows", "main"]

#: Estimators a data-parallel run can train, by name (the spec and the command line use the name).
ESTIMATORS = {"mlp": MLPRegressor, "vae": VAEAgeRegressor}
#: Constructor argument -> attribute, where an estimator stores an argument under another name.
_ATTRIBUTE = {"latent": "latent_dim"}
MODEL_FILE = "model.pt"


def estimator_params(estimator) -> dict:
    """The constructor arguments that rebuild ``estimator`` (JSON: a callable schedule cannot travel)."""
    params = {}
    for name, arg in inspect.signature(type(estimator).__init__).parameters.items():
        if name == "self":
            continue
        value = getattr(estimator, _ATTRIBUTE.get(name, name), arg.default)
        if callable(value):
            raise ValueError(f"{name}={value!r} is a function: a data-parallel run needs settings that are data "
                             "(e.g. kl_schedule='cyclical' or a number)")
        params[name] = list(value) if isinstance(value, tuple) else value
    return params


def _name_of(estimator) -> str:
    for name, cls in ESTIMATORS.items():
        if type(estimator) is cls:
            return name
    raise ValueError(f"{type(estimator).__name__} cannot train data-parallel: use one of "
                     f"{', '.join(c.__name__ for c in ESTIMATORS.values())}")


def write_h5ad(path, X, ages, donors, donor_key: str = "donor_id", age_key: str = "age") -> Path:
    """A matrix held in memory, as the .h5ad the ranks read their rows from."""
    import anndata as ad
    import scipy.sparse as sp

    obs = pd.DataFrame({donor_key: np.asarray(donors).astype(str), age_key: np.asarray(ages, dtype=float)})
    obs.index = obs.index.astype(str)
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    ad.AnnData(X=X, obs=obs).write_h5ad(path)
    return Path(path)


def _read_obs(path, donor_key: str, age_key: str) -> pd.DataFrame:
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        return read_elem(handle["obs"])


def read_rows(path, rows: np.ndarray):
    """Rows ``rows`` (ascending) of the counts (``layers['counts']`` when present, else ``X``) as CSR
    float32, read from the file without loading the rest of the matrix."""
    import h5py
    import scipy.sparse as sp
    from anndata.io import sparse_dataset

    rows = np.asarray(rows, dtype=np.int64)
    with h5py.File(path, "r") as handle:
        node = handle["layers/counts"] if "layers" in handle and "counts" in handle["layers"] else handle["X"]
        if isinstance(node, h5py.Group):
            block = sparse_dataset(node)[rows]
        else:
            block = node[rows] if len(rows) else np.zeros((0, node.shape[1]))
        return sp.csr_matrix(block, dtype=np.float32)


def _positions(obs: pd.DataFrame, donor_key: str, donors) -> np.ndarray:
    if donors is None:
        return np.arange(len(obs))
    wanted = {str(d) for d in donors}
    missing = wanted - set(obs[donor_key].astype(str))
    if missing:
        raise DataValidationError(f"donor(s) {', '.join(sorted(missing)[:5])} are not in obs['{donor_key}']: "
                                  "name donors of this file")
    return np.flatnonzero(obs[donor_key].astype(str).isin(wanted).to_numpy())


def fit_distributed(estimator, data, nproc: int = 2, *, donor_key: str = "donor_id", age_key: str = "age",
                    train_donors=None, validation_donors=None, monitors: dict | None = None,
                    blocks: int | None = None, out_dir=None, timeout: float | None = None,
                    threads_per_rank: int | None = None, nnodes: int = 1, node_rank: int = 0, master: str | None = None,
                    log_normalise: bool = False, backend: str | None = None):
    """Train ``estimator`` (an unfitted :class:`MLPRegressor` or :class:`VAEAgeRegressor`) on the cells of
    ``data`` over ``nproc`` processes started by ``torchrun``; return ``(fitted estimator, run)``.

    ``data``: an .h5ad path (raw counts in ``X`` or ``layers['counts']``, donor and age columns in
    ``obs``) or ``(X, ages, donors)`` held in memory (written to a temporary .h5ad first). Each rank
    reads only its blocks of the training cells (``train_donors``' cells; default all). The global
    batch is ``estimator.batch_size`` whatever ``nproc``; ``blocks`` (default
    :data:`~neuroage_utils.train.distributed.DEFAULT_BLOCKS`, at least ``nproc``) fixes the global
    batches, so runs on any number of ranks up to ``blocks`` see the same ones.
    ``validation_donors`` / ``monitors`` (name -> donor ids): donor-level MAEs per epoch, reduced
    over ranks, in ``estimator.history_``.

    ``run`` holds ``world_size``, ``backend``, ``fit_seconds`` (training, slowest rank),
    ``fit_cpu_seconds_per_rank`` (processor time of each rank's training: what a busy machine inflates least),
    ``cells_per_second_per_rank`` (training cells x epochs / fit_seconds / world_size),
    ``cells_per_rank``, ``launch_seconds`` and the ``history`` records; ``estimator.distributed_`` is
    ``run`` without the history.

    Several machines (``torchrun --nnodes``): call this on every machine with the same arguments, the
    data at the same path, ``nnodes``, the machine's ``node_rank`` and node 0's ``master`` address
    (``host:port``); ``nproc`` is per machine and node 0 gets the fitted model (the others get
    ``(None, {"node_rank": k})``).

    ``log_normalise``: each rank log-normalises the rows it reads (log1p of counts per 10^4, as
    :func:`~neuroage_utils.data.features.log_normalize`; the MLP's input in the book). ``backend``:
    ``"gloo"`` keeps the ranks on the CPU on a machine with GPUs (default: NCCL when there is a GPU).
    """
    name = _name_of(estimator)
    if estimator.amp and not torch.cuda.is_available():
        # decide bf16 here, once: the ranks inherit the decision (train.device.BF16_ENV) instead of
        # each timing its own product on a busy machine and possibly deciding otherwise
        native_bf16(torch.device("cpu"))
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="neuroage-ddp-"))
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(data, (str, Path)):
        X, ages, donors = data
        data = write_h5ad(out / "cells.h5ad", X, ages, donors, donor_key, age_key)
    obs = _read_obs(data, donor_key, age_key)
    validate_obs(obs, donor_key, age_key, min_donors=1)
    sets = {"train": _positions(obs, donor_key, train_donors)}
    if validation_donors is not None:
        sets["val"] = _positions(obs, donor_key, validation_donors)
    for key, donors in (monitors or {}).items():
        sets[f"monitor:{key}"] = _positions(obs, donor_key, donors)
    paths = {}
    for key, rows in sets.items():
        paths[key] = str(out / f"rows-{key.replace(':', '-')}.npy")
        atomic_write(paths[key], lambda fh, rows=rows: np.save(fh, rows.astype(np.int64)), binary=True)
    spec = {"estimator": name, "params": estimator_params(estimator), "data": str(Path(data).resolve()),
            "donor_key": donor_key, "age_key": age_key, "rows": paths,
            "blocks": int(blocks) if blocks else max(ddp.DEFAULT_BLOCKS, int(nproc)),
            "log_normalise": bool(log_normalise)}
    if backend is not None:
        spec["backend"] = str(backend)
    run = ddp.launch(nproc, "neuroage_utils.models.data_parallel:rank_fit", spec, out_dir=out, timeout=timeout,
                     threads_per_rank=threads_per_rank, nnodes=nnodes, node_rank=node_rank, master=master)
    if int(node_rank) != 0:
        return None, run
    fitted = _load_fitted(estimator, run, out)
    return fitted, run


def _load_fitted(estimator, run: dict, out: Path):
    """The estimator with the network rank 0 saved and the fitted attributes it reported."""
    fitted = estimator
    fitted.n_features_ = int(run["n_features"])
    fitted.age_mean_, fitted.age_std_ = float(run["age_mean"]), float(run["age_std"])
    fitted.device_ = torch.device("cpu")  # prediction in the calling process
    fitted.amp_ = bool(run["amp"])
    if run.get("encoder_input_max") is not None:
        fitted.encoder_input_max_ = float(run["encoder_input_max"])
    module = fitted.blank_module(fitted.n_features_)
    module.load_state_dict(torch.load(out / MODEL_FILE, map_location="cpu", weights_only=True))
    module.eval()
    fitted.module_ = module
    fitted.history_ = pd.DataFrame(run["history"])
    fitted.distributed_ = {k: v for k, v in run.items() if k != "history"}
    return fitted


def _held_out_part(spec: dict, key: str, context: dict, obs, donors, ages):
    rows = np.load(spec["rows"][key])
    layout = ddp.BlockLayout(len(rows), min(int(spec["blocks"]), len(rows)))
    shard = ddp.Shard(layout, context["rank"], context["world_size"])
    local = rows[shard.rows()]
    return _features(spec, read_rows(spec["data"], local)), ages[local], donors[local], shard


def _features(spec: dict, X):
    """The rows as the estimator reads them: log-normalised when the spec says so (row by row, so
    a rank needs no other rank's cells)."""
    return log_normalize(X) if spec.get("log_normalise") else X


def rank_fit(spec: dict, context: dict) -> dict | None:
    """One rank's part (called by :func:`neuroage_utils.train.distributed.main` under torchrun): read
    its rows, fit the estimator on its shard, and (rank 0) save the network; returns the run record."""
    obs = _read_obs(spec["data"], spec["donor_key"], spec["age_key"])
    donors = obs[spec["donor_key"]].astype(str).to_numpy()
    ages = pd.to_numeric(obs[spec["age_key"]]).to_numpy(dtype=float)
    params = dict(spec["params"])
    if str(params.get("device", "auto")).startswith(("auto", "cuda")):
        params["device"] = context["device"]
    params["progress"] = bool(params.get("progress", False)) and context["rank"] == 0
    estimator = ESTIMATORS[spec["estimator"]](**params)
    train_rows = np.load(spec["rows"]["train"])
    shard = ddp.Shard(ddp.BlockLayout(len(train_rows), int(spec["blocks"])), context["rank"], context["world_size"])
    local = train_rows[shard.rows()]
    tic = time.perf_counter()
    X = _features(spec, read_rows(spec["data"], local))
    read_seconds = time.perf_counter() - tic
    held = {key: _held_out_part(spec, key, context, obs, donors, ages) for key in spec["rows"] if key != "train"}
    validation = held.pop("val", None)
    monitors = {key.split(":", 1)[1]: value for key, value in held.items()}
    fit_kwargs = {"monitors": monitors} if monitors else {}
    ddp.all_reduce_sum(0.0)  # start the clock together
    tic, cpu = time.perf_counter(), time.process_time()
    estimator.fit(X, ages[local], donors=donors[local], validation=validation, shard=shard, **fit_kwargs)
    fit_seconds = float(max(ddp.all_gather_objects(time.perf_counter() - tic)))
    cpu_seconds = [float(c) for c in ddp.all_gather_objects(time.process_time() - cpu)]
    cells = [int(n) for n in ddp.all_gather_objects(int(X.shape[0]))]
    if context["rank"] != 0:
        return None
    atomic_write(Path(spec["out_dir"]) / MODEL_FILE, lambda fh: torch.save(estimator.module_.state_dict(), fh),
                 binary=True)
    epochs = len(estimator.history_)
    return {
        "estimator": spec["estimator"], "n_cells": int(len(train_rows)), "cells_per_rank": cells,
        "n_features": int(X.shape[1]), "epochs": epochs, "batch_size": int(estimator.batch_size),
        "blocks": int(spec["blocks"]), "read_seconds": read_seconds, "fit_seconds": fit_seconds,
        "fit_cpu_seconds_per_rank": cpu_seconds,
        "cells_per_second_per_rank": len(train_rows) * epochs / fit_seconds / context["world_size"],
        "threads_per_rank": int(spec.get("threads_per_rank") or 0), "device": context["device"],
        "age_mean": estimator.age_mean_, "age_std": estimator.age_std_, "amp": bool(estimator.amp_),
        "encoder_input_max": getattr(estimator, "encoder_input_max_", None),
        "history": estimator.history_.to_dict("records"),
    }


def fit_from_cli(data, model: str = "vae", nproc: int = 2, params: dict | None = None, *,
                 donor_key: str = "donor_id", age_key: str = "age", out_dir=None, validation_donors=None,
                 blocks: int | None = None, nnodes: int = 1, node_rank: int = 0, master: str | None = None) -> dict:
    """What a command line calls for ``--nproc N`` (e.g. ``neuroage fit --model vae --nproc 2``): the model
    by name, its settings as a dict; writes ``out_dir/model.pt`` and ``out_dir/result.json`` (with
    ``world_size``) and returns the run record. ``nnodes``, ``node_rank``, ``master``: several machines
    (see :func:`fit_distributed`)."""
    if model not in ESTIMATORS:
        raise DataValidationError(f"unknown model {model!r} for a data-parallel fit: use one of {', '.join(ESTIMATORS)}")
    estimator = ESTIMATORS[model](**(params or {}))
    _, run = fit_distributed(estimator, data, nproc, donor_key=donor_key, age_key=age_key, out_dir=out_dir,
                             validation_donors=validation_donors, blocks=blocks, nnodes=nnodes,
                             node_rank=node_rank, master=master)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuroage_utils.models.data_parallel",
                                     description="Train a torch age model data-parallel over N processes (torchrun).")
    parser.add_argument("--data", required=True, help=".h5ad with raw counts and donor / age columns in obs")
    parser.add_argument("--model", choices=sorted(ESTIMATORS), default="vae")
    parser.add_argument("--nproc", type=int, default=2, help="processes (ranks) on this machine")
    parser.add_argument("--params", default="{}", help='estimator settings as JSON, e.g. \'{"epochs": 20}\'')
    parser.add_argument("--donor-key", default="donor_id")
    parser.add_argument("--age-key", default="age")
    parser.add_argument("--validation-donors", nargs="*", default=None)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--out", required=True, help="folder for model.pt and result.json")
    parser.add_argument("--nnodes", type=int, default=1, help="machines (run this command on each)")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's number, 0 .. nnodes - 1")
    parser.add_argument("--master", default=None, help="node 0's host:port (several machines)")
    args = parser.parse_args(argv)
    try:
        run = fit_from_cli(args.data, args.model, args.nproc, json.loads(args.params), donor_key=args.donor_key,
                           age_key=args.age_key, out_dir=args.out, validation_donors=args.validation_donors,
                           blocks=args.blocks, nnodes=args.nnodes, node_rank=args.node_rank, master=args.master)
    except DataValidationError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.node_rank != 0:
        print(f"node {args.node_rank} done; node 0 holds the model")
        return 0
    print(f"world size {run['world_size']}: {run['epochs']} epochs in {run['fit_seconds']:.1f} s, "
          f"{run['cells_per_second_per_rank']:.0f} cells/s per rank; model in {Path(args.out) / MODEL_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
