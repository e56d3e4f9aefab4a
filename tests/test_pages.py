"""Pages a reader trusts at a glance: every sentence builder on each of its branches, numbers without
template leaks ("-0.00", "p 0.000", internal keys), chance levels beside "best of k", figures whose
text does not collide, one source for the build time, downloads, interactive tables, and an
introduction that links every page of the table of contents."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from neuroage_utils import metrics  # noqa: E402
from neuroage_utils.chapters import donor_clocks, summary  # noqa: E402
from neuroage_utils.models.svd import (chance_best_abs_r, chance_note, component_age_correlations,  # noqa: E402
                                       top_components, top_components_table)
from neuroage_utils.report import benchfacts, plots, summary_plots, tables  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# Sentence builders, branch by branch
# --------------------------------------------------------------------------------------------------

def _cmp(d, lo, hi, n=11):
    return {"difference": d, "ci95": [lo, hi], "n_donors": n, "excludes_zero": bool(lo > 0 or hi < 0)}


def test_comparison_sentence_better():
    text = metrics.describe_difference("NMF + MLP", "the null model", _cmp(-7.9, -10.1, -5.2))
    assert text == ("NMF + MLP misses the 11 donors by 7.90 years less on average than the null model (paired "
                    "bootstrap 95% interval of the difference: -10.10 to -5.20 years): better, the interval "
                    "excludes zero.")


def test_comparison_sentence_worse():
    text = metrics.describe_difference("the MLP", "the elastic net", _cmp(2.1, 0.4, 3.9, n=49))
    assert text.startswith("The MLP misses the 49 donors by 2.10 years more on average than the elastic net")
    assert text.endswith(": worse, the interval excludes zero.")
    assert "lower" not in text and "higher" not in text  # "by 7.90 years lower ... than": the garbled form


def test_comparison_sentence_indistinguishable_and_equal():
    text = metrics.describe_difference("SVD + ridge", "the null model", _cmp(0.5, -1.2, 2.3))
    assert "by 0.50 years more on average than the null model" in text
    assert text.endswith("indistinguishable, the interval includes zero, so these 11 donors cannot tell the two apart.")
    same = metrics.describe_difference("SVD + ridge", "the null model", _cmp(0.001, -1.0, 1.0))
    assert "misses the 11 donors by as much on average as the null model" in same
    assert "0.00 years" not in same


def test_chapter_verdict_bullets_name_models_never_keys():
    from neuroage_utils.report.chapter_page import verdict_line

    def entry(errors):
        return {"predictions": [{"donor_id": f"d{i}", "age": 50.0, "predicted": 50.0 + e} for i, e in enumerate(errors)]}

    better = verdict_line("NMF + MLP", "the null model", entry([1, 2, 1, 2, 1, 1]), entry([9, 8, 9, 7, 9, 8]))
    assert better.startswith("- NMF + MLP misses the 6 donors by") and better.endswith("better, the interval excludes zero.")
    missing = verdict_line("NMF + MLP", "the MLP on genes", entry([1, 2]), None)
    assert missing == "- NMF + MLP vs the MLP on genes: not compared (the MLP on genes was not run on these data)."
    assert "::" not in missing


def test_real_donor_verdicts_say_better_worse_or_not_distinguishable():
    assert donor_clocks._verdict(_cmp(-3.0, -5.0, -1.0), "the null") == \
        "the interval excludes zero: better than the null"
    assert donor_clocks._verdict(_cmp(3.0, 1.0, 5.0), "the null") == "the interval excludes zero: worse than the null"
    assert donor_clocks._verdict(_cmp(0.3, -1.0, 1.5), "the published clock") == \
        "the interval includes zero: not distinguishable from the published clock"


def test_ground_truth_note_simulated_or_not():
    assert summary.ground_truth_note(None) == ("There is no ground-truth table: these data are not simulated, so no "
                                               "gene is known to change with age.")
    assert summary.ground_truth_note(1200) == ("The ground-truth table scores each model's gene ranking against the "
                                               "1,200 age genes the simulator planted.")
    assert "0:" not in summary.ground_truth_note(None)


def test_factorisation_sentence_says_which_cells_ran():
    from neuroage_utils.report.chapter_page import factorisation_sentence

    base = {"method": "SVD", "splits": "training", "n_components": 100, "fit_cells": 700_000, "cells_in_file": 1_000_000,
            "scored_cells": 1_000_000, "cells_in_memory": 50_000, "streamed": True, "every_cell": True,
            "downstream": {"model": "the ridge on its scores", "cells": 700_000, "splits": "training", "sample": False}}
    assert factorisation_sentence(base) == (
        "The SVD (100 components) was fitted in streamed passes over all 700,000 training cells of the file (products "
        "summed block by block), and its correlations with age read all 1,000,000 cells; the ridge on its scores was "
        "trained on 700,000 training cells.")
    nmf = {**base, "method": "NMF", "splits": "training and validation", "fit_cells": 800_000,
           "downstream": {"model": "the MLP on its factors", "cells": 40_000, "splits": "training and validation",
                          "sample": True}}
    assert factorisation_sentence(nmf).endswith(
        "; the MLP on its factors was trained on 40,000 training and validation cells of the per-donor sample.")
    sample = {**base, "every_cell": False, "fit_cells": 35_000, "scored_cells": 50_000,
              "downstream": {**base["downstream"], "cells": 35_000, "sample": True}}
    assert factorisation_sentence(sample) == (
        "The SVD (100 components) was fitted in memory on the 35,000 training cells of the per-donor sample of 50,000 "
        "cells (of 1,000,000 in the streamed file; this profile does not stream the factorisations over every cell), "
        "and its correlations with age read the sample's 50,000 cells; the ridge on its scores was trained on 35,000 "
        "training cells of the per-donor sample.")
    memory = {**base, "streamed": False, "every_cell": False, "fit_cells": 900, "scored_cells": 1_300, "downstream": None}
    assert factorisation_sentence(memory) == ("The SVD (100 components) was fitted in memory on the 900 training "
                                              "cells, and its correlations with age read all 1,300 cells.")


def test_leaderboard_names_models_and_chapters_for_readers():
    board = [{"model": "elastic_net", "section": "baselines", "mae": 7.0, "mae_ci95": [5, 9], "r": -0.001,
              "n_donors": 11, "paper_mae": None, "trained_on": ["train", "val"]},
             {"model": "vae_poisson", "section": "vae", "mae": 9.0, "mae_ci95": [7, 11], "r": 0.2, "n_donors": 11,
              "paper_mae": 5.8, "trained_on": ["train", "val"]},
             {"model": "vae_poisson", "section": "dae", "mae": 9.5, "mae_ci95": [7, 12], "r": 0.1, "n_donors": 11,
              "paper_mae": 5.8, "trained_on": ["train", "val"]},
             {"model": "null", "section": "baselines", "mae": 12.0, "mae_ci95": [9, 15], "r": None, "n_donors": 11,
              "paper_mae": 12.1, "trained_on": ["train", "val"]}]
    labels = summary.board_labels(board)
    assert labels == ["elastic net (cells)", "Poisson VAE (paper's model) (Variational autoencoders)",
                      "Poisson VAE (paper's model) (Denoising VAE)", "null (training mean)"]
    table = summary.leaderboard_table(board)
    assert list(table["chapter"]) == ["Baselines: elastic net and MLP", "Variational autoencoders", "Denoising VAE",
                                      "Baselines: elastic net and MLP"]
    assert table["model"].iloc[-1] == "null (train + val mean)"
    html = plots.scores_table(table).to_html()
    assert "vae_poisson" not in html and "elastic_net" not in html  # no internal keys on the page
    assert "-0.00" not in html


# --------------------------------------------------------------------------------------------------
# Numbers as a reader expects them
# --------------------------------------------------------------------------------------------------

def test_no_negative_zero_and_p_values_have_a_floor():
    assert tables.format_r(-0.0004) == "0.00"
    assert tables.format_r(-0.004) == "0.00"
    assert tables.format_r(-0.006) == "-0.01"
    assert tables.format_r(None) == "–" and tables.format_r(float("nan")) == "–"
    assert tables.format_p(0.0) == "< 0.001" and tables.format_p(0.00049) == "< 0.001"
    assert tables.format_p(0.0123) == "0.012"
    assert tables.format_interval([-0.04, 2.0]) == "0.0–2.0"
    out = tables.formatted(pd.DataFrame({"method": ["a", "b"], "r": [-0.001, 0.5], "p_value": [1e-9, 0.2]}))
    assert list(out["r"]) == ["0.00", "0.50"]
    assert list(out["p (one-sided)"]) == ["< 0.001", "0.200"]


def test_null_rows_are_short_with_the_definition_in_a_footnote():
    table = pd.DataFrame({"model": ["1", tables.null_label(["train"])], "MAE": [8.0, 9.5]})
    assert table["model"].iloc[-1] == "null (train mean)"
    html = tables.styled(table).to_html()
    assert "<caption>" in html and tables.NULL_NOTE.split(":")[0] in html
    assert "mean age of the donors it was trained on" in html
    assert "<caption>" not in tables.styled(table.iloc[:1]).to_html()  # no null row, no footnote


# --------------------------------------------------------------------------------------------------
# Chance level of "the best of k components"
# --------------------------------------------------------------------------------------------------

def _random_components(n_donors=49, k=100, seed=0, signal=0.0):
    rng = np.random.default_rng(seed)
    cells = rng.integers(5, 30, n_donors)
    donors = np.repeat([f"d{i:02d}" for i in range(n_donors)], cells)
    donor_age = rng.uniform(20, 90, n_donors)
    ages = np.repeat(donor_age, cells)
    scores = rng.normal(size=(len(ages), k)) + np.repeat(rng.normal(size=(n_donors, k)), cells, axis=0)
    scores[:, 0] += signal * (ages - ages.mean()) / ages.std()
    return scores, ages, donors


def test_chance_level_matches_the_expected_best_of_k_random_correlations():
    scores, ages, donors = _random_components()
    corr = component_age_correlations(scores, ages, donors)
    chance = chance_best_abs_r(scores, ages, donors, n_perm=400, seed=1, observed=top_components(corr))
    # the best |r| of 100 random components over 49 donors is about 0.4 (not 0): the yardstick
    assert 0.33 < chance["mean_donor"] < 0.47
    assert chance["q95_donor"] > chance["mean_donor"]
    assert 0.0 < chance["mean_cell"] < chance["mean_donor"] + 0.2
    assert chance["p_donor"] > 0.05  # no signal: the observed best is ordinary
    strong = _random_components(signal=3.0)
    corr = component_age_correlations(*strong)
    found = chance_best_abs_r(*strong, n_perm=400, seed=1, observed=top_components(corr))
    assert found["p_donor"] < 0.01 and found["p_cell"] < 0.01


def test_chance_shuffles_reproduce_the_observed_correlations_when_not_shuffled(monkeypatch):
    scores, ages, donors = _random_components(n_donors=15, k=6)
    corr = component_age_correlations(scores, ages, donors)
    class Unshuffled:  # every "shuffle" leaves the ages where they are
        def __init__(self, seed=None):
            pass

        def permutation(self, n):
            return np.arange(n)

    from neuroage_utils.models import svd

    monkeypatch.setattr(svd.np.random, "default_rng", Unshuffled)
    same = chance_best_abs_r(scores, ages, donors, n_perm=3, seed=0)
    assert same["mean_donor"] == pytest.approx(corr["r_donor"].abs().max())
    assert same["mean_cell"] == pytest.approx(corr["r_cell"].abs().max())


def test_top_components_table_shows_chance_beside_the_observed():
    scores, ages, donors = _random_components(n_donors=20, k=10)
    top = top_components(component_age_correlations(scores, ages, donors))
    chance = chance_best_abs_r(scores, ages, donors, n_perm=99, seed=0, observed=top)
    table = top_components_table(top, 10, paper_components=100, paper_abs_r=0.22, chance=chance)
    rows = list(table.index)
    assert rows.index("top |r| over donors by chance¹") == rows.index("top |r| over donors") + 2
    assert "95th percentile" in table.loc["top |r| over donors by chance¹", "ours"]
    assert "99 times" in chance_note(chance) and "20 donors" in chance_note(chance)


# --------------------------------------------------------------------------------------------------
# Figures: no colliding text, data not hidden, shared axes, distinguishable lines
# --------------------------------------------------------------------------------------------------

def _texts(fig):
    """Every text a reader sees in ``fig`` with its bounding box (tick labels outside the view left out:
    matplotlib keeps them, but does not draw them)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    undrawn = set()
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                    undrawn.update({id(tick.label1), id(tick.label2)})
    out = []
    for t in fig.findobj(matplotlib.text.Text):
        if not t.get_visible() or not t.get_text().strip() or id(t) in undrawn:
            continue
        if t.axes is not None and not (t.axes.get_visible() and t.axes.axison):
            continue
        out.append((t, t.get_window_extent(renderer)))
    return out


