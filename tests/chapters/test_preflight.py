"""The pre-flight memory estimate: shapes read without loading, memory available, the refusal."""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from neuroage_utils import run
from neuroage_utils.chapters import preflight
from neuroage_utils.data.cohort import cap_cells_per_donor

from tests.conftest import make_adata


def test_shape_is_read_from_the_file_without_loading_it(h5ad_path):
    adata = make_adata(n_donors=12, cells_per_donor=15, n_genes=30)
    X = adata.X.copy()
    shape = preflight.read_shape(h5ad_path(adata), donor_key="donor_id")
    assert (shape.n_cells, shape.n_genes, shape.nnz) == (180, 30, X.nnz)
    assert X.nnz * 8 + 181 * 4 <= shape.stored_bytes <= X.nnz * 8 + 181 * 8 and not shape.converted  # CSR float32
    assert shape.cells_per_donor == (15,) * 12 and shape.kept_cells == 180
    # counts in a layer of int64 beside a float64 X: both are read, and the counts must be converted
    adata.layers["counts"] = sp.csr_matrix(X.astype(np.int64))
    adata.X = sp.csr_matrix(X.astype(np.float64))
    shape = preflight.read_shape(h5ad_path(adata, "two.h5ad"))
    assert shape.converted and shape.stored_bytes > 2 * X.nnz * 8
    dense = ad.AnnData(X=X.toarray(), obs=adata.obs)
    shape = preflight.read_shape(h5ad_path(dense, "dense.h5ad"))
    assert shape.converted and shape.nnz == X.nnz and shape.stored_bytes == 180 * 30 * 4


def test_a_cap_on_cells_per_donor_shrinks_the_estimate(h5ad_path):
    shape = preflight.read_shape(h5ad_path(make_adata(n_donors=12, cells_per_donor=15)), "donor_id")
    capped = replace(shape, max_cells=5)
    assert capped.kept_cells == 60 and capped.csr_bytes < shape.csr_bytes
    big = replace(shape, n_cells=shape.n_cells * 10_000, nnz=shape.nnz * 10_000, stored_bytes=shape.stored_bytes * 10_000,
                  cells_per_donor=tuple(c * 10_000 for c in shape.cells_per_donor))
    full = preflight.estimate("baselines", big, "quick", workers=2)
    assert preflight.estimate("baselines", replace(big, max_cells=1000), "quick", workers=2).bytes < full.bytes
    assert preflight.estimate("baselines", big, "quick", workers=1).bytes < full.bytes
    room = full.bytes // 2
    cap = preflight.cells_cap_that_fits("baselines", big, "quick", 2, room)
    assert cap is not None and preflight.estimate("baselines", replace(big, max_cells=cap), "quick", 2).bytes <= room
    assert preflight.estimate("baselines", replace(big, max_cells=cap + 1), "quick", 2).bytes > room


def test_cap_cells_per_donor_keeps_at_most_n_per_donor_reproducibly():
    adata = make_adata(n_donors=10, cells_per_donor=15)
    adata = adata[np.r_[0:150:2, 1:150:2]].copy()  # donors interleaved; the file order is kept
    a, b = cap_cells_per_donor(adata, "donor_id", 4, seed=1), cap_cells_per_donor(adata, "donor_id", 4, seed=1)
    assert (a.obs["donor_id"].value_counts() == 4).all() and list(a.obs_names) == list(b.obs_names)
    order = [adata.obs_names.get_loc(n) for n in a.obs_names]
    assert order == sorted(order)
    assert cap_cells_per_donor(adata, "donor_id", 100) is adata


def test_memory_available_from_the_machine_or_the_override(monkeypatch):
    monkeypatch.delenv(preflight.MEMORY_ENV, raising=False)
    n, source = preflight.available_memory()
    assert n > 0 and source
    monkeypatch.setenv(preflight.MEMORY_ENV, "1.5G")
    assert preflight.available_memory() == (1_500_000_000, f"${preflight.MEMORY_ENV}")
    monkeypatch.setenv(preflight.MEMORY_ENV, "lots")
    with pytest.raises(preflight.DataValidationError, match="not a size"):
        preflight.available_memory()


