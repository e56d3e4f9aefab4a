"""What other modules and the notebooks rely on from a chapter: typed access to its fits and
entries, the data-source path (the real-donor chapter), and the notebook anatomy."""

import pytest

from neuroage_utils.chapters.chapter import Chapter

from tests.conftest import make_adata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def chapter(tmp_path, h5ad_path):
    path = h5ad_path(make_adata(n_donors=14, cells_per_donor=12, n_genes=25))
    return Chapter("baselines", data_path=str(path), profile="smoke", device="cpu", out_dir=str(tmp_path))


def test_typed_access_for_other_modules(chapter):
    from neuroage_utils.results import tuning_key

    X = chapter.cohort.normalized()
    key = tuning_key("mlp", 1, 2)
    assert key == "mlp_t1_m2"
    chapter.fit_score(key, chapter.mlp({"hidden": [8], "lr": 1e-3}, epochs=2, progress=False), X)
    assert chapter.has_fitted(key) and chapter.fitted_model(key).epochs == 2
    assert chapter.annotate(key, steps=12)["steps"] == 12
    assert chapter.release(key) is not None and not chapter.has_fitted(key) and key in chapter.models
    with pytest.raises(KeyError, match="no fitted model"):
        chapter.fitted_model(key)
    with pytest.raises(KeyError, match="no results entry"):
        chapter.annotate("nothing", steps=1)


def test_a_section_with_its_own_data_loads_through_its_source(tmp_path, monkeypatch):
    """The real-donor chapter's path: no cohort, the source's loader, data record and sentence, one finish."""
    from neuroage_utils import results
    from neuroage_utils.chapters import chapter as chapter_module
    from neuroage_utils.data.sources import DataSource

    record = {"path": "donors", "sha256": "absent", "simulated": False, "n_cells": 0, "n_genes": 0, "n_donors": 0}
    source = DataSource(load=lambda out: {"loaded_from": out}, record=lambda data: dict(record),
                        summary=lambda data, P, profile: f"ran on no data ({profile})", fingerprint=lambda out: "x")
    monkeypatch.setattr(chapter_module, "source_for", lambda section: source if section == "realdata" else None)
    ch = Chapter.start("realdata", {"data_path": "", "profile": "smoke", "device": "cpu", "seed": 0,
                                    "out_dir": str(tmp_path)})
    assert ch.cohort is None and ch.donor_data == {"loaded_from": tmp_path}
    assert ch.data_summary() == "ran on no data (smoke)" and ch.workers == 1  # the profile's n_jobs
    ch.add_models({"cd4t": {"null": {"skipped": "absent"}}})
    path = ch.finish()
    doc = results.read_results(tmp_path, "realdata")
    assert path.exists() and doc["data"]["sha256"] == "absent" and doc["models"]["cd4t"]["null"]["skipped"]
    assert doc["params"]["n_repeats"] == 1 and "split_source" not in doc["params"]


def test_every_notebook_opens_with_chapter_start_and_ends_with_finish():
    """The notebook anatomy, the real-donor notebook included: parameters cell, then Chapter.start;
    the last code cell writes the results through the chapter (finish, or the summary's write_summary,
    which is chapter.finish with the CV blocks)."""
    import json
    from pathlib import Path

    notebooks = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), path.name
        assert "Chapter.start(" in "".join(code[1]["source"]), path.name
        last = "".join(code[-1]["source"])
        assert "chapter.finish(" in last or "write_summary(chapter" in last, path.name