def overlapping_text(fig, tolerance: float = 1.0) -> list:
    """Pairs of visible texts of ``fig`` whose bounding boxes overlap by more than ``tolerance`` px."""
    found = []
    for (a, ba), (b, bb) in itertools.combinations(_texts(fig), 2):
        w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if w > tolerance and h > tolerance:
            found.append((a.get_text()[:40], b.get_text()[:40]))
    return found


def _entry(seed, n=11, spread=30):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 95, n)
    pred = ages.mean() + rng.normal(0, spread, n) * 0.3
    return {"predictions": [{"donor_id": f"d{i}", "age": float(a), "predicted": float(p)}
                            for i, (a, p) in enumerate(zip(ages, pred))],
            "mae_ci95": [5.0, 12.0], "mae": float(np.abs(pred - ages).mean())}


def test_the_test_catches_overlapping_text():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another label")
    assert overlapping_text(fig)
    plt.close(fig)


def test_prediction_grid_titles_do_not_collide_and_axes_are_shared():
    names = ["VAE clock (latent means + elastic net)", "Poisson VAE (paper's model) (Variational autoencoders)",
             "negative-binomial VAE", "pseudocell elastic net", "denoising Poisson VAE", "null (training mean)",
             "SVD + ridge (donor means)"]
    fig = summary_plots.predicted_grid({name: _entry(i) for i, name in enumerate(names)})
    assert overlapping_text(fig) == []
    axes = [ax for ax in fig.axes if ax.axison]
    assert len({ax.get_xlim() for ax in axes}) == 1 and len({ax.get_ylim() for ax in axes}) == 1
    # the statistics are in the titles: no text box inside a panel that could hide donors
    assert all(not ax.texts for ax in axes)
    assert all("MAE" in ax.get_title() for ax in axes)
    plt.close(fig)


