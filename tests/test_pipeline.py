"""End to end: the runner executes every chapter on the smoke profile and renders the book.

One build (module-scoped) serves every assertion; it is the slowest test of the suite (minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuroage_utils import profiles, results

from .conftest import make_adata

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "neuroage_utils.run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=1800)


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    proc = run("--profile", "smoke", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_every_chapter_writes_wellformed_results(smoke_build):
    out, _ = smoke_build
    for section in profiles.SECTIONS:
        doc = results.read_results(out, section)  # validates the schema
        assert doc["section"] == section and doc["profile"] == "smoke"
        assert doc["data"]["simulated"] is True and len(doc["data"]["sha256"]) == 64
        assert doc["runtime_s"] > 0
        scored = {k: e for k, e in doc["models"].items() if "skipped" not in e}
        assert scored, f"{section} scored no model"
        for entry in scored.values():
            assert entry["mae"] >= 0 and entry["mae_ci95"][0] <= entry["mae"] <= entry["mae_ci95"][1]


def test_book_pages_and_figures_exist(smoke_build):
    out, _ = smoke_build
    html = out / "_build" / "html"
    for page in ["book/intro", "book/methods", "book/references", "book/benchmarks", "executed/status", "executed/paper",
                 *[f"executed/{s}" for s in profiles.SECTIONS]]:
        assert (html / f"{page}.html").exists(), page
    for section in profiles.SECTIONS:
        text = (html / "executed" / f"{section}.html").read_text()
        assert "This page ran on" in text, f"{section} does not say which data it ran on"
        assert "<img" in text, f"{section} has no figure"
    status = (html / "executed" / "status.html").read_text()
    assert all(s in status for s in ("smoke", "kernel wall time", "executed"))


def test_unchanged_inputs_are_not_reexecuted(smoke_build):
    out, _ = smoke_build
    proc = run("--profile", "smoke", "--device", "cpu", "--out", str(out), "--only", "data", "--no-book")
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_list_sections():
    proc = run("--list")
    assert proc.returncode == 0 and proc.stdout.split()[0] == "data"


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_age", "no age column 'age'"),
        ("negative_age", "negative age"),
        ("floats", "non-integer values"),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path, breakage, message):
    adata = make_adata(n_donors=12)
    if breakage == "no_age":
        del adata.obs["age"]
    elif breakage == "negative_age":
        adata.obs.loc[adata.obs["donor_id"] == "D02", "age"] = -1.0
    else:
        adata.X = adata.X.toarray() * 0.5 + 0.25
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    proc = run("--data", str(path), "--profile", "smoke", "--out", str(out), "--no-book")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert message in last and last.startswith("error:")
    assert not (out / "results").exists() and not (out / "executed").exists()


def test_values_that_are_not_counts_run_with_count_models_skipped(tmp_path):
    """z-scored data (negative floats): accepted with --allow-non-counts; count models and NMF are
    recorded as skipped with a reason, the others are scored."""
    adata = make_adata(n_donors=14, cells_per_donor=12, n_genes=40)
    dense = np.log1p(adata.X.toarray())
    adata.X = ((dense - dense.mean(0)) / (dense.std(0) + 1e-6)).astype(np.float32)
    path = tmp_path / "zscored.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    proc = run("--data", str(path), "--profile", "smoke", "--out", str(out), "--no-book", "--allow-non-counts",
               "--device", "cpu", "--only", "nmf", "vae")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    vae = results.read_results(out, "vae")
    assert vae["data"]["simulated"] is False
    assert "raw counts" in vae["models"]["vae_poisson"]["skipped"]
    assert "raw counts" in vae["models"]["vae_nb"]["skipped"]
    assert "mae" in vae["models"]["vae_gaussian"]
    nmf = results.read_results(out, "nmf")
    assert "non-negative" in nmf["models"]["nmf_mlp"]["skipped"]
    assert "mae" in nmf["models"]["null"]
