"""Memory and time against the number of cells: the streamed data path and a pseudobulk clock fit.

    python bench/bench_scale.py --millions 0.1 0.5 1 2 [--genes 2000] [--dir /tmp/neuroage-scale] [--keep]

For each size: the simulated cohort is written block by block (``python -m neuroage_utils.data.simulate``;
skipped when the file is already there), then two steps, each in its own process so that its peak
resident memory (``wait4``'s ``ru_maxrss``) is its own:

- ``data``: ``load_streamed`` (obs checks, one validation pass with library sizes), per-gene moments
  of the log-normalised training cells, donor pseudobulk of the training + validation donors, and
  the per-donor sample the cell-level models of the quick profile fit on (its ``stream_sample_cells``);
- ``fit``: the streamed pseudobulk clock of the book's baselines chapter: load (validated), streamed
  pseudobulk of the training + validation donors, the elastic net with the quick profile's grid and
  donor-grouped CV, and the test donors' predictions from their streamed pseudobulk (with the test MAE);
- ``cli``: the command itself, ``neuroage fit --data FILE --model pseudobulk_elastic_net --out DIR``
  (every donor, penalty tuned by inner CV, error by an outer 5-fold CV, the clock directory written),
  which streams a file of this size by itself.

Prints one JSON object (``run_bench.py`` stores it as ``scale``). Files are deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAPER_CELLS = 189_423


def _measured(cmd) -> dict:
    """Run ``cmd``; its wall time, its own peak RSS (GB) and its last JSON line."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    load = round(os.getloadavg()[0], 1)  # times on a shared machine are upper bounds: say how shared
    tic = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - tic
    result = {"wall_s": round(wall, 1), "exit": proc.returncode, "load_1min_at_start": load}
    for line in out.strip().splitlines():  # the step's JSON line, then the wrapper's (peak RSS)
        if line.startswith("{"):
            result.update(json.loads(line))
        elif " CV MAE " in line:  # neuroage fit's summary line
            result["cv_mae"] = float(line.split(" CV MAE ")[1].split()[0])
    if proc.returncode != 0:
        result["error"] = (err.strip().splitlines() or ["no output"])[-1][:300]
    return result


def _wrapped(cmd) -> list:
    """``cmd`` under a tiny wrapper that reports the child's own peak RSS via ``os.wait4``."""
    code = ("import json,os,sys,subprocess;p=subprocess.Popen(sys.argv[1:]);_,s,r=os.wait4(p.pid,0);"
            "print(json.dumps({'peak_rss_gb':round(r.ru_maxrss/2**20,3),'status':os.waitstatus_to_exitcode(s)}));"
            "sys.exit(os.waitstatus_to_exitcode(s))")
    return [sys.executable, "-c", code, *cmd]


def step_data(path: str) -> dict:
    from neuroage_utils.data.stream import load_streamed

    t = time.perf_counter()
    times = {}
    cohort = load_streamed(path)
    times["load_validate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    train = cohort.mask("train")
    cohort.column_moments(rows=train)
    times["moments_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cohort.pseudobulk(cohort.mask("train", "val"))
    times["pseudobulk_s"] = time.perf_counter() - t
    t = time.perf_counter()
    from neuroage_utils import profiles

    sample = cohort.sample_cohort(profiles.section_params("quick", "data")["stream_sample_cells"], seed=0)
    times["sample_50k_s"] = time.perf_counter() - t
    return {"n_cells": cohort.n_cells, "n_genes": cohort.n_genes, "nnz": cohort.nnz, "n_donors": cohort.n_donors,
            "sample_cells": sample.n_cells, **{k: round(v, 1) for k, v in times.items()}}


def step_fit(path: str) -> dict:
    from neuroage_utils.data.stream import load_streamed
    from neuroage_utils.models.linear import fit_streamed_pseudobulk_elastic_net, predict_streamed_donors

    t = time.perf_counter()
    cohort = load_streamed(path)
    clock = fit_streamed_pseudobulk_elastic_net(cohort, ("train", "val"), l1_ratios=(0.1, 0.5, 0.9, 1.0), n_alphas=20,
                                                n_splits=5, seed=0)
    predicted = predict_streamed_donors(clock, cohort, "test")
    seconds = time.perf_counter() - t
    truth = cohort.donor_table.set_index("donor_id").loc[predicted.index, "age"].to_numpy(dtype=float)
    return {"fit_predict_s": round(seconds, 1), "test_mae": round(float(abs(predicted.to_numpy() - truth).mean()), 2),
            "alpha": clock.alpha_, "l1_ratio": clock.l1_ratio_, "n_nonzero": clock.n_nonzero_}


def cli_command(path: str, out: str) -> list:
    return [sys.executable, "-m", "neuroage_utils.clock.cli", "fit", "--data", path, "--model", "pseudobulk_elastic_net",
            "--out", out]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--millions", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0])
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--dir", type=Path, default=Path("/tmp/neuroage-scale"))
    p.add_argument("--keep", action="store_true", help="keep the simulated files")
    p.add_argument("--step", choices=["data", "fit"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        print(json.dumps(step_data(args.path) if args.step == "data" else step_fit(args.path)), flush=True)
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for millions in args.millions:
        path = args.dir / f"cells-{millions:g}M-genes{args.genes}.h5ad"
        row = {"millions": millions}
        if not path.exists():
            fraction = millions * 1e6 / PAPER_CELLS
            row["write"] = _measured(_wrapped([sys.executable, "-m", "neuroage_utils.data.simulate", path,
                                               "--cell-fraction", f"{fraction:.6f}", "--n-genes", args.genes]))
        row["file_gb"] = round(path.stat().st_size / 1e9, 2) if path.exists() else None
        for step in ("data", "fit"):
            row[step] = _measured(_wrapped([sys.executable, __file__, "--step", step, "--path", path]))
        with tempfile.TemporaryDirectory() as tmp:
            row["cli"] = _measured(_wrapped(cli_command(str(path), str(Path(tmp) / "clock"))))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if not args.keep:
            path.unlink(missing_ok=True)
    print(json.dumps({"genes": args.genes, "sizes": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