def test_residual_plot_lines_are_distinguishable():
    rng = np.random.default_rng(0)
    rows = []
    models = ["null", "elastic_net", "pseudobulk_elastic_net", "pseudocell_elastic_net", "svd_ridge", "mlp",
              "nmf_mlp", "vae_latent_pseudobulk"]
    for m in models:
        for d in range(30):
            age = 20 + 2 * d
            rows.append({"model": m, "donor_id": f"d{d}", "age": age, "predicted": age * 0.5 + 25 + rng.normal()})
    fig = summary_plots.residual_vs_age(pd.DataFrame(rows))
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
    assert len(lines) == len(models)
    styles = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}
    assert len(styles) == len(models)
    assert {ln.get_color() for ln in lines} <= set(summary_plots.OKABE_ITO)  # a colour-blind-safe palette
    assert overlapping_text(fig) == []
    plt.close(fig)


def test_cells_per_donor_legend_is_clear_of_the_bars():
    donors = pd.DataFrame({"age": np.linspace(20, 90, 49), "n_cells": np.full(49, 500),
                           "split": ["train"] * 30 + ["val"] * 9 + ["test"] * 10})
    fig = plots.cells_per_donor(donors)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches if p.get_height() > 0]
    assert bars and not any(legend.overlaps(b) for b in bars)
    assert overlapping_text(fig) == []
    plt.close(fig)


