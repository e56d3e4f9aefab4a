"""Benchmark: the pre-flight memory estimate against the measured peak, chapter by chapter.

    python bench/bench_preflight.py --cells 20000 80000 --genes 2000 [--profile smoke]
        [--sections data svd baselines nmf vae dae] [--out DIR]

For each size it writes a cohort of Poisson counts (30 donors, about 10% non-zero, CSR float32),
runs ``python -m neuroage_utils.run --data ... --only SECTIONS --no-book --force`` and prints, per
chapter, the runner's estimate beside the peak it measured (``memory`` in each results file): the
points the in-memory formula of ``neuroage_utils/chapters/preflight.py`` is calibrated on.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_cohort(path: Path, n_cells: int, n_genes: int, n_donors: int = 30, seed: int = 0) -> dict:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    donors = np.sort(rng.integers(0, n_donors, n_cells))
    ages = np.linspace(25, 90, n_donors).round()[donors]
    blocks = []
    for start in range(0, n_cells, 20_000):  # Poisson counts, 10% non-zero, block by block
        rows = min(20_000, n_cells - start)
        mask = sp.random(rows, n_genes, density=0.1, format="csr", random_state=rng, dtype=np.float32)
        mask.data = rng.poisson(2.0, mask.nnz).astype(np.float32) + 1
        blocks.append(mask)
    X = sp.vstack(blocks).tocsr()
    obs = pd.DataFrame({"donor_id": [f"D{d:02d}" for d in donors], "age": ages},
                       index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])).write_h5ad(path)
    return {"cells": n_cells, "genes": n_genes, "nnz": int(X.nnz), "csr_gb": round(8 * X.nnz / 1e9, 3)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cells", type=int, nargs="+", default=[20_000, 80_000])
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--sections", nargs="+", default=["data", "svd", "baselines", "nmf"])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="neuroage-preflight-"))
    rows = []
    for n in args.cells:
        out = root / f"cells{n}"
        out.mkdir(parents=True, exist_ok=True)
        size = write_cohort(out / "cohort.h5ad", n, args.genes)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "neuroage_utils.run", "--data", str(out / "cohort.h5ad"),
                               "--profile", args.profile, "--only", *args.sections, "--no-book", "--force",
                               "--out", str(out)], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
        for section in args.sections:
            path = out / "results" / f"{section}.json"
            if path.exists():
                mem = json.loads(path.read_text()).get("memory", {})
                rows.append({**size, "section": section, "estimate_gb": mem.get("estimate_gb"),
                             "peak_gb": mem.get("peak_gb"), "parts_gb": mem.get("parts_gb")})
        print(f"{n} cells: {time.perf_counter() - start:.0f} s", flush=True)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
