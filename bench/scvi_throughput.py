"""scvi-tools' SCVI training throughput (cells/s) on synthetic counts; run in bench/.venv-scvi.

    bench/.venv-scvi/bin/python bench/scvi_throughput.py --genes 2000 --cells 10240 --batch-size 1024

Same shape as our Poisson VAE benchmark: encoder and decoder 2 x 256, latent 100, Poisson
likelihood, CPU, 2 torch threads; ``--amp``: Lightning's bf16-mixed precision. Epochs are timed by a Lightning callback; the first is a
warm-up and excluded. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--cells", type=int, default=10240)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="Lightning's bf16-mixed precision (as our --amp)")
    args = p.parse_args()
    import anndata as ad
    import lightning.pytorch as pl
    import scvi
    import torch

    from bench_vae_epoch import synthetic_counts

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    X = synthetic_counts(args.cells, args.genes, args.density)
    adata = ad.AnnData(X=X)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_hidden=256, n_layers=2, n_latent=100, gene_likelihood="poisson")

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_epoch_start(self, trainer, module):
            self.tic = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self.tic)

    timer = EpochTimer()
    model.train(max_epochs=1 + args.epochs, batch_size=args.batch_size, train_size=1.0, accelerator="cpu",
                devices=1, early_stopping=False, enable_progress_bar=False, callbacks=[timer],
                enable_checkpointing=False, logger=False, precision="bf16-mixed" if args.amp else "32-true")
    per_epoch = min(timer.times[1:])
    print(json.dumps({"tool": f"scvi-tools {scvi.__version__}", "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "genes": args.genes, "cells": args.cells,
                      "batch_size": args.batch_size, "precision": "bf16-mixed" if args.amp else "fp32",
                      "epoch_seconds": [round(t, 3) for t in timer.times],
                      "cells_per_s": round(args.cells / per_epoch, 1)}))


if __name__ == "__main__":
    main()
