"""Tables for people: readable headers, no index column, fixed decimals, intervals on one line.

A chapter builds its tables as plain data frames (raw column names such as ``mae`` or ``paper_mae``,
floats, NaN, intervals as ``[lo, hi]`` pairs) and shows them through :func:`styled` (HTML in the
book) or :func:`markdown` (generated pages); :func:`formatted` gives the same cells as strings.
Formatting never changes a number's value, only how many decimals it shows.

    styled(scores, rows={"null": null_label(["train", "val"])}, emphasise_min="mae")
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# Raw column names -> what a reader sees. A column not named here keeps its name.
LABELS = {
    "model": "model",
    "split": "split",
    "mae": "MAE (years)",
    "mae_ci95": "95% interval (years)",
    "ci95": "95% interval (years)",
    "r": "r",
    "n_donors": "donors",
    "n_cells": "cells",
    "n_genes": "genes",
    "paper_mae": "paper MAE (other data)",
    "paper_r": "paper r (other data)",
    "null_val": "null, validation donors",
    "null_test": "null, test donors",
    "age": "age (years)",
    "age_min": "youngest (years)",
    "age_median": "median age (years)",
    "age_mean": "mean age (years)",
    "age_max": "oldest (years)",
    "predicted": "predicted age (years)",
    "runtime_s": "runtime (s)",
    # ground-truth recovery (summary chapter)
    "method": "ranking",
    "k": "top k genes",
    "hits": "age genes in top k",
    "precision": "precision",
    "chance_precision": "precision by chance",
    "recall": "recall",
    "chance_recall": "recall by chance",
    "enrichment": "precision / chance",
    "p_value": "p (one-sided)",
}
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
MISSING = "–"  # an en dash: no value
DASH = "–"  # between an interval's ends

# "10.2-20.3", "10.2 – 20.3" or "535-3,803": an interval already written as text.
_INTERVAL_TEXT = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)\s*[-–]\s*(-?\d[\d,]*(?:\.\d+)?)\s*$")


def label(name, labels: Mapping | None = None) -> str:
    """The header a reader sees for column ``name`` (``labels`` first, then :data:`LABELS`)."""
    if labels and name in labels:
        return str(labels[name])
    return LABELS.get(name, str(name))


#: Short names of the splits in a null row's label (the footnote spells the model out).
_SHORT_SPLITS = {"train": "train", "val": "val", "test": "test"}
#: The footnote under any table with a null row: what the null model is, once, in full.
NULL_NOTE = ("null: the null model predicts every donor the mean age of the donors it was trained on "
             "(train: the training donors; train + val: the training and validation donors; CV: the other "
             "folds' donors). A clock that does not beat it has learnt nothing about age.")


def null_label(trained_on) -> str:
    """What a null row is, in a few words: ``null (train + val mean)``; :data:`NULL_NOTE` is the
    footnote that defines it (:func:`styled` adds it under any table with such a row).

    ``trained_on`` is a results entry (its ``trained_on`` list) or the splits themselves.
    """
    splits = trained_on.get("trained_on", ["train"]) if isinstance(trained_on, Mapping) else list(trained_on)
    names = " + ".join(_SHORT_SPLITS.get(s, str(s)) for s in splits) or "train"
    return f"null ({names} mean)"


def has_null_row(table: pd.DataFrame) -> bool:
    """Whether the first column names a null model (a row the footnote must define)."""
    if table.empty or not len(table.columns):
        return False
    return any(isinstance(v, str) and v.startswith("null") for v in table.iloc[:, 0])


#: Columns holding p-values: written "< 0.001" below that, never "0.000".
P_COLUMNS = {"p_value", "p", "p-value"}


def format_number(value, places: int = 2, missing: str = MISSING) -> str:
    """A number with ``places`` decimals and thousands separators; never "-0.00" (a value that rounds
    to zero has no sign), missing values as ``missing``."""
    if _is_missing(value):
        return missing
    text = f"{float(value):,.{places}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def format_r(value, missing: str = MISSING) -> str:
    """A correlation for prose and figures: two decimals, no "-0.00", a dash when there is none."""
    return format_number(value, 2, missing)


def format_p(value, floor: float = 0.001, missing: str = MISSING) -> str:
    """A p-value: "< 0.001" below ``floor`` (never "0.000"), else three decimals."""
    if _is_missing(value):
        return missing
    value = float(value)
    if value < floor:
        return f"< {floor:g}"
    return f"{value:.3f}"


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


def _is_pair(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == 2 and not isinstance(value, str)


def format_interval(value, decimals: int = 1, missing: str = MISSING) -> str:
    """``[10.23, 20.31]`` -> ``10.2–20.3``; text such as ``10.2-20.3`` gets the same dash; other
    text is left as it is (e.g. ``skipped: ...``)."""
    if _is_pair(value):
        lo, hi = value
        if _is_missing(lo) or _is_missing(hi):
            return missing
        a, b = format_number(lo, decimals), format_number(hi, decimals)
        # "-1.6 to 3.5", not "-1.6–3.5": a dash beside a minus sign reads as a range of negatives
        return f"{a} to {b}" if a.startswith("-") or b.startswith("-") else f"{a}{DASH}{b}"
    if isinstance(value, str):
        match = _INTERVAL_TEXT.match(value)
        if not match:
            return value
        a, b = match.group(1), match.group(2)
        return f"{a} to {b}" if a.startswith("-") or b.startswith("-") else f"{a}{DASH}{b}"
    return missing if _is_missing(value) else str(value)


def _column_kind(series: pd.Series, explicit_decimals: bool, whole_numbers: bool) -> str:
    values = [v for v in series if not _is_missing(v) if not (isinstance(v, str) and v == "")]
    if values and all(_is_pair(v) or (isinstance(v, str) and _INTERVAL_TEXT.match(v)) for v in values):
        return "interval"
    if any(_is_pair(v) for v in values):
        return "interval"
    if pd.api.types.is_bool_dtype(series):
        return "text"
    if pd.api.types.is_integer_dtype(series):
        return "integer"
    if not values and pd.api.types.is_numeric_dtype(series):
        return "float"  # all missing: still a numeric column
    numeric = [v for v in values if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    if values and len(numeric) == len(values):
        if whole_numbers and not explicit_decimals and all(float(v).is_integer() for v in numeric):
            return "integer"  # counts stored as floats (a column with a NaN): 252, not 252.000000
        return "float"
    return "text"


def _formatters(table: pd.DataFrame, decimals, missing, interval_decimals: int, whole_numbers: bool) -> dict:
    out = {}
    for col in table.columns:
        explicit = isinstance(decimals, Mapping) and col in decimals
        places = decimals.get(col, 2) if isinstance(decimals, Mapping) else int(decimals)
        gap = missing.get(col, MISSING) if isinstance(missing, Mapping) else str(missing)
        kind = _column_kind(table[col], explicit, whole_numbers)

        def fmt(v, kind=kind, places=places, gap=gap, is_p=str(col) in P_COLUMNS):
            if is_p and isinstance(v, numbers.Real) and not isinstance(v, bool) and not _is_missing(v):
                return format_p(v)
            if kind == "interval" or _is_pair(v):
                return format_interval(v, interval_decimals, gap)
            if _is_missing(v):
                return gap
            if isinstance(v, str):  # text such as "10.2-20.3" gets the interval's dash
                return format_interval(v) if v != "" or kind == "text" else gap
            if kind == "integer" and isinstance(v, numbers.Real) and float(v).is_integer():
                return f"{int(v):,}"
            if kind in ("float", "integer") and isinstance(v, numbers.Real) and not isinstance(v, bool):
                return format_number(v, places)
            return str(v)

        out[col] = (kind, fmt)
    return out


def _relabel_rows(table: pd.DataFrame, rows: Mapping | None, label_column) -> pd.DataFrame:
    if not rows or table.empty:
        return table
    column = label_column if label_column is not None else table.columns[0]
    table = table.copy()
    table[column] = [rows.get(v, v) if isinstance(v, str) else v for v in table[column]]
    return table


def formatted(table: pd.DataFrame, labels: Mapping | None = None, decimals=2, missing=MISSING,
              rows: Mapping | None = None, label_column=None, interval_decimals: int = 1,
              whole_numbers: bool = True) -> pd.DataFrame:
    """``table`` as strings a reader can take in: readable headers, a fresh 0..n-1 index (not for
    display), floats with ``decimals`` places (an int, or a per-column mapping; default 2), counts
    as integers with thousands separators (also counts stored as floats, unless ``whole_numbers``
    is False or the column is given decimals), ``[lo, hi]`` pairs and ``a-b`` text as ``a–b``,
    missing values as ``missing`` (a string, or a per-column mapping), and the values of
    ``label_column`` (default: the first column) renamed by ``rows`` (e.g. ``{"null": null_label(...)}``).
    """
    table = _relabel_rows(pd.DataFrame(table).reset_index(drop=True), rows, label_column)
    formats = _formatters(table, decimals, missing, interval_decimals, whole_numbers)
    out = pd.DataFrame({col: [fmt(v) for v in table[col]] for col, (_, fmt) in formats.items()})
    out.columns = [label(c, labels) for c in table.columns]
    return out


def styled(table: pd.DataFrame, labels: Mapping | None = None, decimals=2, missing=MISSING,
           rows: Mapping | None = None, label_column=None, interval_decimals: int = 1,
           whole_numbers: bool = True, emphasise_min=None, muted: Sequence = ()):
    """The same table as :func:`formatted`, as a pandas Styler for the book: no index column,
    numbers right-aligned, intervals kept on one line, the smallest value of column
    ``emphasise_min`` in bold and the ``muted`` columns (e.g. the paper's) in grey. The Styler keeps
    the numbers, so it can still be sorted or highlighted by value."""
    table = _relabel_rows(pd.DataFrame(table).reset_index(drop=True), rows, label_column)
    formats = _formatters(table, decimals, missing, interval_decimals, whole_numbers)
    styler = table.style.format({col: fmt for col, (_, fmt) in formats.items()})
    numeric = [c for c, (kind, _) in formats.items() if kind in ("float", "integer", "interval")]
    if numeric:
        styler = styler.set_properties(subset=numeric, **{"text-align": "right", "white-space": "nowrap"})
    if emphasise_min is not None and emphasise_min in table and formats[emphasise_min][0] in ("float", "integer"):
        styler = styler.highlight_min(subset=[emphasise_min], props="font-weight: bold")
    present = [c for c in muted if c in table]
    if present:
        styler = styler.set_properties(subset=present, **{"color": "#666666"})
    styler = styler.relabel_index([label(c, labels) for c in table.columns], axis="columns")
    # room between columns, so a right-aligned number never runs into the next column's text
    styler = styler.set_table_styles([{"selector": "th, td", "props": "padding: 0.2em 0.45em;"},
                                      {"selector": "caption", "props": "caption-side: bottom; font-size: 0.85em; "
                                                                       "text-align: left; color: #555;"}],
                                     overwrite=False)
    if has_null_row(table):  # the null row's label is short; its definition goes under the table
        styler = styler.set_caption(NULL_NOTE)
    return styler.hide(axis="index")


def _setting_text(value, digits: int = 3):
    """One value of a settings table (rows of different kinds): counts as integers, other numbers
    with ``digits`` significant digits, the rest as text."""
    if _is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return format_interval(value) if isinstance(value, str) else str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(float(value)) >= 0.1:  # MAEs, r, ratios: two decimals, as in every other table
        return format_number(value, 2)
    return f"{float(value):.{digits}g}"  # small values (a penalty, a chance rate): significant digits


def shown(table, index_label: str = "", digits: int = 3, **kwargs):
    """:func:`styled` for any table a chapter displays. A table whose rows have names (a Series, or
    an index of settings) is a settings table: its rows differ in kind, so each value is written on
    its own (counts as integers, numbers from 0.1 up with two decimals, smaller ones with ``digits``
    significant digits), and the row names
    become the first column, headed ``index_label``. Other tables go to :func:`styled` as they are."""
    frame = table.to_frame() if isinstance(table, pd.Series) else pd.DataFrame(table)
    if isinstance(frame.index, pd.MultiIndex):
        frame = frame.reset_index()
    elif not isinstance(frame.index, pd.RangeIndex):
        values = frame.apply(lambda col: col.map(lambda v: _setting_text(v, digits))).astype(object)
        frame = values.reset_index(names=index_label or frame.index.name or "")
    return styled(frame, **kwargs)


def markdown(table: pd.DataFrame, **kwargs) -> str:
    """A Markdown table of :func:`formatted` (for generated pages); numeric columns right-aligned."""
    shown = formatted(table, **kwargs)
    source = _relabel_rows(pd.DataFrame(table).reset_index(drop=True), kwargs.get("rows"), kwargs.get("label_column"))
    kinds = _formatters(source, kwargs.get("decimals", 2), kwargs.get("missing", MISSING),
                        kwargs.get("interval_decimals", 1), kwargs.get("whole_numbers", True))
    align = ["---:" if kinds[c][0] in ("float", "integer", "interval") else ":---" for c in source.columns]

    def cell(v):
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in shown.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


class Interactive:
    """A table the reader can sort and search (DataTables through ``itables``, offline), shown in
    full as plain HTML until the script runs and when JavaScript is off.

    The DataTables bundle is not embedded in each notebook: the book serves the copy that comes with
    ``itables`` from ``_static/itables`` (see ``book/_ext/neuroage_html.py``), so every page works
    offline and a page loads it only when it holds such a table.
    """

    def __init__(self, table, page_length: int = 25, **options):
        self.table, self.page_length, self.options = table, int(page_length), options

    def _repr_html_(self) -> str:
        from itables import to_html_datatable

        styler = self.table if hasattr(self.table, "to_html") and hasattr(self.table, "data") else styled(self.table)
        rows = len(styler.data)
        paging = rows > self.page_length
        options = {
            # wrapped cells: DataTables' default "nowrap" would push wide tables past the content column
            "classes": ["display", "compact", "neuroage-interactive"],
            "layout": {"topStart": None, "topEnd": "search", "bottomStart": "info" if paging else None,
                       "bottomEnd": "paging" if paging else None},
            "paging": paging, "pageLength": self.page_length, "autoWidth": False,
            "style": {"table-layout": "auto", "width": "100%", "margin": "0", "caption-side": "bottom"},
            **self.options,
        }
        return to_html_datatable(styler, connected=False, allow_html=True, **options)


def interactive(table, page_length: int = 25, **options) -> Interactive:
    """``table`` (a data frame, formatted like :func:`styled`, or a Styler) as a sortable, searchable
    table; see :class:`Interactive`."""
    return Interactive(table, page_length=page_length, **options)