def test_svd_and_nmf_figures_show_chance_without_colliding_text():
    scores, ages, donors = _random_components(n_donors=20, k=12)
    corr = component_age_correlations(scores, ages, donors)
    chance = chance_best_abs_r(scores, ages, donors, n_perm=50)
    fig = plots.svd_components(scores, ages, corr, 0.22, max_cells=200, chance=chance)
    assert overlapping_text(fig) == []
    assert any("chance" in t.get_text() for t in fig.axes[1].get_legend().get_texts())
    plt.close(fig)
    fig = plots.factor_correlations(corr, "12 NMF factors", chance=chance)
    assert overlapping_text(fig) == []
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# One source for the build time; downloads; interactive tables; the introduction
# --------------------------------------------------------------------------------------------------

def test_build_time_has_one_source():
    assert benchfacts.duration(469.8) == "7 min 50 s" and benchfacts.duration(42) == "42 s"
    facts = benchfacts.facts({"date_utc": "2026-01-01 00:00", "machine": "m",
                              "book": {"wall_s": 600, "commit": "abc", "date_utc": "2026-01-02 00:00"}})
    assert facts["bench_book_time"] == "10 min 0 s" and facts["bench_book_commit"] == "abc"
    assert benchfacts.facts({})["bench_book_time"] == "not measured"
    # the pages that state the build time read it from there, never a typed number
    for page in ("book/methods.md", "book/own_cohort.md"):
        text = (REPO / page).read_text()
        assert "{{ bench_book_time }}" in text, page
        assert not re.search(r"about \d+ minutes", text), page


