"""Sections that read data other than the book's cohort of cells (the real-donor chapter reads
donor-level profiles), and how: the loader :meth:`~neuroage_utils.chapters.chapter.Chapter.start`
calls instead of loading the cohort, the results file's ``data`` block and page sentence, and the
fingerprint the runner hashes to know when the section's inputs changed. One entry per such section;
every other section reads the cohort (``data_path`` or the simulated cohort)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from neuroage_utils.data import realdata

__all__ = ["DataSource", "SOURCES", "source_for"]


@dataclass(frozen=True)
class DataSource:
    load: Callable  # (out_dir) -> the section's data (e.g. realdata.RealData)
    record: Callable  # (data) -> the results file's ``data`` block
    summary: Callable  # (data, params, profile) -> the page's Markdown sentence on its data
    fingerprint: Callable  # (out_dir) -> str: what the runner hashes among the section's inputs


SOURCES = {
    "realdata": DataSource(load=realdata.load_realdata, record=realdata.data_record, summary=realdata.page_summary,
                           fingerprint=realdata.fingerprint),
}


def source_for(section: str) -> DataSource | None:
    """The data source of ``section``, or None when it reads the cohort of cells."""
    return SOURCES.get(section)
