"""The book's build time and the benchmark's date, from their one source: ``bench/results.json``
(written by ``make bench``). Every page that states them reads them here: the benchmarks page (its
renderer), the methods page and the introduction (as MyST substitutions ``{{ bench_book_time }}``
etc., set by ``book/_ext``), and the status page (``run``), so no page can contradict another."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RESULTS", "load", "duration", "facts", "substitutions"]

#: Where ``make bench`` writes its results, in this checkout.
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.json"


def load(path: Path | None = None) -> dict:
    """The benchmark results (empty when none were recorded)."""
    path = Path(path) if path else RESULTS
    return json.loads(path.read_text()) if path.exists() else {}


def duration(seconds: float) -> str:
    """``469.8`` -> ``"7 min 50 s"``; under a minute ``"42 s"``."""
    seconds = int(round(float(seconds)))
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def facts(bench: dict) -> dict:
    """What the pages state: the quick book's wall time from a fresh clone, its date, commit and
    machine, and the benchmark run's date. Missing values read as "not measured"."""
    book = bench.get("book") or {}
    measured = isinstance(book.get("wall_s"), (int, float)) and book.get("exit", 0) == 0
    return {
        "bench_book_time": duration(book["wall_s"]) if measured else "not measured",
        "bench_book_date": book.get("date_utc") or bench.get("date_utc") or "not measured",
        "bench_book_commit": book.get("commit") or "unknown",
        "bench_book_profile": book.get("profile") or "quick",
        "bench_book_memory": (f"{book['peak_pss_total_gb']:.2f} GB" if isinstance(book.get("peak_pss_total_gb"), (int, float))
                              else "not measured"),
        "bench_date": bench.get("date_utc") or "not measured",
        "bench_machine": bench.get("machine") or "an unrecorded machine",
    }


def substitutions(bench: dict | None = None) -> dict:
    """:func:`facts` of ``bench`` (default: this checkout's results), as MyST substitutions."""
    return facts(load() if bench is None else bench)
