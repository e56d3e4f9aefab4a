"""The benchmarks page renders with and without bench/results.json; paper estimates are consistent."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from paper_estimates import estimate, vae_flops_per_cell  # noqa: E402
from render_benchmarks import render  # noqa: E402


def test_page_says_so_when_results_are_absent(tmp_path):
    text = render(tmp_path / "missing.json", tmp_path / "page.md")
    assert "bench/results.json` is absent" in text and "make bench" in text
    assert (tmp_path / "page.md").read_text() == text


def test_page_from_results_labels_extrapolations_and_estimates(tmp_path):
    results = {"date_utc": "2026-01-01 00:00", "machine": "test", "load_average_1min_at_start": 0.0,
               "vae": {"ours_17658": {"achieved_gflops": 50.0, "cells_per_s": 100.0, "batch_size": 4096}}}
    results["paper_profile"] = estimate(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    text = render(path, tmp_path / "page.md")
    assert "CPU, s (extrapolated)" in text and "GPU, s (estimate)" in text
    rows = {r["chapter"]: r for r in results["paper_profile"]["rows"]}
    # CPU time of the VAE chapter is its FLOPs at the measured rate
    assert rows["vae"]["cpu_s_extrapolated"] == pytest.approx(rows["vae"]["tflop"] * 1e12 / 50e9, rel=1e-2)
    assert set(rows) == {"data", "svd", "baselines", "nmf", "vae", "dae"}


def test_vae_flop_count_matches_a_hand_count():
    flops = vae_flops_per_cell([8], 3, genes=10, age_hidden=(2,))
    # AgeVAE's Linear layers: encoder 10x8 (first: no input gradient), 8x3; mu and var heads 3x3;
    # decoder 3x3, 3x8, 8x8, 8x10; age head 3x2, 2x1
    weights = [10 * 8, 8 * 3, 3 * 3, 3 * 3, 3 * 3, 3 * 8, 8 * 8, 8 * 10, 3 * 2, 2 * 1]
    assert flops == 6 * sum(weights) - 2 * weights[0]


def test_linear_algebra_benchmark_runs_on_tiny_data():
    """`make bench` imports the package as it is now: a moved name fails here, not on a GPU day."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(repo / "bench" / "bench_linalg.py"), "--cells", "600", "--genes", "80",
                           "--k", "4", "--enet-cells", "200", "--enet-genes", "20"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["nmf"]["torch_hals"]["objective"] <= 1.005 * report["nmf"]["sklearn_cd"]["objective"]
    assert report["svd"]["min_cosine_top10_subspace"] > 0.99


def test_page_shows_the_data_parallel_runs(tmp_path):
    run = {"world_size": 2, "threads_per_rank": 1, "precision": "fp32", "epoch_seconds_best": 0.8,
           "cells_per_s_per_rank": 6400.0, "cells_per_s_total": 12800.0, "epoch_time_vs_single_process": 1.6}
    results = {"date_utc": "2026-01-01 00:00", "machine": "test", "load_average_1min_at_start": 0.0,
               "ddp": {"model": "Poisson VAE", "genes": 2000, "cells": 10240, "batch_size": 1024, "epochs_timed": 3,
                       "cores": 2, "load_average_1min_start": 1.0, "load_average_1min_end": 1.2,
                       "runs": {"single_process": {"threads_per_rank": 2, "precision": "fp32", "epoch_seconds_best": 0.5,
                                                   "cells_per_s_per_rank": 20480.0}, "ranks_2": run}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    text = render(path, tmp_path / "page.md")
    assert "## Data-parallel training (torch.distributed)" in text
    assert "| DDP, 2 rank(s) | 2 x 1 | fp32 | 0.80 | 6,400 | 12,800 | 1.60 | - | - |" in text
    assert "not a speed-up" in text
