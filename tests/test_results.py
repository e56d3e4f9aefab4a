"""The results contract: schema checks and atomic writing."""

import json

import pytest

from neuroage_utils import results
from neuroage_utils.metrics import donor_table, model_entry


def _doc_args():
    table = donor_table([30, 50, 70], ["a", "b", "c"], [35, 45, 80])
    data = {"path": "x.h5ad", "sha256": "0" * 64, "simulated": True, "n_cells": 3, "n_genes": 2, "n_donors": 3}
    return data, {"elastic_net": model_entry(table, "test"), "vae_poisson": {"skipped": "not counts"}}


def test_write_and_read_roundtrip(tmp_path):
    data, models = _doc_args()
    path = results.write_results(tmp_path, "baselines", data, "smoke", {"a": 1}, 1.5, models)
    doc = results.read_results(tmp_path, "baselines")
    assert path.name == "baselines.json" and doc["models"]["vae_poisson"]["skipped"] == "not counts"
    assert set(doc) == set(results.TOP_LEVEL_KEYS)


def test_invalid_document_is_not_written_and_old_file_survives(tmp_path):
    data, models = _doc_args()
    results.write_results(tmp_path, "svd", data, "smoke", {}, 1.0, models)
    before = (tmp_path / "results" / "svd.json").read_text()
    broken = {"elastic_net": {**models["elastic_net"], "n_donors": 99}}
    with pytest.raises(results.ResultsError):
        results.write_results(tmp_path, "svd", data, "smoke", {}, 1.0, broken)
    assert (tmp_path / "results" / "svd.json").read_text() == before
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["svd.json"]  # no temp files left


def test_nan_becomes_null(tmp_path):
    data, models = _doc_args()
    path = results.write_results(tmp_path, "x", data, "smoke", {"v": float("nan")}, 1.0, models)
    assert json.loads(path.read_text())["params"]["v"] is None
