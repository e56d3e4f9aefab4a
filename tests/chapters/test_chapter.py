"""The chapter helper every notebook uses: data identity, scoring, tuning tables, verdicts."""

import numpy as np
import pytest

from neuroage_utils.models.mlp import MLPRegressor
from neuroage_utils.chapters.chapter import Chapter

from tests.conftest import make_adata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def chapter(tmp_path, h5ad_path):
    path = h5ad_path(make_adata(n_donors=14, cells_per_donor=12, n_genes=25))
    return Chapter("baselines", data_path=str(path), profile="smoke", device="cpu", out_dir=str(tmp_path))


def test_data_identity_and_summary(chapter):
    assert chapter.data["n_donors"] == 14 and chapter.data["simulated"] is False
    assert len(chapter.data["sha256"]) == 64
    assert "cohort.h5ad" in chapter.data_summary() and "user data" in chapter.data_summary()


def test_fit_score_watches_validation_donors_for_early_stopping(chapter):
    X = chapter.cohort.normalized()
    model = MLPRegressor(hidden=(8,), epochs=40, batch_size=32, device="cpu", progress=False,
                         early_stopping_patience=2)
    entry = chapter.fit_score("mlp", model, X, fit=("train",), on="val", watch="val")
    assert entry["split"] == "val" and entry["trained_on"] == ["train"]
    assert "val_mae" in model.history_ and model.history_["val_mae"].notna().all()


def test_tuning_table_ends_with_the_null_row_and_best_ignores_it(chapter):
    X = chapter.cohort.normalized()
    runs = []
    for epochs in (1, 3):
        model = MLPRegressor(hidden=(8,), epochs=epochs, batch_size=32, device="cpu", progress=False)
        runs.append(({"epochs": epochs}, chapter.fit_score(f"m{epochs}", model, X)))
    table, best = chapter.tuning_table(runs, paper_mae=[1.0, 2.0])
    assert list(table["model"]) == ["1", "2", "null (train mean)"]
    assert table["paper MAE"].tolist()[-1] == 13.0 and best in (0, 1)
    assert table["MAE"].iloc[best] == min(e["mae"] for _, e in runs)


def test_verdicts_compare_present_models_and_name_missing_ones(chapter):
    chapter.add_null("test", key="null")
    X = chapter.cohort.normalized()
    chapter.fit_score("mlp", MLPRegressor(hidden=(8,), epochs=2, batch_size=32, device="cpu", progress=False),
                      X, fit=("train", "val"), on="test")
    text = chapter.verdicts([("mlp", "null"), ("mlp", "vae::vae_poisson")], names={"mlp": "the MLP"})
    first, second = text.splitlines()
    assert first.startswith("- The MLP misses the") and "paired bootstrap" in first
    assert "not compared" in second
    assert np.isfinite(chapter.runtime_s)

