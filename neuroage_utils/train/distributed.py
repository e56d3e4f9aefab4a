"""Data-parallel training on ``torch.distributed``: process groups, rank shards, synchronised
BatchNorm, reduced monitors, and ``torchrun`` launched as a subprocess.

How a run is laid out (world-size invariant by construction):

- the cells are cut into ``blocks`` contiguous blocks of rows (:class:`BlockLayout`, default
  :data:`DEFAULT_BLOCKS`); rank ``r`` of ``W`` owns blocks ``r, r + W, r + 2W, ...`` and reads only
  their rows;
- an epoch has ``ceil(n_cells / batch_size)`` steps. Every block is shuffled by its own generator
  (seeded from one draw of the run's batch-order generator and the block number) and cut into that
  many near-equal chunks; the *global* batch of step ``i`` is the union over all blocks of chunk
  ``i``, and a rank's local batch the union over the blocks it owns. So the global batches do not
  depend on how many ranks share the blocks (1, 2, 4, 8 ranks with 8 blocks: the same batches);
- every rank computes its loss as a mean over its local rows, scaled by
  ``n_local * world / n_global`` so that DistributedDataParallel's averaged gradient is the gradient
  of the mean over the global batch, whatever the split;
- BatchNorm layers use the statistics of the global batch (torch's ``SyncBatchNorm`` on CUDA, the
  float64 all-reduce of :class:`_SyncBatchNorm1d` on CPUs, where torch's has no kernel);
- epoch losses, validation losses and donor-level MAEs are sums reduced across ranks, so every rank
  sees the same numbers and takes the same early-stopping decision.

A 2-rank run therefore gives the parameters of a 1-rank run on the same global batches up to
floating-point summation order (``tests/test_distributed.py``: 1e-5 after 50 steps). Stochastic
layers (dropout, the VAE's sampling) draw from a per-rank stream, so with them the runs agree in
distribution, not bit for bit.

Processes are started by ``torchrun`` (``python -m torch.distributed.run``) in a subprocess,
never inside a notebook kernel, where DDP fails: :func:`launch` writes a JSON spec, runs
``torchrun ... -m neuroage_utils.train.distributed SPEC``, and reads the result rank 0 wrote
atomically. The rank entry imports the function named in the spec (``"module:function"``), so this
module knows no model. Several machines: run :func:`torchrun_command` with ``nnodes``/``node_rank``/
``master`` on each of them.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from neuroage_utils.metrics import donor_metrics
from neuroage_utils.results import atomic_write_text
from neuroage_utils.train.batches import CellBatches, merge_moments, partial_moments

__all__ = ["DEFAULT_BLOCKS", "BlockLayout", "Shard", "ShardedBatches", "init", "teardown", "is_distributed", "rank",
           "world_size", "all_reduce_sum", "all_gather_objects", "sync_batchnorm", "plain_batchnorm", "wrap_ddp",
           "rank_seed", "donor_mae", "sharded_transformed_stats", "column_sums", "torchrun_command", "launch",
           "main"]

#: Blocks the cells are cut into when the caller names none: runs on 1, 2, 4 or 8 ranks see the same
#: global batches. More ranks than blocks is an error (raise ``blocks``).
DEFAULT_BLOCKS = 8
#: The file rank 0 writes its result to, in the run's output folder.
RESULT_FILE = "result.json"

_STATE: dict = {}


# --------------------------------------------------------------------------------------------------
# Process groups
# --------------------------------------------------------------------------------------------------


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init(backend: str | None = None) -> dict:
    """Join the process group ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ... in the
    environment): NCCL when the process has a GPU, gloo otherwise. Returns rank, world size, backend,
    device. A second group carries BatchNorm statistics, so its collectives never interleave with
    DDP's gradient buckets (gloo runs each group's collectives in the order they are issued)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("not started by torchrun (no RANK / WORLD_SIZE): use launch() or torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    if not is_distributed():
        dist.init_process_group(backend=backend)
    _STATE["bn_group"] = dist.new_group(backend=backend)
    _STATE["backend"] = backend
    device = f"cuda:{local}" if use_cuda else "cpu"
    return {"rank": rank(), "world_size": world_size(), "backend": backend, "device": device, "local_rank": local}


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()
    _STATE.clear()


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _STATE.get("backend") == "nccl" else torch.device("cpu")


def all_reduce_sum(values) -> np.ndarray:
    """Element-wise float64 sum over ranks of a number or array (the values themselves when not distributed)."""
    array = np.asarray(values, dtype=np.float64)
    if not is_distributed():
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array).reshape(-1).copy()).to(_reduce_device())
    dist.all_reduce(tensor)
    return tensor.cpu().numpy().reshape(array.shape)


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, epoch: int) -> int:
    """The torch seed of one rank's epoch (dropout, sampling): distinct per rank and epoch, and
    re-derivable, so a resumed run draws what an uninterrupted one would."""
    return (int(seed) * 1_000_003 + rank() * 7_919 + int(epoch)) % (2**63 - 1)


