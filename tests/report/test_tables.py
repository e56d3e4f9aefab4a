"""Tables for people: headers, decimals, intervals, missing values, null rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuroage_utils.report import plots, tables


def scores():
    return pd.DataFrame(
        {
            "model": ["elastic_net", "mlp", "null"],
            "mae": [9.8412, 12.0, 15.3456],
            "mae_ci95": [[6.14, 13.96], [8.0, 16.25], [10.2, 20.349]],
            "r": [0.7123, 0.5, np.nan],
            "n_donors": [11, 11, 11],
            "paper_mae": [np.nan, 15.97, 15.3],
        },
        index=[5, 6, 7],
    )


def test_readable_headers_decimals_intervals_and_missing_values():
    out = tables.formatted(scores())
    assert list(out.columns) == ["model", "MAE (years)", "95% interval (years)", "r", "donors",
                                 "paper MAE (other data)"]
    assert list(out["MAE (years)"]) == ["9.84", "12.00", "15.35"]  # fixed decimals, never "12"
    assert list(out["95% interval (years)"]) == ["6.1–14.0", "8.0–16.2", "10.2–20.3"]
    assert list(out["r"]) == ["0.71", "0.50", "–"]
    assert list(out["donors"]) == ["11", "11", "11"]
    assert list(out["paper MAE (other data)"]) == ["–", "15.97", "15.30"]
    assert list(out.index) == [0, 1, 2]


def test_counts_stored_as_floats_show_as_integers_and_nan_as_a_word():
    table = pd.DataFrame({"split": ["train", "val", "all"], "n_cells": [252.0, 189423.0, np.nan],
                          "age_min": [25.0, 31.0, 25.0], "weight": [0.298631, 1.0, 2.5]})
    out = tables.formatted(table, missing={"n_cells": "not counted"}, decimals={"weight": 3})
    assert list(out["cells"]) == ["252", "189,423", "not counted"]
    assert list(out["youngest (years)"]) == ["25", "31", "25"]
    assert list(out["weight"]) == ["0.299", "1.000", "2.500"]  # decimals given: stays fixed
    kept = tables.formatted(table, whole_numbers=False)
    assert list(kept["cells"])[:2] == ["252.00", "189,423.00"]


def test_interval_text_gets_one_dash_and_other_text_is_kept():
    assert tables.format_interval("10.2-20.3") == "10.2–20.3"
    assert tables.format_interval("-1.5-2.0") == "-1.5 to 2.0"  # a dash beside a minus sign misreads
    assert tables.format_interval([-3.21, -0.5]) == "-3.2 to -0.5"
    assert tables.format_interval("skipped: the data are not raw counts") == "skipped: the data are not raw counts"
    assert tables.format_interval([np.nan, 3.0]) == "–"
    assert tables.format_interval((1.25, 2.0), decimals=2) == "1.25–2.00"


def test_null_rows_say_what_they_are():
    assert tables.null_label(["train"]) == "null (train mean)"
    assert tables.null_label({"trained_on": ["train", "val"]}) == "null (train + val mean)"
    out = tables.formatted(scores(), rows={"null": tables.null_label(["train", "val"])})
    assert out["model"].iloc[-1] == "null (train + val mean)"
    assert out["model"].iloc[0] == "elastic_net"  # only the named rows change


def test_styled_table_has_no_index_and_keeps_numbers():
    html = tables.styled(scores(), emphasise_min="mae", muted=["paper_mae"]).to_html()
    assert "<th class=\"blank" not in html and "row_heading" not in html  # no index column
    assert "MAE (years)" in html and "9.84" in html and "6.1–14.0" in html
    assert "font-weight: bold" in html and "white-space: nowrap" in html
    assert "nan" not in html.lower().replace("nanoseconds", "")


def test_markdown_table():
    text = tables.markdown(pd.DataFrame({"model": ["a|b"], "paper_mae": [np.nan], "paper_r": [0.52]}))
    lines = text.splitlines()
    assert lines[0] == "| model | paper MAE (other data) | paper r (other data) |"
    assert lines[1] == "|:---|---:|---:|"
    assert lines[2] == "| a\\|b | – | 0.52 |"


def test_scores_table_shows_the_same_numbers():
    """plots.scores_table goes through tables.styled: the values shown are those of the old
    format (two decimals), with "–" for missing values and one dash in intervals."""
    rows = pd.DataFrame({"model": ["x", "null"], "split": ["test", "test"], "MAE": [9.8412, 15.35],
                         "95% CI": ["6.1-14.0", "10.2-20.3"], "r": [0.7123, np.nan], "donors": [11, 11],
                         "paper MAE": [15.97, np.nan]})
    html = plots.scores_table(rows, paper_col="paper MAE").to_html()
    for shown in ("9.84", "15.35", "0.71", "15.97", "6.1–14.0", "10.2–20.3", ">11<"):
        assert shown in html, shown
    assert "row_heading" not in html and "font-weight: bold" in html


def test_shown_turns_row_names_into_a_column_and_dashes_interval_text():
    settings = pd.Series({"optimiser": "Adam", "batch size": 256}, name="as run")
    html = tables.shown(settings, index_label="setting").to_html()
    assert "setting" in html and "optimiser" in html and "as run" in html
    mixed = pd.DataFrame({"model": ["a", "b"], "95% CI": ["1.0-2.5", "skipped: no counts"]})
    out = tables.formatted(mixed)
    assert out["95% CI"].tolist() == ["1.0–2.5", "skipped: no counts"]


def test_the_papers_numbers_are_labelled_by_source_where_text_and_code_differ():
    from neuroage_utils import paper

    table = paper.source_table()
    row = table.set_index("quantity")
    assert row.loc["neurons", "the paper's text"] == "189,432" and row.loc["neurons", "the authors' code"] == "189,423"
    assert row.loc["donors: train / validation / test", "the paper's text"] == "50 / 9 / 10"
    assert row.loc["donors: train / validation / test", "the authors' code"] == "49 / 9 / 11"
    # the code's numbers agree with the cohort table the book ships
    cohort = paper.load_paper_cohort()
    assert cohort["n_cells"].sum() == paper.TEXT["n_cells"] and cohort["age"].min() == paper.TEXT["min_age"]
    assert cohort["split"].value_counts().to_dict() == paper.TEXT["split_donors"]
