"""The clock in users' hands: fit / save / load / predict, gene alignment, age gaps, the `neuroage` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.clock import Clock, GeneOverlapWarning
from neuroage_utils.clock.alignment import align_genes
from neuroage_utils.errors import DataValidationError
from neuroage_utils.evaluation import acceleration as acc

from tests.conftest import make_adata

REPO = Path(__file__).resolve().parents[2]
SMALL = {"folds": 3, "inner_splits": 3, "en_l1": [0.5], "en_alphas": 5, "boot": 200,
         "pseudocells": {"n_per_donor": 4, "cells_per_pseudocell": 8}}
MODELS = ["pseudobulk_elastic_net", "pseudocell_elastic_net", "elastic_net"]


@pytest.fixture(scope="module")
def cohort():
    return make_adata(n_donors=15, cells_per_donor=20, n_genes=40)


@pytest.fixture(scope="module")
def clocks(cohort):
    return {m: Clock.fit(cohort, model=m, settings=SMALL) for m in MODELS}


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEUROAGE_WORKERS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "neuroage_utils.clock.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


# -- save / load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip_gives_the_same_predictions(clocks, cohort, tmp_path, model):
    clock = clocks[model]
    before = clock.predict(cohort)
    clock.save(tmp_path / "clock")
    after = Clock.load(tmp_path / "clock").predict(cohort)
    assert list(after.columns) == list(before.columns)
    np.testing.assert_allclose(after["predicted_age"], before["predicted_age"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(after["age_gap_corrected"], before["age_gap_corrected"], rtol=0, atol=1e-9)
    assert (after["donor_id"] == before["donor_id"]).all()


def test_clock_directory_holds_no_pickle(clocks, tmp_path):
    out = clocks["pseudobulk_elastic_net"].save(tmp_path / "clock")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["MODEL_CARD.md", "clock.json", "coefficients.csv", "genes.json", "parameters.npz", "training.json"]
    for path in out.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{path.name} starts like a pickle"
        if path.suffix == ".json":
            json.loads(path.read_text())
    with zipfile.ZipFile(out / "parameters.npz") as z:  # every member a plain .npy array, none a pickle
        for name in z.namelist():
            assert name.endswith(".npy") and z.read(name)[:6] == b"\x93NUMPY", name
    with np.load(out / "parameters.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype == np.float64 for k in npz.files)
    card = (out / "MODEL_CARD.md").read_text()
    training = json.loads((out / "training.json").read_text())
    assert "CV MAE" in card and training["package_version"] and len(training["data_sha256"]) > 60
    assert training["members"]["all"]["cv_mae_ci95"][0] <= training["members"]["all"]["cv_mae"]


def test_a_changed_parameter_file_is_refused(clocks, tmp_path):
    out = clocks["pseudobulk_elastic_net"].save(tmp_path / "clock")
    with np.load(out / "parameters.npz") as npz:
        arrays = {k: npz[k] * 2 for k in npz.files}
    np.savez(out / "parameters.npz", **arrays)
    with pytest.raises(DataValidationError, match="changed after the clock was saved"):
        Clock.load(out)


# -- gene alignment ------------------------------------------------------------------------------


def test_thirty_percent_of_genes_missing_warns_and_reports_the_share(clocks, cohort):
    partial = cohort[:, 12:].copy()  # 12 of 40 genes gone
    with pytest.warns(GeneOverlapWarning, match="30%"):
        table = clocks["pseudobulk_elastic_net"].predict(partial)
    assert np.allclose(table["genes_missing"], 0.3)
    assert np.isfinite(table["predicted_age"]).all()


def test_few_missing_genes_do_not_warn(clocks, cohort):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeneOverlapWarning)
        table = clocks["pseudobulk_elastic_net"].predict(cohort[:, 4:].copy())  # 10% missing
    assert np.allclose(table["genes_missing"], 0.1)


def test_a_missing_gene_is_set_to_its_training_mean_not_zero():
    data = make_adata(n_donors=12, cells_per_donor=10, n_genes=20, counts=False)  # values used as given
    clock = Clock.fit(data, model="elastic_net", settings=SMALL)
    member = clock.members["all"]
    assert clock.normalisation == "as_given" and np.count_nonzero(member.coef[:5])
    gone = data[:, 5:].copy()  # the five age genes of make_adata gone
    with pytest.warns(GeneOverlapWarning):
        table = clock.predict(gone)
    X = data.X.toarray().astype(float)
    X[:, :5] = member.feature_mean[:5]  # what the clock must assume for the absent genes
    by_hand = pd.Series(X @ (member.coef / member.scale) + member.intercept).groupby(
        data.obs["donor_id"].to_numpy()).mean()
    np.testing.assert_allclose(table["predicted_age"], by_hand.to_numpy(), rtol=1e-5)
    X[:, :5] = 0.0  # the zero-fill some clocks use gives other predictions
    zero = pd.Series(X @ (member.coef / member.scale) + member.intercept).groupby(
        data.obs["donor_id"].to_numpy()).mean()
    assert np.abs(zero.to_numpy() - table["predicted_age"].to_numpy()).max() > 0.1


def test_all_genes_present_in_another_order_give_the_same_predictions(clocks, cohort):
    order = np.random.default_rng(0).permutation(cohort.n_vars)
    same = clocks["pseudocell_elastic_net"].predict(cohort[:, order].copy())
    np.testing.assert_allclose(same["predicted_age"], clocks["pseudocell_elastic_net"].predict(cohort)["predicted_age"],
                               atol=1e-9)


def test_no_shared_gene_is_a_one_line_error(cohort):
    with pytest.raises(DataValidationError, match="share no gene"):
        align_genes(cohort.X, [f"X{i}" for i in range(cohort.n_vars)], cohort.var_names, None)


# -- age gaps ------------------------------------------------------------------------------------


def test_corrected_gap_carries_no_age_trend_among_its_reference_donors():
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 90, 200)
    predicted = 55 + 0.6 * (age - 55) + rng.normal(0, 4, 200)  # pulled towards the mean
    table = pd.DataFrame({"age": age, "predicted_age": predicted})
    trend = acc.fit_age_trend(age, predicted, "new_controls")
    out = acc.add_age_gaps(table, trend)
    assert np.polyfit(age, out["age_gap"], 1)[0] < -0.3  # the raw gap's bias
    assert abs(np.polyfit(age, out["age_gap_corrected"], 1)[0]) < 1e-9
    assert (out["correction"] == "new_controls").all()
    np.testing.assert_allclose(out["age_gap_scaled"], out["age_gap_corrected"] / trend["slope"])


def test_power_is_alpha_without_an_effect_and_rises_with_donors():
    assert acc.analytic_power(0.0, 5.0, [10])[0] == pytest.approx(0.05, abs=1e-6)
    p = acc.analytic_power(5.0, 5.0, [5, 20, 80])
    assert p[0] < p[1] < p[2] and p[2] > 0.99


def test_the_corrected_gap_recovers_a_planted_acceleration():
    """Cases simulated 15 years older inside: the clock, fitted on controls only, finds them older.

    The corrected gap (clock units) should be about slope x A, the slope-scaled gap about A."""
    from neuroage_utils.chapters import acceleration as chapter

    P = {"n_per_group": 30, "extra_years": 15.0, "cell_fraction": 0.01, "n_genes": 300, "min_cells_per_donor": 15,
         "models": ["pseudobulk_elastic_net"], "boot": 500, "clock": SMALL | {"en_alphas": 6}}
    study = chapter.simulate_study(P, seed=1)
    truth = chapter.planted_truth(study)
    assert np.allclose(truth.loc[truth["group"] == "case", "extra_years"], 15.0)
    row = chapter.acceleration_study(study, P, seed=1)["summary"].iloc[0]
    assert row["diff_corrected_ci95"][0] > 0, "the corrected gap did not find the cases older"
    assert row["diff_scaled_ci95"][0] <= 15.0 <= row["diff_scaled_ci95"][1], row["diff_scaled_ci95"]
    assert row["diff_corrected_ci95"][0] <= row["expected_corrected"] <= row["diff_corrected_ci95"][1]
    assert row["r_bio"] > 0.3  # the gap follows each donor's planted biological age
    assert row["slope_raw"] < 0  # the raw gap's pull towards the training mean age


def test_the_simulator_hook_moves_only_biological_age():
    from neuroage_utils.data.simulate import simulate_cohort

    donors = pd.DataFrame({"donor_id": ["a", "b", "c"], "age": [40.0, 60.0, 80.0], "n_cells": [5, 5, 5]})
    plain = simulate_cohort(n_genes=50, donors=donors, seed=3)
    older = simulate_cohort(n_genes=50, donors=donors.assign(extra_years=[0.0, 10.0, 0.0]), seed=3)
    bio_plain = np.array(plain.uns["simulation"]["donors"]["biological_age"])
    bio_older = np.array(older.uns["simulation"]["donors"]["biological_age"])
    np.testing.assert_allclose(bio_older - bio_plain, [0.0, 10.0, 0.0])
    assert older.uns["simulation"]["donors"]["extra_years"] == [0.0, 10.0, 0.0]
    for key in ("depth_log_offset", "n_cells", "sex"):  # every other planted quantity unchanged
        assert plain.uns["simulation"]["donors"][key] == older.uns["simulation"]["donors"][key]
    np.testing.assert_array_equal(plain.uns["simulation"]["donor_composition"],
                                  older.uns["simulation"]["donor_composition"])


# -- the command line ----------------------------------------------------------------------------


def test_pyproject_installs_the_neuroage_command():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["neuroage"] == "neuroage_utils.clock.cli:main"


def test_cli_fit_then_predict_round_trip(cohort, tmp_path):
    data = tmp_path / "cohort.h5ad"
    cohort.obs["status"] = np.where(cohort.obs["donor_id"].isin(["D00", "D03", "D05", "D08", "D11", "D14"]),
                                    "case", "control")
    cohort.write_h5ad(data)
    fit = _cli("fit", "--data", data, "--model", "pseudobulk_elastic_net", "--out", tmp_path / "clock")
    assert fit.returncode == 0, fit.stderr
    assert "CV MAE" in fit.stdout
    pred = _cli("predict", "--clock", tmp_path / "clock", "--data", data, "--out", tmp_path / "pred.csv",
                "--control-key", "status", "--control-value", "control")
    assert pred.returncode == 0, pred.stderr
    table = pd.read_csv(tmp_path / "pred.csv")
    assert list(table.columns) == ["donor_id", "age", "predicted_age", "age_gap", "age_gap_corrected", "correction",
                                   "age_gap_scaled", "n_cells", "genes_missing"]
    assert len(table) == 15 and (table["correction"] == "new_controls").all() and (table["n_cells"] == 20).all()
    in_python = Clock.load(tmp_path / "clock").predict(cohort)
    np.testing.assert_allclose(table["predicted_age"], in_python["predicted_age"], atol=1e-9)
    assert json.loads((tmp_path / "clock" / "training.json").read_text())["data_sha256"] != ""


def test_cli_per_cell_type_rows(tmp_path, monkeypatch):
    from neuroage_utils.clock.cli import main

    monkeypatch.setenv("NEUROAGE_WORKERS", "1")
    data = make_adata(n_donors=12, cells_per_donor=20, n_genes=30)
    data.obs["cell_type"] = np.tile(["A", "B"], data.n_obs // 2)
    data.write_h5ad(tmp_path / "d.h5ad")
    assert main(["fit", "--data", str(tmp_path / "d.h5ad"), "--model", "pseudobulk_elastic_net", "--out",
                 str(tmp_path / "clock"), "--cell-type-key", "cell_type"]) == 0
    assert main(["predict", "--clock", str(tmp_path / "clock"), "--data", str(tmp_path / "d.h5ad"), "--out",
                 str(tmp_path / "p.csv"), "--cell-type-key", "cell_type"]) == 0
    assert [m["name"] for m in json.loads((tmp_path / "clock" / "clock.json").read_text())["members"]] == ["all", "A", "B"]
    table = pd.read_csv(tmp_path / "p.csv")
    assert sorted(table["cell_type"].unique()) == ["A", "B", "all"] and len(table) == 36
    assert (table.loc[table["cell_type"] == "A", "n_cells"] == 10).all()


def test_cli_no_shared_gene_exits_2_with_one_line(clocks, cohort, tmp_path):
    clocks["pseudobulk_elastic_net"].save(tmp_path / "clock")
    other = cohort.copy()
    other.var_names = [f"X{g}" for g in other.var_names]
    other.write_h5ad(tmp_path / "other.h5ad")
    result = _cli("predict", "--clock", tmp_path / "clock", "--data", tmp_path / "other.h5ad", "--out",
                  tmp_path / "p.csv")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "share no gene" in lines[-1]
    assert not (tmp_path / "p.csv").exists()


# The same main() the console script calls, in this process (a subprocess per case costs seconds).


def test_cli_thirty_percent_missing_warns_on_stderr(clocks, cohort, tmp_path, capsys):
    from neuroage_utils.clock.cli import main

    clocks["pseudobulk_elastic_net"].save(tmp_path / "clock")
    cohort[:, 12:].copy().write_h5ad(tmp_path / "partial.h5ad")
    assert main(["predict", "--clock", str(tmp_path / "clock"), "--data", str(tmp_path / "partial.h5ad"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert "warning: 30% of the clock's 40 genes are missing" in capsys.readouterr().err
    assert np.allclose(pd.read_csv(tmp_path / "p.csv")["genes_missing"], 0.3)


@pytest.mark.parametrize("args, message", [
    (["fit", "--data", "missing.h5ad", "--model", "elastic_net", "--out", "x"], "does not exist"),
    (["predict", "--clock", "not_a_clock", "--data", "missing.h5ad", "--out", "p.csv"], "not a clock directory"),
    (["fit", "--data", "logged.h5ad", "--model", "pseudobulk_elastic_net", "--out", "clock"], "not raw counts"),
    (["fit", "--data", "logged.h5ad", "--model", "elastic_net", "--out", "clock", "--donor-key", "ID"],
     "no donor column 'ID'"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    from neuroage_utils.clock.cli import main

    monkeypatch.chdir(tmp_path)
    make_adata(counts=False).write_h5ad(tmp_path / "logged.h5ad")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "clock").exists() and not (tmp_path / "p.csv").exists()


# -- the worked example of the README and the own-cohort page, as printed ---------------------------


def _example_block(path: Path) -> str:
    text = path.read_text().split("<!-- clock-example -->", 1)[1]
    return text.split("```bash\n", 1)[1].split("```", 1)[0]


def test_readme_clock_example_runs_as_printed(tmp_path):
    """The README's commands, run as printed from a checkout whose `.venv/bin` has `python` and the
    `neuroage` console script (here shims that do what pip's wrapper does: call cli.main)."""
    block = _example_block(REPO / "README.md")
    assert block == _example_block(REPO / "book" / "own_cohort.md")  # the page shows the same, tested here
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "neuroage").write_text(f'#!/bin/sh\nexec "{sys.executable}" -c '
                                      '"import sys; from neuroage_utils.clock.cli import main; sys.exit(main())" "$@"\n')
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "NEUROAGE_WORKERS": "1"}
    for line in block.strip().splitlines():
        proc = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
    table = pd.read_csv(tmp_path / "example" / "predictions.csv")
    assert len(table) == 40 and (table["correction"] == "new_controls").all()
    cases = table["donor_id"].str.startswith("CASE")
    assert table.loc[cases, "age_gap_corrected"].mean() > table.loc[~cases, "age_gap_corrected"].mean() + 2
    assert (tmp_path / "example" / "clock" / "MODEL_CARD.md").exists()
    import re  # the README's sentence on this example states what it computes

    stated = float(re.search(r"mean `age_gap_scaled` is ([0-9.]+) years", (REPO / "README.md").read_text()).group(1))
    assert round(table.loc[cases, "age_gap_scaled"].mean(), 1) == pytest.approx(stated, abs=0.15)


def test_neuroage_book_passes_through_to_the_runner(capfd, monkeypatch):
    from neuroage_utils.clock.cli import main

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    assert main(["book", "--list"]) == 0
    assert "acceleration" in capfd.readouterr().out
