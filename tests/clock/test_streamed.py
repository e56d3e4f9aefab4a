"""Clocks fitted on and applied to a file read block by block equal the in-memory ones; sampled models say so."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from neuroage_utils.clock import Clock
from neuroage_utils.clock.streamed import fit_streamed, predict_streamed
from neuroage_utils.errors import DataValidationError

from tests.conftest import make_adata

SMALL = {"folds": 3, "inner_splits": 3, "en_l1": [0.5], "en_alphas": 5, "boot": 200, "workers": 1,
         "pseudocells": {"n_per_donor": 4, "cells_per_pseudocell": 8}}
BLOCK = 37  # blocks that cut through donors, so sums cross block edges


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """15 donors x 20 cells, two cell types (A / B, not aligned with the blocks), 10 case donors."""
    adata = make_adata(n_donors=15, cells_per_donor=20, n_genes=40)
    adata.obs["cell_type"] = np.tile(["A", "B", "B"], adata.n_obs // 3)
    cases = adata.obs["donor_id"].isin(["D01", "D04", "D07"])
    adata.obs["status"] = np.where(cases, "case", "control")
    path = tmp_path_factory.mktemp("streamed") / "cohort.h5ad"
    adata.write_h5ad(path)
    return path


def _same(a: Clock, b: Clock):
    assert list(a.members) == list(b.members)
    for name in a.members:
        ma, mb = a.members[name], b.members[name]
        for key in ("coef", "scale", "feature_mean", "count_share"):
            x, y = getattr(ma, key), getattr(mb, key)
            assert (x is None) == (y is None)
            if x is not None:  # summed counts are exact in float64: the same profiles, bit for bit
                np.testing.assert_array_equal(x, y, err_msg=f"{name}.{key}")
        assert ma.intercept == mb.intercept
        for key in ("alpha", "l1_ratio", "n_nonzero", "n_donors", "n_cells", "n_rows_fitted"):
            assert ma.info[key] == pytest.approx(mb.info[key], rel=1e-12), (name, key)
        assert ma.info["cv_mae"] == mb.info["cv_mae"] and ma.info["cv_mae_ci95"] == mb.info["cv_mae_ci95"]
        assert ma.info["cv_predictions"] == mb.info["cv_predictions"]
    for key in ("n_donors", "n_cells", "n_genes", "donor_ids", "age_range", "data_sha256", "fitted_on",
                "cell_types_skipped"):
        assert a.training[key] == b.training[key], key


@pytest.mark.parametrize("keys", [
    {},
    {"cell_type_key": "cell_type"},
    {"control_key": "status", "control_value": "control"},
    {"cell_type_key": "cell_type", "control_key": "status", "control_value": "control"},
], ids=["pooled", "cell_types", "controls", "both"])
def test_streamed_pseudobulk_fit_equals_the_in_memory_fit(data_file, keys):
    memory = Clock.fit(ad.read_h5ad(data_file), model="pseudobulk_elastic_net", settings=SMALL, data_path=data_file,
                       **keys)
    streamed = fit_streamed(data_file, model="pseudobulk_elastic_net", settings=SMALL, block_rows=BLOCK, **keys)
    _same(memory, streamed)
    assert streamed.training["streamed"] is True and "streamed" not in memory.training
    expected_cells = 300 if "control_key" not in keys else 240
    assert streamed.training["n_cells"] == expected_cells
    if "cell_type_key" in keys:
        assert list(streamed.members) == ["all", "A", "B"]
        members = streamed.members
        assert members["A"].info["n_cells"] + members["B"].info["n_cells"] == members["all"].info["n_cells"]


@pytest.mark.parametrize("model", ["pseudobulk_elastic_net", "pseudocell_elastic_net", "elastic_net"])
@pytest.mark.parametrize("keys", [{}, {"cell_type_key": "cell_type", "control_key": "status",
                                       "control_value": "control"}], ids=["plain", "types_controls"])
def test_streamed_predict_equals_the_in_memory_predict(data_file, model, keys):
    adata = ad.read_h5ad(data_file)
    clock = Clock.fit(adata, model=model, settings=SMALL, cell_type_key=keys.get("cell_type_key"))
    partial = adata[:, 5:].copy()  # 12.5% of the clock's genes missing: the rest column is in play
    path = data_file.parent / f"partial_{model}.h5ad"
    partial.write_h5ad(path)
    for data, file in ((adata, data_file), (partial, path)):
        memory = clock.predict(data, **keys)
        streamed = predict_streamed(clock, file, block_rows=BLOCK, **keys)
        assert list(streamed.columns) == list(memory.columns) and len(streamed) == len(memory)
        pd.testing.assert_frame_equal(streamed, memory, check_exact=False, rtol=0, atol=1e-9)


def test_sampled_models_record_their_sample(data_file, monkeypatch):
    from neuroage_utils.clock import streamed as module

    monkeypatch.setattr(module, "PSEUDOCELL_SAMPLE_CELLS", 150)
    clock = fit_streamed(data_file, model="pseudocell_elastic_net", settings=SMALL, block_rows=BLOCK)
    sample = clock.training["cell_sample"]
    assert sample["cells"] == 150 and sample["of_cells"] == 300 and sample["per_donor_cap"] == 10
    assert clock.training["n_cells"] == 300 and clock.members["all"].info["n_cells"] == 150
    cell = fit_streamed(data_file, model="elastic_net", settings={**SMALL, "en_max_cells": 90}, block_rows=BLOCK)
    assert cell.training["cell_sample"]["cells"] == 90 and cell.training["cell_sample"]["per_donor_cap"] == 6
    out = cell.save(data_file.parent / "sampled_clock")
    assert json.loads((out / "training.json").read_text())["cell_sample"]["cells"] == 90
    card = (out / "MODEL_CARD.md").read_text()
    assert "sample of 90 of the 300 cells" in card and "streamed" in card


def test_cli_stream_flag_end_to_end(data_file, tmp_path, monkeypatch, capsys):
    from neuroage_utils.clock.cli import main

    monkeypatch.setenv("NEUROAGE_WORKERS", "1")
    args = ["--data", str(data_file), "--model", "pseudobulk_elastic_net", "--cell-type-key", "cell_type"]
    assert main(["fit", *args, "--out", str(tmp_path / "streamed"), "--stream"]) == 0
    assert main(["fit", *args, "--out", str(tmp_path / "memory")]) == 0
    streamed, memory = Clock.load(tmp_path / "streamed"), Clock.load(tmp_path / "memory")
    assert streamed.training["streamed"] is True and "streamed" not in memory.training
    _same(memory, streamed)
    card = (tmp_path / "streamed" / "MODEL_CARD.md").read_text()
    assert "streamed" in card and "sample" not in card
    pred = ["predict", "--clock", str(tmp_path / "streamed"), "--data", str(data_file), "--cell-type-key", "cell_type",
            "--control-key", "status", "--control-value", "control"]
    assert main([*pred, "--out", str(tmp_path / "s.csv"), "--stream"]) == 0
    assert main([*pred, "--out", str(tmp_path / "m.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s.csv"), pd.read_csv(tmp_path / "m.csv"),
                                  check_exact=False, rtol=0, atol=1e-9)


@pytest.mark.parametrize("command, extra, message", [
    ("fit", ["--control-key", "status", "--control-value", "ctrl"], "no cell has obs['status'] == 'ctrl'"),
    ("fit", ["--control-key", "nope", "--control-value", "x"], "obs has no column 'nope'"),
    ("fit", ["--cell-type-key", "kind"], "obs has no column 'kind'"),
    ("fit", ["--donor-key", "ID"], "no donor column 'ID'"),
    ("predict", ["--cell-type-key", "kind"], "obs has no column 'kind'"),
    ("predict", ["--control-key", "status"], "a control key needs a control value"),
])
def test_streamed_bad_input_is_the_in_memory_one_line(data_file, tmp_path, monkeypatch, capsys, command, extra,
                                                      message):
    from neuroage_utils.clock.cli import main

    monkeypatch.setenv("NEUROAGE_WORKERS", "1")
    if command == "fit":
        base = ["fit", "--data", str(data_file), "--model", "pseudobulk_elastic_net", "--out", str(tmp_path / "c")]
    else:
        Clock.fit(ad.read_h5ad(data_file), settings=SMALL).save(tmp_path / "clock")
        base = ["predict", "--clock", str(tmp_path / "clock"), "--data", str(data_file), "--out", str(tmp_path / "p.csv")]
    errors = []
    for flag in (["--stream"], []):
        assert main([*base, *extra, *flag]) == 2
        errors.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert errors[0] == errors[1] and message in errors[0]
    assert not (tmp_path / "c").exists() and not (tmp_path / "p.csv").exists()


def test_streamed_fit_refuses_non_counts_for_summed_models(tmp_path):
    path = tmp_path / "logged.h5ad"
    make_adata(counts=False).write_h5ad(path)
    with pytest.raises(DataValidationError, match="not raw counts"):
        fit_streamed(path, model="pseudobulk_elastic_net", settings=SMALL)


def test_readme_states_the_streaming_numbers_of_the_code():
    import re
    from pathlib import Path

    from neuroage_utils.clock.models import DEFAULT_SETTINGS
    from neuroage_utils.clock.streamed import PSEUDOCELL_SAMPLE_CELLS
    from neuroage_utils.data.stream import STREAM_ABOVE_NNZ

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    bullet = text[text.index("- Big files:"):text.index("## The runner")]
    mantissa, exponent = re.search(r"above (\d+) x 10\^(\d+) stored values", bullet).groups()
    assert int(mantissa) * 10 ** int(exponent) == STREAM_ABOVE_NNZ
    assert f"sample of {PSEUDOCELL_SAMPLE_CELLS:,} cells" in bullet
    assert f"`en_max_cells` ({DEFAULT_SETTINGS['en_max_cells']:,};" in bullet


def test_obs_columns_read_in_blocks_equal_the_in_memory_strings(tmp_path):
    """Categorical, plain string, boolean, integer and float columns (with missing values) become codes
    whose names are the in-memory ``astype(str)`` of every cell."""
    from neuroage_utils.data.stream_obs import column_codes, column_numbers, missing_code

    adata = make_adata(n_donors=12, cells_per_donor=10, n_genes=5)
    n = adata.n_obs
    rng = np.random.default_rng(1)
    adata.obs["text"] = rng.choice(["b", "a", "c"], n)
    adata.obs["cat"] = pd.Categorical(rng.choice(["x", "y", None], n), categories=["z", "y", "x"])
    adata.obs["flag"] = rng.random(n) > 0.5
    adata.obs["count"] = rng.integers(0, 4, n)
    adata.obs["level"] = np.where(rng.random(n) > 0.8, np.nan, rng.integers(0, 3, n).astype(float))
    path = tmp_path / "obs.h5ad"
    adata.write_h5ad(path, convert_strings_to_categoricals=False)
    for key in ("text", "cat", "flag", "count", "level"):
        names, codes = column_codes(path, key, block_rows=7)
        column = adata.obs[key]
        missing = codes == missing_code(codes)
        assert codes.dtype == np.uint8 and (missing == column.isna().to_numpy()).all(), key
        assert list(names) == sorted(set(column.dropna().astype(str))), key
        assert (names[codes[~missing]] == column.dropna().astype(str).to_numpy()).all(), key
    ages = np.concatenate([v for _, v in column_numbers(path, "level", block_rows=7)])
    np.testing.assert_array_equal(ages, adata.obs["level"].to_numpy())


def test_streamed_predict_on_three_donors_without_ages(data_file, tmp_path):
    """New data may hold fewer donors than a fit needs, and no age column: the streamed predict, like
    the in-memory one, still gives every donor a prediction."""
    adata = ad.read_h5ad(data_file)
    clock = Clock.fit(adata, settings=SMALL)
    few = adata[adata.obs["donor_id"].isin(["D02", "D05", "D09"])].copy()
    del few.obs["age"]
    path = tmp_path / "few.h5ad"
    few.write_h5ad(path)
    memory, streamed = clock.predict(few), predict_streamed(clock, path, block_rows=BLOCK)
    assert len(streamed) == 3 and streamed["age"].isna().all()
    pd.testing.assert_frame_equal(streamed, memory, check_exact=False, rtol=0, atol=1e-9)


def test_a_missing_cell_type_is_the_in_memory_one_line(data_file, tmp_path):
    adata = ad.read_h5ad(data_file)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[[3, 50], adata.obs.columns.get_loc("cell_type")] = None
    path = tmp_path / "holes.h5ad"
    adata.write_h5ad(path)
    messages = []
    for fit in (lambda: Clock.fit(ad.read_h5ad(path), settings=SMALL, cell_type_key="cell_type"),
                lambda: fit_streamed(path, settings=SMALL, cell_type_key="cell_type")):
        with pytest.raises(DataValidationError) as caught:
            fit()
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == "2 cells have no value in obs['cell_type']: fill or drop them"
