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


# ``smoke_build`` (tests/conftest.py): one smoke book per session, shared with tests/test_browser.py.


def test_every_chapter_writes_wellformed_results(smoke_build):
    out, _ = smoke_build
    for section in profiles.SECTIONS:
        doc = results.read_results(out, section)  # validates the schema
        assert doc["section"] == section and doc["profile"] == "smoke"
        assert doc["runtime_s"] > 0
        # the device that ran, whether mixed precision ran (never on a CPU) and, for the chapters with a
        # factorisation, the solver ("auto" keeps ARPACK on a CPU for the SVD; HALS is faster there for NMF)
        assert doc["params"]["device"] == "cpu" and doc["params"]["amp"] is False
        used = doc["params"].get("linalg_backend_used")
        if section == "svd":
            assert used == {"svd": "sklearn"}
        if section == "nmf":
            assert used == {"nmf": "torch"}
        if section in ("realdata", "summary"):
            assert used == {"nmf": "torch", "svd": "sklearn"}
        if section == "realdata":  # its own data (real donors), models grouped by cell type
            assert doc["data"]["simulated"] is False
            if not doc["data"]["available"]:
                continue
            scored = {f"{g}/{k}": e for g, group in doc["models"].items() for k, e in group.items() if "mae" in e}
        else:
            assert doc["data"]["simulated"] is True and len(doc["data"]["sha256"]) == 64
            scored = {k: e for k, e in doc["models"].items() if "skipped" not in e}
        assert scored, f"{section} scored no model"
        for entry in scored.values():
            assert entry["mae"] >= 0 and entry["mae_ci95"][0] <= entry["mae"] <= entry["mae_ci95"][1]


