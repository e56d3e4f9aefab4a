"""The SVD and NMF chapters' fits (neuroage_utils.chapters.factorisations): streamed over every cell of
the file when the profile asks for it, the same numbers as in memory where the math is the same."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroage_utils import profiles
from neuroage_utils.chapters.chapter import Chapter
from neuroage_utils.chapters.factorisations import nmf_factors, svd_exploration, svd_ridge
from neuroage_utils.data.simulate import write_simulated_h5ad

from tests.conftest import make_adata

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("factor") / "sim.h5ad"
    return write_simulated_h5ad(path, cell_fraction=0.006, n_genes=80, seed=4, min_cells_per_donor=8)


def _chapter(section, path, out, **kwargs) -> Chapter:
    return Chapter(section, data_path=str(path), profile="smoke", device="cpu", out_dir=str(out), **kwargs)


def test_streamed_svd_chapter_gives_the_in_memory_chapter(sim_path, tmp_path):
    memory = _chapter("svd", sim_path, tmp_path / "memory")
    streamed = _chapter("svd", sim_path, tmp_path / "streamed", stream=True)
    assert streamed.factorise_streamed and not memory.factorise_streamed
    assert streamed.cohort.n_cells == streamed.stream.n_cells  # smoke's sample (3,000) holds every cell here
    assert f"every one of its {streamed.stream.n_cells:,} cells" in streamed.data_summary()
    ours, theirs = svd_exploration(streamed), svd_exploration(memory)
    assert ours.streamed and ours.model.backend == "streamed-gram" and not theirs.streamed
    np.testing.assert_allclose(ours.corr.to_numpy(), theirs.corr.to_numpy(), atol=1e-4)
    assert ours.top["component_cell"] == theirs.top["component_cell"]
    assert ours.top["component_donor"] == theirs.top["component_donor"]
    for key in ("q95_cell", "q95_donor", "p_cell", "p_donor"):
        assert ours.chance[key] == pytest.approx(theirs.chance[key], abs=1e-3), key
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=2e-3 * np.abs(theirs.scores).max())
    got, expected = svd_ridge(streamed, ours), svd_ridge(memory, theirs)
    assert got["ridge_alpha"] == expected["ridge_alpha"]
    assert got["mae"] == pytest.approx(expected["mae"], rel=1e-5)
    np.testing.assert_allclose([p["predicted"] for p in got["predictions"]],
                               [p["predicted"] for p in expected["predictions"]], rtol=1e-5)
    params = json.loads(streamed.finish().read_text())["params"]
    record = params["factorisation"]
    assert params["streamed"] is True and params["stream_every_cell"] is True
    assert record["every_cell"] is True and record["n_components"] == 8 == ours.n_components
    assert record["fit_cells"] == int(streamed.stream.mask("train").sum())
    assert record["scored_cells"] == streamed.stream.n_cells and record["downstream"]["cells"] == record["fit_cells"]
    assert params["linalg_backend_used"] == {"svd": "streamed-gram"}
    assert ours.sentence.startswith("The SVD (8 components) was fitted in streamed passes over all ")


def test_streamed_nmf_reads_every_cell_and_its_mlp_the_sample(sim_path, tmp_path, monkeypatch):
    monkeypatch.setitem(profiles.PROFILES["smoke"]["data"], "stream_sample_cells", 500)
    chapter = _chapter("nmf", sim_path, tmp_path, stream=True)
    c, stream = chapter.cohort, chapter.stream
    assert c.n_cells < stream.n_cells and "a sample of" in chapter.data_summary()
    run = nmf_factors(chapter)
    record = run.record
    trainval = int(stream.mask("train", "val").sum())
    assert record["every_cell"] is True and record["fit_cells"] == trainval > int(c.mask("train", "val").sum())
    assert record["scored_cells"] == stream.n_cells == int(run.summary.counts.sum())
    assert record["downstream"] == {"model": "the MLP on its factors", "cells": int(c.mask("train", "val").sum()),
                                    "splits": "training and validation", "sample": True}
    assert run.scores.shape == (c.n_cells, run.n_components) and (run.scores >= 0).all()
    assert "of the per-donor sample" in run.sentence and "streamed passes" in run.sentence
    assert not list((tmp_path / ".cache").glob("nmf-usages-*"))  # the memory-mapped usages are removed
    # the in-memory NMF of every cell (another start: NNDSVDa) reaches the same fit
    reference = nmf_factors(_chapter("nmf", sim_path, tmp_path / "memory"))
    assert record["reconstruction_err"] <= 1.02 * reference.record["reconstruction_err"]


def test_a_profile_without_every_cell_fits_the_sample_in_memory(sim_path, tmp_path, monkeypatch):
    monkeypatch.setitem(profiles.PROFILES["smoke"]["data"], "stream_sample_cells", 500)
    assert profiles.section_params("quick", "svd")["stream_every_cell"] is False  # the quick profile's choice
    assert profiles.section_params("paper", "nmf")["stream_every_cell"] is True
    monkeypatch.setitem(profiles.PROFILES["smoke"]["svd"], "stream_every_cell", False)  # as the quick profile
    chapter = _chapter("svd", sim_path, tmp_path, stream=True)
    assert chapter.stream is not None and not chapter.factorise_streamed
    run = svd_exploration(chapter)
    svd_ridge(chapter, run)
    record = run.record
    assert record["streamed"] is True and record["every_cell"] is False and record["backend"] == "arpack"
    assert record["fit_cells"] == int(chapter.cohort.mask("train").sum())
    assert record["scored_cells"] == chapter.cohort.n_cells < chapter.stream.n_cells
    assert record["downstream"]["sample"] is True
    assert "does not stream the factorisations over every cell" in run.sentence


@pytest.mark.parametrize("stream", [True, None])
def test_nmf_skips_negative_values_with_the_reason(h5ad_path, tmp_path, stream):
    adata = make_adata(n_donors=14, cells_per_donor=12, n_genes=40)
    dense = np.log1p(adata.X.toarray())
    adata.X = ((dense - dense.mean(0)) / (dense.std(0) + 1e-6)).astype(np.float32)
    chapter = Chapter("nmf", data_path=str(h5ad_path(adata)), profile="smoke", device="cpu", out_dir=str(tmp_path),
                      stream=stream, allow_non_counts=True)
    assert chapter.factorise_streamed is bool(stream)
    assert nmf_factors(chapter) is None
    assert "non-negative" in chapter.models["nmf_mlp"]["skipped"]