# --------------------------------------------------------------------------------------------------
# Shards of cells and the global batches
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockLayout:
    """``n_cells`` rows cut into ``blocks`` contiguous blocks; rank ``r`` of ``world`` owns blocks
    ``k`` with ``k % world == r``."""

    n_cells: int
    blocks: int = DEFAULT_BLOCKS

    def __post_init__(self):
        if self.blocks < 1 or self.n_cells < self.blocks:
            raise ValueError(f"cannot cut {self.n_cells} cells into {self.blocks} blocks: lower blocks")

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.n_cells // self.blocks, (k + 1) * self.n_cells // self.blocks

    def sizes(self) -> np.ndarray:
        return np.array([b - a for a, b in map(self.bounds, range(self.blocks))], dtype=np.int64)

    def owned(self, rank: int, world: int) -> list[int]:
        if world > self.blocks:
            raise ValueError(f"{world} ranks share {self.blocks} blocks: use at most {self.blocks} ranks or more blocks")
        return list(range(rank, self.blocks, world))

    def rows(self, rank: int, world: int) -> np.ndarray:
        """Positions (0 .. n_cells - 1) of the rows rank ``rank`` reads, in block order."""
        parts = [np.arange(*self.bounds(k)) for k in self.owned(rank, world)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` over a :class:`BlockLayout`: which rows it reads, and its batches."""

    layout: BlockLayout
    rank: int = 0
    world: int = 1

    def rows(self) -> np.ndarray:
        return self.layout.rows(self.rank, self.world)

    def batches(self, X, targets=None, **options) -> "ShardedBatches":
        return ShardedBatches(X, targets, layout=self.layout, rank=self.rank, world=self.world, **options)


class ShardedBatches(CellBatches):
    """One rank's share of a training set: its rows (:meth:`BlockLayout.rows`) as a
    :class:`CellBatches`, yielding with ``shuffle`` the rank's part of each global batch (see the
    module docstring) and ``"n_global"`` (the global batch's size) in every batch dict.

    ``batch_size`` is the global batch. In order (``shuffle=False``: validation, statistics) the rank's
    own rows are yielded, each once. ``fingerprint`` (checkpoint identity) is the same on every rank.
    """

    sharded = True

    def __init__(self, X, targets=None, *, layout: BlockLayout, rank: int = 0, world: int = 1, **options):
        super().__init__(X, targets, **options)
        self.layout, self.rank, self.world = layout, int(rank), int(world)
        self._owned = layout.owned(self.rank, self.world)
        sizes = layout.sizes()
        if self.n_cells != int(sizes[self._owned].sum()):
            raise ValueError(f"rank {rank} holds {self.n_cells} rows but owns {int(sizes[self._owned].sum())}")
        self.n_steps = max(1, math.ceil(layout.n_cells / self.batch_size))
        if self.shuffle and int(sizes.min()) < self.n_steps:
            raise ValueError(
                f"a block of {int(sizes.min())} cells cannot give a share to each of {self.n_steps} batches: "
                f"use fewer blocks (now {layout.blocks}) or a larger batch_size")
        # chunk i of block k is perm_k[cut[k, i] : cut[k, i + 1]]; global batch i has sum_k of those
        steps = np.arange(self.n_steps + 1)
        self._cuts = (steps[None, :] * sizes[:, None]) // self.n_steps
        self._global_sizes = np.diff(self._cuts, axis=1).sum(axis=0)
        offsets = np.concatenate([[0], np.cumsum(sizes[self._owned])])
        self._local_offset = dict(zip(self._owned, offsets[:-1].tolist()))
        self._global_fingerprint = None

    def __len__(self) -> int:
        return self.n_steps if self.shuffle else super().__len__()

    def fingerprint(self) -> dict:
        """Sums over all ranks (a collective: every rank calls it at the same point)."""
        if self._global_fingerprint is None:
            local = CellBatches.fingerprint(self)
            keys = sorted(k for k, v in local.items() if isinstance(v, float))
            total = all_reduce_sum([local[k] for k in keys])
            out = dict(zip(keys, map(float, total)))
            out.update(shape=[self.layout.n_cells, self.n_features], blocks=self.layout.blocks,
                       batch_size=self.batch_size)
            self._global_fingerprint = out
        return dict(self._global_fingerprint)

    def iterate(self, generator: torch.Generator | None = None):
        if not self.shuffle:
            yield from super().iterate(generator)
            return
        # one draw from the run's generator per epoch, the same on every rank; blocks seeded from it
        epoch_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        perms = {k: torch.randperm(int(self._cuts[k, -1]), generator=torch.Generator().manual_seed(epoch_seed + k))
                 for k in self._owned}
        for i in range(self.n_steps):
            idx = torch.cat([perms[k][int(self._cuts[k, i]):int(self._cuts[k, i + 1])] + self._local_offset[k]
                             for k in self._owned])
            idx = torch.sort(idx).values
            batch = self._gather(idx if self.storage == "host" else idx.to(self.device))
            batch["n_global"] = int(self._global_sizes[i])
            yield batch


def sharded_transformed_stats(batches: CellBatches, transform) -> dict:
    """:func:`~neuroage_utils.train.batches.transformed_stats` over the rows of every rank (partial
    moments gathered and merged in rank order, so every rank gets the same numbers)."""
    parts = all_gather_objects(tuple(None if v is None else (v.cpu() if torch.is_tensor(v) else v)
                                     for v in partial_moments(batches, transform)))
    merged = None
    for part in parts:
        if part[0] == 0:
            continue
        merged = part if merged is None else merge_moments(merged, part)
    count, mean, m2, lo, hi = merged
    std = torch.sqrt(m2 / count)
    return {k: v.cpu().numpy() for k, v in {"mean": mean, "std": std, "min": lo, "max": hi}.items()}


def column_sums(X) -> tuple[np.ndarray, np.ndarray, float]:
    """Float64 column sums and sums of squares and the row count of this rank's ``X``, summed over ranks."""
    import scipy.sparse as sp

    p = X.shape[1]
    if sp.issparse(X):
        values = X.data.astype(np.float64)
        total = np.bincount(X.indices, weights=values, minlength=p)
        total_sq = np.bincount(X.indices, weights=values * values, minlength=p)
    else:
        values = np.asarray(X, dtype=np.float64)
        total, total_sq = values.sum(axis=0), (values * values).sum(axis=0)
    out = all_reduce_sum(np.concatenate([total, total_sq, [X.shape[0]]]))
    return out[:p], out[p:2 * p], float(out[-1])


# --------------------------------------------------------------------------------------------------
# Synchronised BatchNorm and the DDP wrapper
# --------------------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with the gradient of that sum (the sum of the ranks' gradients)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the global batch on CPUs: per-feature sums, sums of squares and the row count
    in float64, all-reduced (autograd through the reduction), then the usual normalisation and
    running-statistics update (unbiased variance over the global batch, as BatchNorm1d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        width = x.shape[1]
        xd = x.double()
        local = torch.cat([xd.sum(0), (xd * xd).sum(0), xd.new_full((1,), float(x.shape[0]))])
        total = _AllReduceSum.apply(local, _STATE.get("bn_group"))
        n = total[-1]
        mean = total[:width] / n
        var = (total[width:2 * width] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                count = float(n)
                unbiased = var.detach() * (count / max(count - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        out = (xd - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight.double() + self.bias.double()
        return out.to(x.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Switch every BatchNorm1d of ``module`` (in place, same parameters and buffers) to its
    synchronised form: torch's ``SyncBatchNorm`` on CUDA, :class:`_SyncBatchNorm1d` on CPUs."""
    cuda = next((p.is_cuda for p in module.parameters()), False)
    for layer in module.modules():
        if type(layer) is nn.BatchNorm1d:
            # a class swap keeps the parameters the optimiser holds and the state_dict keys unchanged
            if cuda:
                layer.__class__ = nn.SyncBatchNorm
                layer.process_group = _STATE.get("bn_group")
            else:
                layer.__class__ = _SyncBatchNorm1d
    return module


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`sync_batchnorm`: the trained module predicts, saves and loads as an ordinary one."""
    for layer in module.modules():
        if type(layer) in (_SyncBatchNorm1d, nn.SyncBatchNorm):
            layer.__class__ = nn.BatchNorm1d
            layer.__dict__.pop("process_group", None)
    return module


class _LossForward(nn.Module):
    """DDP synchronises gradients of what its ``forward`` computed: route ``module.loss`` through it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch: dict, kl_weight: float):
        return self.module.loss(batch, kl_weight)


def wrap_ddp(module: nn.Module):
    """``DistributedDataParallel`` around ``module.loss``; buffers are not broadcast (synchronised
    BatchNorm keeps them equal on every rank)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_LossForward(module), device_ids=ids, broadcast_buffers=False)


# --------------------------------------------------------------------------------------------------
# Reduced monitors
# --------------------------------------------------------------------------------------------------


def donor_mae(pred: np.ndarray, donors: np.ndarray, true: np.ndarray, names: list[str]) -> float:
    """Donor-level MAE (years) of cell predictions held by all ranks: per-donor sums of predictions,
    true ages and cell counts reduced over ranks, then :func:`~neuroage_utils.metrics.donor_metrics`
    on the donor means (the cell mean per donor, as :func:`~neuroage_utils.metrics.donor_table`).
    ``names``: the sorted donor ids of every rank (the same list everywhere)."""
    index = np.searchsorted(names, donors)
    k = len(names)
    local = np.concatenate([np.bincount(index, weights=pred, minlength=k), np.bincount(index, weights=true, minlength=k),
                            np.bincount(index, minlength=k).astype(np.float64)])
    total = all_reduce_sum(local)
    sums, ages, counts = total[:k], total[k:2 * k], total[2 * k:]
    seen = counts > 0
    table = pd.DataFrame({"donor_id": np.asarray(names)[seen], "age": ages[seen] / counts[seen],
                          "predicted": sums[seen] / counts[seen]})
    return donor_metrics(table)["mae"]


# --------------------------------------------------------------------------------------------------
# torchrun as a subprocess, and the rank entry
# --------------------------------------------------------------------------------------------------


def torchrun_command(nproc: int, spec_path, nnodes: int = 1, node_rank: int = 0, master: str | None = None,
                     python: str | None = None) -> list[str]:
    """The command that starts ``nproc`` ranks of a spec on this machine. One machine: a free local
    port (``--standalone``). Several: run it on each with ``nnodes``, its ``node_rank`` and the
    ``master`` address ``host:port`` of node 0 (any port open between the machines)."""
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={int(nproc)}"]
    if int(nnodes) == 1 and master is None:
        cmd.append("--standalone")
    else:
        host, _, port = (master or "").partition(":")
        if not host:
            raise ValueError("several nodes need master='host:port' (node 0's address)")
        cmd += [f"--nnodes={int(nnodes)}", f"--node-rank={int(node_rank)}", f"--master-addr={host}",
                f"--master-port={port or 29500}"]
    return cmd + ["-m", "neuroage_utils.train.distributed", str(spec_path)]


def launch(nproc: int, target: str, spec: dict, out_dir=None, timeout: float | None = None,
           threads_per_rank: int | None = None, nnodes: int = 1, node_rank: int = 0, master: str | None = None) -> dict:
    """Run ``target(spec, context)`` (``"module:function"``) on ``nproc`` ranks under ``torchrun`` in a
    subprocess and return what rank 0's call returned (read from ``out_dir/result.json``, written
    atomically), plus ``world_size`` and the wall time of the whole launch (``launch_seconds``).

    Each rank gets ``threads_per_rank`` torch threads (default: the cores divided among the ranks).
    A rank that fails makes torchrun stop the others; the error and the tail of their output are
    raised here as ``RuntimeError``. Several machines: call it on each with ``nnodes``, its
    ``node_rank`` and node 0's ``master`` (``host:port``); ``nproc`` is per machine, and only node 0
    gets the result (the others return ``{"node_rank": k}``).
    """
    nproc = int(nproc)
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="neuroage-ddp-"))
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(threads_per_rank) if threads_per_rank else max(1, cores // nproc)
    full = {**spec, "target": target, "out_dir": str(out), "threads_per_rank": threads}
    spec_path = out / "spec.json"
    atomic_write_text(spec_path, json.dumps(full, indent=1, default=str))
    result_path = out / RESULT_FILE
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))}
    tic = time.perf_counter()
    command = torchrun_command(nproc, spec_path, nnodes=nnodes, node_rank=node_rank, master=master)
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode == 0 and int(node_rank) != 0:
        return {"node_rank": int(node_rank)}
    if proc.returncode != 0 or not result_path.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"torchrun with {nproc} rank(s) failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["launch_seconds"] = time.perf_counter() - tic
    return result


def main(argv: list[str] | None = None) -> int:
    """The rank entry: ``python -m neuroage_utils.train.distributed SPEC.json`` under torchrun."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: torchrun ... -m neuroage_utils.train.distributed SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(int(spec.get("threads_per_rank") or torch.get_num_threads()))
    context = init(spec.get("backend"))
    try:
        module_name, _, function = spec["target"].partition(":")
        result = getattr(importlib.import_module(module_name), function)(spec, context)
        if context["rank"] == 0:
            payload = {**(result or {}), "world_size": context["world_size"], "backend": context["backend"]}
            atomic_write_text(Path(spec["out_dir"]) / RESULT_FILE, json.dumps(payload, default=_plain))
        dist.barrier()
    finally:
        teardown()
    return 0


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    # run the package's copy of this module (the one train.loop holds), not a second one as __main__
    from neuroage_utils.train.distributed import main as _main

    raise SystemExit(_main())