def test_book_pages_and_figures_exist(smoke_build):
    out, _ = smoke_build
    html = out / "_build" / "html"
    for page in ["book/intro", "book/methods", "book/references", "book/own_cohort", "book/benchmarks", "executed/status", "executed/paper",
                 *[f"executed/{s}" for s in profiles.SECTIONS]]:
        assert (html / f"{page}.html").exists(), page
    for section in profiles.SECTIONS:
        text = (html / "executed" / f"{section}.html").read_text()
        assert "This page ran on" in text, f"{section} does not say which data it ran on"
        assert "<img" in text, f"{section} has no figure"
    assert (html / "book" / "own_cohort.html").exists()
    assert "real human donors, not the book" in (html / "executed" / "realdata.html").read_text() or \
        "This page ran on no data" in (html / "executed" / "realdata.html").read_text()
    status = (html / "executed" / "status.html").read_text()
    assert all(s in status for s in ("smoke", "kernel wall time", "executed"))
    # progress bars are plain text: tqdm.auto would warn (no ipywidgets) into every chapter's output
    assert "IProgress not found" not in status and "TqdmWarning" not in status
    from neuroage_utils.train.workers import worker_count

    assert "device (precision, workers)" in status
    assert (f"{worker_count('cpu')} workers" in status) == (worker_count("cpu") > 1)


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
    recorded as skipped with a reason, the others run (on 14 donors the single split's 2 test donors
    are too few to score: their entries keep the predictions and say so)."""
    adata = make_adata(n_donors=14, cells_per_donor=12, n_genes=40)
    dense = np.log1p(adata.X.toarray())
    adata.X = ((dense - dense.mean(0)) / (dense.std(0) + 1e-6)).astype(np.float32)
    path = tmp_path / "zscored.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    proc = run("--data", str(path), "--profile", "smoke", "--out", str(out), "--no-book", "--allow-non-counts",
               "--device", "cpu", "--only", "nmf", "vae", "summary")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    vae = results.read_results(out, "vae")
    assert vae["data"]["simulated"] is False
    assert "raw counts" in vae["models"]["vae_poisson"]["skipped"]
    assert "raw counts" in vae["models"]["vae_nb"]["skipped"]
    ran = vae["models"]["vae_gaussian"]
    assert ran["predictions"] and ("mae" in ran or "too few to score" in ran["skipped"])
    nmf = results.read_results(out, "nmf")
    assert "non-negative" in nmf["models"]["nmf_mlp"]["skipped"]
    assert nmf["models"]["null"]["predictions"] and "too few to score" in nmf["models"]["null"].get("skipped", "too few to score")
    verdict = results.read_results(out, "summary")
    skipped = verdict["params"]["cv_skipped"]
    assert "not raw counts" in skipped["pseudobulk_elastic_net"] and "non-negative" in skipped["nmf_mlp"]
    assert {"null", "elastic_net", "vae_latent_pseudobulk"} <= set(verdict["cv"])
    assert verdict["models"]["vae_latent_pseudobulk"]["likelihood"] == "gaussian"


def test_summary_has_cv_leaderboard_and_vae_clock(smoke_build):
    out, _ = smoke_build
    doc = results.read_results(out, "summary")  # validates cv and leaderboard too
    cv = doc["cv"]
    assert {"null", "elastic_net", "pseudobulk_elastic_net", "vae_latent_pseudobulk"} <= set(cv)
    assert all(e["n_donors"] == doc["data"]["n_donors"] and e["repeats"] >= 2 for e in cv.values())
    sections = {row["section"] for row in doc["leaderboard"]}
    assert {"baselines", "nmf", "vae", "summary"} <= sections
    assert doc["models"]["vae_latent_pseudobulk"]["split"] == "test"
    text = (out / "_build" / "html" / "executed" / "summary.html").read_text()
    assert "another experiment on other data" in text and "paired interval" in text


def test_realdata_chapter_renders_one_line_when_the_files_are_absent(tmp_path):
    """Without the real-donor files the chapter still executes and renders, saying so in one line."""
    import os

    env = {**os.environ, "NEUROAGE_REALDATA_DIR": str(tmp_path / "no files here")}
    proc = subprocess.run([sys.executable, "-m", "neuroage_utils.run", "--profile", "smoke", "--device", "cpu",
                           "--only", "realdata", "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import re

    html = (tmp_path / "out" / "_build" / "html" / "executed" / "realdata.html").read_text()
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "This page ran on no data" in text and "make realdata" in text
    doc = results.read_results(tmp_path / "out", "realdata")
    assert doc["data"]["available"] is False and all("skipped" in g for g in doc["models"].values())


def _every_scored_entry(doc: dict):
    """``(where, entry)`` for every entry of a results document that carries an MAE: models (and
    their groups), per-dataset breakdowns, the CV."""
    def walk(where, value):
        if isinstance(value, dict):
            if "mae" in value:
                yield where, value
            for k, v in value.items():
                if isinstance(v, dict):
                    yield from walk(f"{where}/{k}", v)
    yield from walk("models", doc["models"])
    yield from walk("cv", doc.get("cv", {}))


def _assert_one_mae_definition(doc: dict):
    checked = 0
    for where, e in _every_scored_entry(doc):
        assert e["n_donors"] >= 5, f"{doc['section']} {where}: an MAE on {e['n_donors']} donors"
        if e.get("predictions"):
            mae = np.mean([abs(p["predicted"] - p["age"]) for p in e["predictions"]])
            assert e["mae"] == pytest.approx(mae, abs=1e-9), f"{doc['section']} {where}: MAE not that of its predictions"
            checked += 1
    return checked


def test_every_mae_in_every_results_file_is_that_of_its_predictions(smoke_build):
    out, _ = smoke_build
    checked = sum(_assert_one_mae_definition(json.loads(p.read_text())) for p in (out / "results").glob("*.json"))
    assert checked > 20


def test_summary_cv_is_at_equal_data_and_shows_the_leakage_the_floor_and_the_real_donors(smoke_build):
    out, _ = smoke_build
    doc = results.read_results(out, "summary")
    fitted = {k: e["cells_fitted"] for k, e in doc["cv"].items()}
    assert len(set(fitted.values())) == 1 and next(iter(fitted.values())) > 0, fitted
    leak = doc["models"]["elastic_net_cell_split"]
    assert leak["split"] == "cv" and leak["cells_fitted"] == pytest.approx(fitted["elastic_net"], abs=1)
    assert doc["models"]["oracle"]["mae"] > 0 and "oracle" not in {r["model"] for r in doc["leaderboard"]}
    text = (out / "_build" / "html" / "executed" / "summary.html").read_text()
    for needle in ("The takeaway", "The floor", "Real donors", "cells at random", "What this does and does not show",
                   "same training cells"):
        assert needle in text, needle
    assert text.index("The takeaway") < text.index("Leaderboard")
    vae = results.read_results(out, "vae")
    steps = vae["params"]["vae_experiments"]["step_budgets"]["experiment"]
    assert steps["steps"] == vae["models"]["vae_exp_steps"]["steps"] and "share_of_paper_steps" in steps


def test_a_15_donor_cohort_scores_no_split_of_fewer_than_5_donors(tmp_path):
    path = tmp_path / "fifteen.h5ad"
    make_adata(n_donors=15, cells_per_donor=20, n_genes=40, seed=3).write_h5ad(path)
    out = tmp_path / "out"
    proc = run("--profile", "smoke", "--data", str(path), "--only", "data", "baselines", "summary", "--no-book",
               "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for section in ("data", "baselines", "summary"):
        doc = results.read_results(out, section)
        _assert_one_mae_definition(doc)
        small = [k for k, e in doc["models"].items() if "too few to score" in e.get("skipped", "")]
        if section != "summary":
            assert small, f"{section}: the 2-donor splits were scored"
    summary = results.read_results(out, "summary")
    assert summary["cv"]["elastic_net"]["n_donors"] == 15  # the repeated CV carries the comparison
    page = (out / "executed" / "baselines.ipynb").read_text()
    assert "too small to score" in page


def test_svd_and_nmf_stream_every_cell_through_the_runner(tmp_path):
    """--stream on the smoke profile (which, like the paper profile, fits the factorisations over every
    cell): both chapters record a streamed fit over every training cell of the file and say so on the page."""
    from neuroage_utils.data.simulate import write_simulated_h5ad
    from neuroage_utils.data.stream import load_streamed

    path = write_simulated_h5ad(tmp_path / "sim.h5ad", cell_fraction=0.006, n_genes=80, seed=4, min_cells_per_donor=8)
    out = tmp_path / "out"
    proc = run("--profile", "smoke", "--data", str(path), "--stream", "--only", "svd", "nmf", "--no-book",
               "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    stream = load_streamed(path)
    for section, splits, backend in (("svd", ("train",), "streamed-gram"), ("nmf", ("train", "val"), "streamed-hals")):
        doc = results.read_results(out, section)
        params, record = doc["params"], doc["params"]["factorisation"]
        assert params["streamed"] is True and params["stream_every_cell"] is True
        assert record["every_cell"] is True and record["backend"] == backend
        assert params["linalg_backend_used"] == {section: backend}
        assert record["fit_cells"] == int(stream.mask(*splits).sum()) and record["scored_cells"] == stream.n_cells
        assert record["n_components"] == profiles.section_params("smoke", section)["n_components"]
        model = doc["models"][f"{section}_ridge" if section == "svd" else "nmf_mlp"]
        assert model["mae"] >= 0 and model["n_components"] == record["n_components"]
        page = (out / "executed" / f"{section}.ipynb").read_text()
        assert f"fitted in streamed passes over all {record['fit_cells']:,}" in page
