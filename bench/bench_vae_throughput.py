"""Our Poisson VAE's training throughput and achieved FLOP/s, beside a plain matmul in the same run.

    .venv/bin/python bench/bench_vae_throughput.py --genes 2000 --cells 10240 --batch-size 1024

Shape of the scvi-tools comparison (bench/scvi_throughput.py): encoder [256, 256], latent 100,
Poisson likelihood, CPU, 2 torch threads, batches densified from CSR per batch (as scvi-tools and
as the paper-scale data must be). Trains through ``VAEAgeRegressor`` (the book's code path, age head
[20, 20] included). The first epoch is a warm-up; the best of the timed epochs is reported.

FLOPs per cell are counted from the Linear layers: forward 2*in*out, backward 2*in*out for the
weight gradient and 2*in*out for the input gradient (none for the first layer, whose input needs no
gradient). Element-wise work (activations, likelihood, BatchNorm) is not counted, so the achieved
rate is a lower bound. The matmul reference multiplies a batch (batch x genes) by a genes x 256
weight, the shape of the first layer, and a square 2048^3 product, in the precision of the run
(``--amp``: bf16 autocast where the device has native bf16, and a bf16 reference).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def linear_train_flops_per_cell(module) -> float:
    import torch.nn as nn

    flops, first = 0.0, True
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            w = layer.in_features * layer.out_features
            flops += 2 * w + 2 * w + (0 if first else 2 * w)
            first = False
    return flops


def matmul_rate(m: int, k: int, n: int, seconds: float = 1.0, dtype=None) -> float:
    """Best FLOP/s of ``(m x k) @ (k x n)`` (float32 unless ``dtype``) over repeats filling about ``seconds``."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        tic = time.perf_counter()
        a @ b
        dt = time.perf_counter() - tic
        best, spent = min(best, dt), spent + dt
    return 2.0 * m * k * n / best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--cells", type=int, default=10240)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast (where the device has native bf16); the matmul reference is then bf16 too")
    args = p.parse_args(argv)
    import torch

    from bench_vae_epoch import synthetic_counts
    from neuroage_utils.models.vae import VAEAgeRegressor

    torch.set_num_threads(args.threads)
    X = synthetic_counts(args.cells, args.genes, args.density)
    ages = np.random.default_rng(1).uniform(24, 94, args.cells)
    model = VAEAgeRegressor(likelihood="poisson", hidden=[256, 256], latent=100, age_hidden=(20, 20),
                            epochs=1 + args.epochs, batch_size=args.batch_size, device=args.device,
                            progress=False, max_dense_bytes=0, amp=args.amp)
    dtype = torch.bfloat16 if args.amp else torch.float32
    mm_before = matmul_rate(args.batch_size, args.genes, 256, dtype=dtype)
    model.fit(X, ages)
    mm_after = matmul_rate(args.batch_size, args.genes, 256, dtype=dtype)
    square = matmul_rate(2048, 2048, 2048, dtype=dtype)
    seconds = model.history_["seconds"].to_numpy()
    per_epoch = float(seconds[1:].min())
    flops_cell = linear_train_flops_per_cell(model.module_)
    achieved = flops_cell * args.cells / per_epoch
    mm = max(mm_before, mm_after)
    result = {
        "genes": args.genes, "cells": args.cells, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "device": args.device, "precision": "bf16-mixed" if model.amp_ else "fp32", "epoch_seconds": [round(float(s), 3) for s in seconds],
        "cells_per_s": round(args.cells / per_epoch, 1), "train_gflop_per_cell": flops_cell / 1e9,
        "achieved_gflops": round(achieved / 1e9, 2), "matmul_first_layer_gflops": round(mm / 1e9, 2),
        "matmul_2048_gflops": round(square / 1e9, 2), "fraction_of_matmul": round(achieved / mm, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
