"""Data-parallel VAE epochs: cells per second per rank at 1 and 2 ranks (torchrun, gloo), beside the
same model trained in one process without torch.distributed.

    .venv/bin/python bench/bench_ddp.py [--genes 2000 --cells 10240 --batch-size 1024 --epochs 2] [--amp]

The shape of the SCVI comparison (bench_vae_throughput.py): Poisson VAE, encoder [256, 256], latent
100, age head [20, 20], synthetic counts (10% non-zero). The global batch is the same at every world
size; ranks share the machine's cores (2 ranks x 1 thread vs 1 rank x 2 threads), so on 2 cores this
measures what data parallelism costs (gradient all-reduce, synchronised BatchNorm, reduced sums), not a
speed-up: that needs a core, GPU or machine per rank. The first epoch is a warm-up; the best timed
epoch is reported (rank 0's clock: every step waits for the slowest rank at the all-reduce). Wall
times on a shared machine are upper bounds; processor time summed over the ranks (``cells_per_cpu_s``)
is what other processes inflate least, so the overhead is read from ``cpu_time_vs_single_process``.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _model(args, **extra):
    from neuroage_utils.models.vae import VAEAgeRegressor

    return VAEAgeRegressor(likelihood="poisson", hidden=[256, 256], latent=100, age_hidden=(20, 20),
                           epochs=1 + args.epochs, batch_size=args.batch_size, device="cpu", progress=False,
                           amp=args.amp, kl_schedule=1.0, lr_schedule=None, **extra)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--cells", type=int, default=10240)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ranks", type=int, nargs="*", default=[1, 2])
    p.add_argument("--amp", action="store_true", help="bf16 autocast where the CPU runs bf16 (train.device)")
    args = p.parse_args(argv)
    import torch

    from bench_vae_epoch import synthetic_counts
    from neuroage_utils.models.data_parallel import fit_distributed, write_h5ad

    cores = len(os.sched_getaffinity(0))
    X = synthetic_counts(args.cells, args.genes, args.density)
    donors = np.repeat([f"D{i:03d}" for i in range(64)], -(-args.cells // 64))[: args.cells]
    ages = np.array([24 + (int(d[1:]) * 7) % 70 for d in donors], dtype=float)  # one age per donor
    result = {"genes": args.genes, "cells": args.cells, "batch_size": args.batch_size, "density": args.density,
              "epochs_timed": args.epochs, "cores": cores, "model": "Poisson VAE [256, 256], latent 100",
              "load_average_1min_start": round(os.getloadavg()[0], 2), "runs": {}}

    # one process, no torch.distributed: the reference the ranks' overhead is measured against
    torch.set_num_threads(cores)
    cpu = time.process_time()
    model = _model(args).fit(X, ages)
    cpu = time.process_time() - cpu
    best = float(model.history_["seconds"].to_numpy()[1:].min())
    epochs = len(model.history_)
    result["runs"]["single_process"] = {"world_size": 1, "threads_per_rank": cores, "epoch_seconds_best": round(best, 3),
                                        "cells_per_s_per_rank": round(args.cells / best, 1),
                                        "cells_per_cpu_s": round(args.cells * epochs / cpu, 1),
                                        "precision": "bf16-mixed" if model.amp_ else "fp32"}
    print("single process", result["runs"]["single_process"], file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        path = write_h5ad(Path(tmp) / "cells.h5ad", X, ages, donors)
        for world in args.ranks:
            tic = time.perf_counter()
            fitted, run = fit_distributed(_model(args), path, world, out_dir=Path(tmp) / f"r{world}",
                                          threads_per_rank=max(1, cores // world), timeout=1800)
            seconds = fitted.history_["seconds"].to_numpy()
            best = float(seconds[1:].min())
            result["runs"][f"ranks_{world}"] = {
                "world_size": run["world_size"], "backend": run["backend"], "threads_per_rank": run["threads_per_rank"],
                "cells_per_rank": run["cells_per_rank"], "epoch_seconds": [round(float(s), 3) for s in seconds],
                "epoch_seconds_best": round(best, 3), "cells_per_s_per_rank": round(args.cells / best / world, 1),
                "cells_per_s_total": round(args.cells / best, 1), "launch_seconds": round(time.perf_counter() - tic, 1),
                # processor time summed over the ranks (warm-up epoch included, as for the single process)
                "cells_per_cpu_s": round(args.cells * len(seconds) / sum(run["fit_cpu_seconds_per_rank"]), 1),
                "precision": "bf16-mixed" if run["amp"] else "fp32", "final_loss": float(fitted.history_["loss"].iloc[-1]),
            }
            print(f"{world} rank(s)", result["runs"][f"ranks_{world}"], file=sys.stderr, flush=True)
    single = result["runs"]["single_process"]["epoch_seconds_best"]
    for world in args.ranks:
        run = result["runs"][f"ranks_{world}"]
        run["epoch_time_vs_single_process"] = round(run["epoch_seconds_best"] / single, 2)
        run["cpu_time_vs_single_process"] = round(result["runs"]["single_process"]["cells_per_cpu_s"]
                                                  / run["cells_per_cpu_s"], 2)
    result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
