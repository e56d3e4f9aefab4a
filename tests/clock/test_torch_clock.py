"""Torch clocks (`neuroage fit --model vae|mlp [--nproc N]`): held-out donors, no pickle, load and predict, world size."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

from neuroage_utils.clock import Clock, GeneOverlapWarning
from neuroage_utils.clock.cli import main
from neuroage_utils.clock.torch_clock import MIN_HELD_OUT, TorchClock, fit_torch_clock

from tests.conftest import make_adata

N_DONORS, CELLS, GENES = 15, 20, 40  # 300 cells
TINY = {"mlp": {"epochs": 2, "hidden": [16], "batch_size": 64, "progress": False},
        "vae": {"epochs": 2, "hidden": [16], "latent": 4, "age_hidden": [8], "batch_size": 64, "progress": False}}
CLOCK_FILES = ["MODEL_CARD.md", "clock.json", "genes.json", "parameters.npz", "training.json"]


@pytest.fixture(scope="module")
def cohort():
    return make_adata(n_donors=N_DONORS, cells_per_donor=CELLS, n_genes=GENES)


@pytest.fixture(scope="module")
def cohort_file(cohort, tmp_path_factory):
    path = tmp_path_factory.mktemp("torchclock") / "cohort.h5ad"
    cohort.write_h5ad(path)
    return path


def _fit(path, out, model, *extra):
    return main(["fit", "--data", str(path), "--model", model, "--out", str(out), "--device", "cpu",
                 "--params", json.dumps(TINY[model]), *map(str, extra)])


def _assert_no_pickle(out):
    assert sorted(p.name for p in out.iterdir()) == CLOCK_FILES  # no model.pt, no .pkl
    with zipfile.ZipFile(out / "parameters.npz") as z:  # every member a plain .npy array
        for name in z.namelist():
            assert name.endswith(".npy") and z.read(name)[:6] == b"\x93NUMPY", name
    with np.load(out / "parameters.npz", allow_pickle=False) as npz:
        names = npz.files
        assert all(npz[k].dtype != object for k in names)
    assert any(n.startswith("net.") for n in names) and "gene.count_share" in names
    for path in out.glob("*.json"):
        json.loads(path.read_text())


@pytest.mark.parametrize("model", ["mlp", "vae"])
def test_one_process_clock_fits_saves_loads_and_predicts_the_held_out_donors_it_scored(cohort_file, tmp_path, model):
    out = tmp_path / "clock"
    assert _fit(cohort_file, out, model) == 0
    _assert_no_pickle(out)
    t = json.loads((out / "training.json").read_text())
    assert (t["world_size"], t["nnodes"], t["backend"], t["precision"]) == (1, 1, None, "float32")
    assert t["device"].startswith("cpu") and t["cells_per_second_per_rank"] > 0 and t["epochs"] == 2
    held, train = set(t["held_out_donor_ids"]), set(t["train_donor_ids"])
    assert not held & train and len(held | train) == N_DONORS and len(held) == MIN_HELD_OUT
    assert t["n_train_cells"] == len(train) * CELLS == sum(t["cells_per_rank"])
    scored = pd.DataFrame(t["held_out"]["predictions"]).set_index("donor_id")
    assert set(scored.index) == held
    assert t["held_out"]["mae"] == pytest.approx(float((scored["predicted"] - scored["age"]).abs().mean()))
    lo, hi = t["held_out"]["mae_ci95"]
    assert lo <= t["held_out"]["mae"] <= hi
    # the loaded network predicts the held-out donors as the trained one did when it was scored
    csv = tmp_path / "pred.csv"
    assert main(["predict", "--clock", str(out), "--data", str(cohort_file), "--out", str(csv)]) == 0
    pred = pd.read_csv(csv, dtype={"donor_id": str}).set_index("donor_id")
    assert len(pred) == N_DONORS and (pred["correction"] == "held_out_donors").all()
    np.testing.assert_allclose(pred.loc[scored.index, "predicted_age"], scored["predicted"], rtol=0, atol=1e-6)
    card = (out / "MODEL_CARD.md").read_text()
    assert "held-out donors" in card and "not refitted on all donors" in card


def test_held_out_donors_are_age_stratified(cohort_file, tmp_path):
    clock = fit_torch_clock(cohort_file, "mlp", params=TINY["mlp"], device="cpu", seed=4)
    ages = pd.Series(np.linspace(25, 90, N_DONORS).round(), index=[f"D{i:02d}" for i in range(N_DONORS)])
    bands = {int(np.flatnonzero(ages.index == d)[0]) // 5 for d in clock.training["held_out_donor_ids"]}
    assert bands == {0, 1, 2}  # one donor from each age band of five donors


def test_save_load_round_trip_rebuilds_the_same_network(cohort, cohort_file, tmp_path):
    clock = fit_torch_clock(cohort_file, "vae", params=TINY["vae"], device="cpu")
    before = clock.predict(cohort)
    loaded = Clock.load(clock.save(tmp_path / "clock"))
    assert isinstance(loaded, TorchClock) and loaded.estimator.module_ is not clock.estimator.module_
    after = loaded.predict(cohort)
    pd.testing.assert_frame_equal(before, after, check_exact=False, rtol=0, atol=1e-9)
    # missing genes: a warning, the share in the table, finite predictions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        partial = loaded.predict(cohort[:, 10:].copy())
    assert any(issubclass(w.category, GeneOverlapWarning) for w in caught)
    assert np.isfinite(partial["predicted_age"]).all() and (partial["genes_missing"] == 0.25).all()


def test_a_changed_parameter_file_is_refused(cohort_file, tmp_path):
    out = fit_torch_clock(cohort_file, "mlp", params=TINY["mlp"], device="cpu").save(tmp_path / "clock")
    with np.load(out / "parameters.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["gene.mean"] = arrays["gene.mean"] + 1
    np.savez(out / "parameters.npz", **arrays)
    with pytest.raises(Exception, match="changed after the clock was saved"):
        Clock.load(out)


@pytest.mark.parametrize("extra, message", [
    (["--cell-type-key", "donor_id"], "per-cell-type clocks are elastic nets only"),
    (["--params", "{not json"], "--params is not valid JSON"),
    (["--params", '{"early_stopping_patience": 3}'], "early stopping would pick the epoch"),
    (["--params", '{"widths": [3]}'], "--params for mlp"),
    (["--nproc", "0"], "need nproc >= 1"),
    (["--nnodes", "2"], "pass --master"),
])
def test_bad_torch_options_exit_2_with_one_line(cohort_file, tmp_path, capsys, extra, message):
    args = ["fit", "--data", str(cohort_file), "--model", "mlp", "--out", str(tmp_path / "c"), "--device", "cpu", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "c").exists()


def test_vae_clock_refuses_values_that_are_not_counts(tmp_path, capsys):
    path = tmp_path / "logged.h5ad"
    make_adata(n_donors=N_DONORS, cells_per_donor=5, n_genes=10, counts=False).write_h5ad(path)
    assert _fit(path, tmp_path / "c", "vae") == 2
    assert "needs raw UMI counts" in capsys.readouterr().err


def test_two_gloo_processes_train_the_clock_and_record_the_world_size(cohort_file, tmp_path):
    """``--nproc 2``: DDP over gloo under torchrun (about half a minute on 2 busy cores, mostly start-up)."""
    out = tmp_path / "clock"
    assert _fit(cohort_file, out, "mlp", "--nproc", 2) == 0
    _assert_no_pickle(out)
    t = json.loads((out / "training.json").read_text())
    assert (t["world_size"], t["nnodes"], t["nproc_per_node"], t["backend"]) == (2, 1, 2, "gloo")
    assert len(t["cells_per_rank"]) == 2 and sum(t["cells_per_rank"]) == t["n_train_cells"]
    assert t["cells_per_second_per_rank"] > 0 and len(t["history"]) == 2
    csv = tmp_path / "pred.csv"
    assert main(["predict", "--clock", str(out), "--data", str(cohort_file), "--out", str(csv)]) == 0
    pred = pd.read_csv(csv, dtype={"donor_id": str}).set_index("donor_id")
    scored = pd.DataFrame(t["held_out"]["predictions"]).set_index("donor_id")
    np.testing.assert_allclose(pred.loc[scored.index, "predicted_age"], scored["predicted"], rtol=0, atol=1e-6)


def test_controls_only_train_and_score_and_mixed_donors_are_refused(cohort, tmp_path, capsys):
    data = cohort.copy()
    data.obs["group"] = np.where(data.obs["donor_id"].isin([f"D{i:02d}" for i in range(12)]), "control", "case")
    path = tmp_path / "study.h5ad"
    data.write_h5ad(path)
    clock = fit_torch_clock(path, "mlp", params=TINY["mlp"], device="cpu", control_key="group", control_value="control")
    t = clock.training
    assert t["n_donors"] == 12 and not {"D12", "D13", "D14"} & set(t["train_donor_ids"] + t["held_out_donor_ids"])
    data.obs.loc[data.obs.index[0], "group"] = "case"  # one cell of control donor D00 marked a case
    data.write_h5ad(path)
    assert _fit(path, tmp_path / "c", "mlp", "--control-key", "group", "--control-value", "control") == 2
    assert "donor D00 has control and non-control cells" in capsys.readouterr().err


def test_mlp_clock_on_values_that_are_not_counts_uses_them_as_given(tmp_path):
    data = make_adata(n_donors=N_DONORS, cells_per_donor=CELLS, n_genes=GENES, counts=False)
    path = tmp_path / "logged.h5ad"
    data.write_h5ad(path)
    clock = fit_torch_clock(path, "mlp", params=TINY["mlp"], device="cpu")
    assert clock.normalisation == "as_given"
    np.testing.assert_allclose(clock.gene_mean, np.asarray(data.X[np.isin(data.obs["donor_id"],
                                                                          clock.training["train_donor_ids"])].mean(0)).ravel(),
                               rtol=1e-5)
    table = Clock.load(clock.save(tmp_path / "clock")).predict(data)
    assert len(table) == N_DONORS and np.isfinite(table["predicted_age"]).all()


def test_an_out_directory_that_is_not_a_clock_is_refused_before_training(cohort_file, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert _fit(cohort_file, tmp_path, "mlp") == 2
    assert "is not a clock directory" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