def test_a_run_that_does_not_fit_stops_before_writing_with_one_line(tmp_path, h5ad_path, monkeypatch, capsys):
    path = h5ad_path(make_adata(n_donors=12, cells_per_donor=15))
    out = tmp_path / "out"
    monkeypatch.setenv(preflight.MEMORY_ENV, "50M")
    ran = []
    monkeypatch.setattr(run, "execute_section", lambda *a, **k: ran.append(a[0]) or (0.0, None))
    code = run.main(["--data", str(path), "--only", "data", "baselines", "--no-book", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and ran == []
    line = err[-1]
    assert line.startswith("error: chapter 'baselines' (and 1 more chapter) needs about ")
    assert "0.05 GB is available ($NEUROAGE_MEMORY_AVAILABLE)" in line and "--force" in line
    assert "180 cells x 30 genes" in line
    assert not (out / "results").exists() and not (out / "executed").exists()
    # --force runs it anyway
    monkeypatch.setattr(run, "record_memory", lambda *a, **k: None)
    monkeypatch.setattr(run, "write_status_page", lambda *a, **k: None)
    monkeypatch.setattr(run, "write_paper_page", lambda *a, **k: None)
    assert run.main(["--data", str(path), "--only", "data", "--no-book", "--force", "--out", str(out)]) == 0
    assert ran == ["data"]


def test_the_refusal_names_a_cap_that_fits(h5ad_path):
    shape = preflight.read_shape(h5ad_path(make_adata(n_donors=12, cells_per_donor=15)), "donor_id")
    big = replace(shape, n_cells=shape.n_cells * 20_000, nnz=shape.nnz * 20_000, stored_bytes=shape.stored_bytes * 20_000,
                  cells_per_donor=tuple(c * 20_000 for c in shape.cells_per_donor))
    est = preflight.estimate("baselines", big, "quick", workers=2)
    data = preflight.estimate("data", big, "quick", workers=2)
    line = preflight.refusal([data, est], big, "quick", est.bytes // 2, "MemAvailable")
    assert line.startswith("chapter 'baselines' (and 1 more chapter) needs about") and "\n" not in line
    cap = int(line.split("--max-cells ")[1].split()[0])
    assert 0 < cap < 300_000 and "--profile smoke" not in line  # the smoke profile would not fit either
    for e in (data, est):
        assert preflight.estimate(e.section, replace(big, max_cells=cap), "quick", 2).bytes <= est.bytes // 2


def test_the_streamed_estimate_is_the_sample_plus_a_few_bytes_a_cell(h5ad_path):
    shape = preflight.read_shape(h5ad_path(make_adata(n_donors=12, cells_per_donor=15)), "donor_id")

    def scaled(k, genes=2000):  # k times the cells, at 2,000 genes with the same density
        g = genes / shape.n_genes
        return replace(shape, n_cells=shape.n_cells * k, n_genes=genes, nnz=int(shape.nnz * k * g),
                       stored_bytes=int(shape.stored_bytes * k * g), cells_per_donor=tuple(c * k for c in shape.cells_per_donor))

    half, double = scaled(2_500), scaled(10_000)  # 450,000 and 1.8 M cells x 2,000 genes
    for section in ("data", "svd", "baselines", "nmf"):
        a, b = (preflight.estimate(section, s, "quick", 2, "streamed") for s in (half, double))
        # the sample (the quick profile's 25,000 cells) does not grow: only the per-cell vectors do
        per_cell = (b.bytes - a.bytes) / (double.n_cells - half.n_cells)
        assert per_cell <= preflight.STREAM_BYTES_PER_CELL + 1, (section, per_cell)
        assert b.bytes < preflight.estimate(section, double, "quick", 2).bytes / 5
    big = preflight.estimate("baselines", double, "quick", 2)
    line = preflight.refusal([big], double, "quick", big.bytes // 4, "MemAvailable")
    assert "the streamed data path (--stream" in line


def test_status_page_shows_estimate_beside_peak():
    assert run._memory_cell({"estimate_gb": 1.234, "peak_gb": 0.456}) == "1.2 GB / 0.46 GB"
    assert run._memory_cell({"estimate_gb": 2.0, "peak_gb": None}) == "2.0 GB / -" and run._memory_cell(None) == "-"


def test_record_memory_adds_estimate_and_peak_to_the_results(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "data.json").write_text(json.dumps({"section": "data", "params": {}}))

    class Watch:
        peak = 1_500_000_000

    est = preflight.Estimate("data", 2_000_000_000, {"kernel": 2_000_000_000}, "in-memory", 1)
    memory = run.record_memory(tmp_path, "data", est, Watch(), (8e9, "MemAvailable"), started=0.0)
    doc = json.loads((tmp_path / "results" / "data.json").read_text())
    assert doc["memory"] == memory and memory["estimate_gb"] == 2.0 and memory["peak_gb"] == 1.5
    assert memory["available_gb"] == 8.0 and memory["formula"] == "in-memory"
    assert run.record_memory(tmp_path, "data", est, Watch(), None, started=2e10) is None  # not written by this run


def test_a_chapter_under_max_cells_records_the_cap_and_keeps_it_apart(tmp_path, h5ad_path):
    from neuroage_utils.chapters.chapter import Chapter

    # 40 donors: the split's test donors must be enough to score (results.MIN_SCORED_DONORS)
    path = h5ad_path(make_adata(n_donors=40, cells_per_donor=15))
    full = Chapter("data", data_path=str(path), profile="smoke", out_dir=str(tmp_path), workers=1)
    capped = Chapter("data", data_path=str(path), profile="smoke", out_dir=str(tmp_path), workers=1, max_cells=5)
    assert capped.cohort.n_cells == 200 and capped.cohort.n_donors == 40
    assert capped.data["max_cells_per_donor"] == 5 and capped.data["n_cells_in_file"] == 600
    assert "at most 5 per donor, of 600 in the file" in capped.data_summary()
    assert capped.checkpoint("m") != full.checkpoint("m")
    full.add_null("test", key="null")
    full.finish()
    assert capped.entry("data::null") is None and full.entry("data::null") is not None  # not the same data
    capped.add_null("test", key="null")
    doc = json.loads(capped.finish().read_text())
    assert doc["params"]["max_cells_per_donor"] == 5 and doc["data"]["n_cells"] == 200
