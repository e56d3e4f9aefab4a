"""The smoke book in a real browser, offline: headless Chromium opens every page and the tests fail on
raw TeX, a request that leaves the machine or fails, a missing image, a JavaScript error, or a build
machine's absolute path in a page. Screenshots and page heights land in ``<build>/_build/screenshots``.

Chromium is Debian's package (``.ci/run`` installs it, so CI always runs these tests); locally they
skip, saying why, only when it is absent. ``NEUROAGE_BOOK_DIR=OUT`` reuses a book already built with
``python -m neuroage_utils.run --out OUT`` instead of building one.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from neuroage_utils import profiles

from .browser import browse, chromium_path

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = [f"executed/{s}.html" for s in profiles.SECTIONS]
HAND_WRITTEN = ["book/intro.html", "book/methods.html", "book/references.html", "executed/paper.html",
                "executed/status.html", "index.html"]


def _browser_missing() -> str | None:
    if chromium_path() is None:
        return "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browsed(request):
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI"):  # CI installs the browser: its absence there is a failure, not a skip
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    reuse = os.environ.get("NEUROAGE_BOOK_DIR")
    out = Path(reuse).resolve() if reuse else request.getfixturevalue("smoke_build")[0]
    reports = browse(out, forbidden_strings=(str(out), str(REPO)))
    return out, {r.page: r for r in reports}


class Problems(dict):
    """Page -> what was found; printed one page a line so a failure reads at a glance."""

    def __str__(self):
        return "\n" + "\n".join(f"  {page}: {found[:3]}" for page, found in self.items())


def _problems(pages: dict, attribute: str) -> Problems:
    return Problems({page: getattr(r, attribute) for page, r in pages.items() if getattr(r, attribute)})


def test_every_page_opened_with_a_screenshot_and_height(browsed):
    out, pages = browsed
    for page in CHAPTERS + HAND_WRITTEN:
        assert page in pages, f"{page} was not opened"
    for page, r in pages.items():
        assert r.height > 0 and Path(r.screenshot).stat().st_size > 0, page
    recorded = json.loads((out / "_build" / "screenshots" / "pages.json").read_text())
    assert {r["page"]: r["height"] for r in recorded} == {p: r.height for p, r in pages.items()}


def test_maths_is_rendered_offline(browsed):
    _, pages = browsed
    assert sum(r.math_total for r in pages.values()) > 0, "no maths found: the check would be vacuous"
    bad = _problems(pages, "math_unrendered")
    assert not bad, "maths left as TeX (MathJax did not typeset it):" + str(bad)
    bad = _problems(pages, "math_errors")
    assert not bad, "MathJax reported TeX errors:" + str(bad)
    bad = _problems(pages, "raw_tex")
    assert not bad, "raw TeX visible in the rendered text:" + str(bad)


def test_no_template_text_in_pages(browsed):
    _, pages = browsed
    bad = _problems(pages, "template_leaks")
    assert not bad, "unexpanded template text ({{ }}, a glue or cite role) in the page:" + str(bad)


def test_no_request_leaves_the_machine(browsed):
    _, pages = browsed
    bad = _problems(pages, "external_requests")
    assert not bad, "requests that would leave the machine (aborted):" + str(bad)


def test_no_request_fails(browsed):
    _, pages = browsed
    bad = _problems(pages, "failed_requests")
    assert not bad, "failed requests:" + str(bad)


def test_every_image_loads(browsed):
    _, pages = browsed
    bad = _problems(pages, "broken_images")
    assert not bad, "broken images:" + str(bad)


def test_no_javascript_errors(browsed):
    _, pages = browsed
    bad = _problems(pages, "js_errors")
    assert not bad, "JavaScript errors:" + str(bad)


def test_no_absolute_build_paths_in_pages(browsed):
    _, pages = browsed
    bad = _problems(pages, "absolute_paths")
    assert not bad, "absolute build paths in the page text:" + str(bad)


def test_download_button_gives_the_executed_notebook(browsed):
    out, pages = browsed
    html = out / "_build" / "html"
    for page in CHAPTERS:
        link = pages[page].download_link
        assert link.endswith(".ipynb"), f"{page}: download button links to {link!r}"
        notebook = (html / page).parent / link
        nb = json.loads(notebook.read_text())
        assert "papermill" in nb["metadata"], f"{page}: {link} is not the executed notebook"
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{page}: no outputs"
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"]), \
            f"{page}: the download lacks the parameters it ran with"


def test_no_table_or_figure_runs_past_or_scrolls_in_the_column(browsed):
    """At 1,366 px (a laptop) every table and figure fits the content column: none is cut off, none
    scrolls sideways hiding a column."""
    _, pages = browsed
    assert sum(r.tables_total for r in pages.values()) > 10 and sum(r.figures_total for r in pages.values()) > 5, \
        "few tables or figures found: the check would be vacuous"
    bad = _problems(pages, "overflowing")
    assert not bad, "tables or figures wider than the content column at 1,366 px:" + str(bad)


def test_every_chapter_offers_its_predictions_as_csv(browsed):
    """Each chapter links its per-donor predictions (and any other download) to a file in the build."""
    out, pages = browsed
    html = out / "_build" / "html"
    for page in CHAPTERS:
        csv = [link for link in pages[page].links if link.endswith(".csv")]
        assert any(link.endswith("-predictions.csv") for link in csv), f"{page}: no per-donor predictions: {csv}"
        for link in csv:
            target = ((html / page).parent / link).resolve()
            assert target.is_file() and target.stat().st_size > 0, f"{page}: {link} is missing from the build"


def test_interactive_tables_sort_and_search_and_read_without_javascript(browsed):
    """The verdict's leaderboard and CV table are sortable and searchable; with JavaScript off the same
    tables are there in full, as plain HTML."""
    from .browser import interactive_tables

    out, _ = browsed
    on = [t for t in interactive_tables(out, "executed/summary.html") if t["sortable"]]
    assert len(on) >= 2 and all(t["search"] and t["rows"] > 3 for t in on), on
    off = interactive_tables(out, "executed/summary.html", javascript=False)
    assert not any(t["sortable"] for t in off)
    for table in on:  # each interactive table has its plain twin, every row shown
        assert any(t["header"] == table["header"] and t["rows"] >= table["rows"] for t in off), (table, off)


def _toc_pages() -> list:
    """Every page of the table of contents, in reading order, as ``folder/name`` (no suffix)."""
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_the_introduction_links_every_page_in_reading_order(browsed):
    _, pages = browsed
    links = [link.split("#")[0] for link in pages["book/intro.html"].chapter_links]
    assert links, "the introduction has no section 'Chapters' with links"
    targets = []
    for link in links:
        if link.startswith("../") or not link.startswith(("http", "#", "_")):
            target = str(Path("book", link).as_posix())
            target = os.path.normpath(target).removesuffix(".html")
            if target not in targets:
                targets.append(target)
    toc = _toc_pages()
    missing = [p for p in toc if p not in targets]
    assert not missing, f"pages of the table of contents the introduction does not link: {missing}"
    order = [t for t in targets if t in toc]
    assert order == toc, f"the introduction's links are not in reading order: {order}"


def test_the_checks_catch_a_broken_page(tmp_path):
    """A page with every fault the tests look for: each is reported (so a green run means something)."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    html = tmp_path / "_build" / "html"
    html.mkdir(parents=True)
    (html / "broken.html").write_text(
        "<html><body><main><p>Loss <span class='math notranslate nohighlight'>\\(\\mathcal L\\)</span></p>"
        "<img src='missing.png'><script src='https://example.invalid/x.js'></script>"
        "<script>undefinedFunction()</script>"
        f"<pre>results written to {tmp_path}/results/x.json</pre><p>built in {{{{ bench_book_time }}}}</p>"
        "<div style='overflow-x:auto;width:300px'><table><tr><td style='white-space:nowrap'>"
        + "a wide cell " * 40 + "</td></tr></table></div>"
        "<div style='width:200px'><img style='width:4000px;height:10px' src='data:image/gif;base64,"
        "R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=='></div></main></body></html>"
    )
    (r,) = browse(tmp_path, forbidden_strings=(str(tmp_path),))
    assert r.math_unrendered and r.raw_tex
    assert r.external_requests == ["https://example.invalid/x.js"]
    assert r.broken_images == ["missing.png"]
    assert any("missing.png" in f for f in r.failed_requests)
    assert any("undefinedFunction" in e for e in r.js_errors)
    assert r.absolute_paths
    assert r.template_leaks
    assert any(o.startswith("scrolls sideways") for o in r.overflowing), r.overflowing
    assert any(o.startswith("runs past") and o.startswith("runs past the column") for o in r.overflowing), r.overflowing
    assert Path(r.screenshot).exists() and r.height > 0