def test_predictions_download_has_every_model_flat_or_grouped():
    from neuroage_utils.report.chapter_page import predictions_table

    flat = {"mlp": {"split": "test", "predictions": [{"donor_id": "a", "age": 30.0, "predicted": 41.5}]},
            "null": {"split": "test", "trained_on": ["train", "val"], "predictions": [{"donor_id": "a", "age": 30.0,
                                                                                       "predicted": 50.0}]},
            "vae_nb": {"skipped": "not counts"}}
    table = predictions_table(flat, {"mlp": "MLP (cells)"})
    assert list(table["model_name"]) == ["MLP (cells)", "null (train + val mean)"]
    assert list(table["abs_error"]) == [11.5, 20.0]

    models = {"cd4t": {"null": {"predictions": [{"donor_id": "a", "age": 30.0, "predicted": 40.0, "abs_error": 10.0}]},
                       "mlp": {"skipped": "no"}},
              "cd4t_cross": {"elastic_net": {"predictions": [{"donor_id": "a", "age": 30.0, "predicted": 35.0,
                                                              "abs_error": 5.0}]}},
              "cd8t": {"skipped": "files absent"}}
    table = predictions_table(models, group_names=donor_clocks.MODEL_LABELS)
    assert list(table["group"]) == ["cd4t", "cd4t_cross"]
    assert list(table["model"]) == ["null", "elastic_net"] and table["model_name"].iloc[1] == "elastic net"
    assert predictions_table({}).columns.tolist()[-1] == "abs_error"


def test_interactive_table_is_readable_without_javascript_and_offline():
    table = pd.DataFrame({"model": ["elastic_net", "mlp"], "MAE": [7.123, 9.0]})
    html = tables.interactive(plots.scores_table(table))._repr_html_()
    assert "new ITable(" in html
    fallback = html[html.index("_fallback"):]
    assert "elastic net" in fallback and "7.12" in fallback  # the whole table, as plain HTML
    assert not re.search(r"<script[^>]+src=", html) and "<link" not in html  # nothing fetched from elsewhere
    assert '"nowrap"' not in html  # cells wrap inside the column


def test_introduction_links_every_page_in_reading_order():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    intro = (REPO / "book" / "intro.md").read_text()
    section = intro[intro.index("## Chapters"):]
    linked = []
    for target in re.findall(r"\]\(([^)#]+)\)", section):
        page = str(Path("book", target).as_posix())
        page = re.sub(r"\.(md|ipynb)$", "", str(Path(page)).replace("book/../", ""))
        linked.append(page)
    assert [p for p in linked if p in pages] == pages
