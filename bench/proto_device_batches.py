"""Prototype for the GPU training path: CSR kept on the device, batches densified there, no host sync.

    .venv/bin/python bench/proto_device_batches.py [--cells 8192 --genes 17658 --batch-size 4096]

``train.CellBatches`` densifies large matrices per batch on the host (scipy row gather +
``toarray`` + a host-to-device copy of batch x genes floats). Here the CSR buffers live on the device
and :func:`densify_rows` builds a dense batch with fixed-shape tensor ops only: the rows are padded to
the longest row (known once, at set-up), so no step needs a data-dependent size and the host never
waits for the device. Padding slots add 0 through ``scatter_add_``, so the result is exact and
deterministic although CUDA scatter_add uses atomics. Checks against scipy and times both paths.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def densify_rows(crow, col, val, idx, n_cols: int, max_row_nnz: int):
    """Dense ``X[idx]`` (len(idx) x n_cols) from device CSR buffers; fixed shapes, no host sync."""
    import torch

    starts, counts = crow[idx], crow[idx + 1] - crow[idx]
    offsets = torch.arange(max_row_nnz, device=crow.device)
    pos = starts[:, None] + offsets[None, :]
    valid = offsets[None, :] < counts[:, None]
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    out = torch.zeros(len(idx), n_cols, dtype=val.dtype, device=val.device)
    out.scatter_add_(1, col[pos], torch.where(valid, val[pos], torch.zeros((), dtype=val.dtype, device=val.device)))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cells", type=int, default=8192)
    p.add_argument("--genes", type=int, default=17_658)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torch

    from bench_vae_epoch import synthetic_counts

    X = synthetic_counts(args.cells, args.genes, 0.1)
    dev = torch.device(args.device)
    crow = torch.from_numpy(X.indptr.astype(np.int64)).to(dev)
    col = torch.from_numpy(X.indices.astype(np.int64)).to(dev)
    val = torch.from_numpy(X.data).to(dev)
    max_nnz = int(np.diff(X.indptr).max())
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(args.cells, generator=gen).to(dev)  # one permutation per epoch, moved once
    idx = torch.sort(order[: args.batch_size]).values
    dense = densify_rows(crow, col, val, idx, args.genes, max_nnz)
    ref = X[idx.cpu().numpy()].toarray()
    assert np.array_equal(dense.cpu().numpy(), ref), "device densify differs from scipy"
    t_dev, t_host = [], []
    for _ in range(3):
        tic = time.perf_counter()
        densify_rows(crow, col, val, idx, args.genes, max_nnz)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_dev.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        torch.from_numpy(X[idx.cpu().numpy()].toarray()).to(dev)
        t_host.append(time.perf_counter() - tic)
    print(json.dumps({"cells": args.cells, "genes": args.genes, "batch_size": args.batch_size, "device": args.device,
                      "max_row_nnz": max_nnz, "exact": True, "device_densify_s": round(min(t_dev), 4),
                      "host_gather_toarray_copy_s": round(min(t_host), 4)}))


if __name__ == "__main__":
    main()
