"""Open every page of a built book in headless Chromium, as a reader would, and report what it saw.

Used by ``tests/test_browser.py``; also runs on its own, to measure a build:

    python -m tests.browser OUT_DIR        # OUT_DIR holds _build/html (e.g. a runner's --out)

The pages are served from 127.0.0.1 by a throw-away HTTP server. Every request the page makes is
seen: anything addressed elsewhere is recorded and aborted (nothing leaves the machine, and the
test says what tried to). Each page gets a full-page screenshot in ``_build/screenshots/`` and its
height (CSS pixels at a 1366 px wide window) in ``_build/screenshots/pages.json``.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; Playwright never downloads a
browser here.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# The flags this machine's notes give for a headless Chromium without a network: no background
# requests to Google's services, which a closed network refuses many at a time.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A laptop's width: the narrowest window at which the book shows its sidebar and its content column.
VIEWPORT = {"width": 1366, "height": 900}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

# TeX that MathJax should have turned into maths; seen in text outside code, it was not rendered.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:mathcal|mathbf|mathrm|frac|sum|log|exp|mid|sigma|mu|"
                     r"theta|phi|lambda|alpha|beta|operatorname|left|right|begin|end|text|hat|bar|cdot)\b")
# Template text a reader should never see: an unexpanded substitution, glue role or format field.
TEMPLATE_LEAK = re.compile(r"\{\{|\}\}|\{glue:|\{download\}|\{cite:|\{ref\}")
# An absolute path of a build machine: the usual roots of temporary and working folders.
ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:tmp|home|root|work|Users|private|var|mnt|opt|srv|scratch)/[\w.@+-]")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageReport:
    page: str
    height: int = 0
    screenshot: str = ""
    title: str = ""
    external_requests: list = field(default_factory=list)
    failed_requests: list = field(default_factory=list)
    js_errors: list = field(default_factory=list)
    broken_images: list = field(default_factory=list)
    math_total: int = 0
    math_unrendered: list = field(default_factory=list)
    math_errors: list = field(default_factory=list)
    raw_tex: list = field(default_factory=list)
    absolute_paths: list = field(default_factory=list)
    download_link: str = ""
    overflowing: list = field(default_factory=list)
    template_leaks: list = field(default_factory=list)
    links: list = field(default_factory=list)
    chapter_links: list = field(default_factory=list)
    tables_total: int = 0
    figures_total: int = 0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports failures itself
        pass


class BookServer:
    """``http://127.0.0.1:<free port>/`` serving one folder, in a thread, for a ``with`` block."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def book_pages(html: Path) -> list:
    """Every HTML page of the build, as paths relative to ``html`` (theme snippets excepted)."""
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not p.relative_to(html).parts[0].startswith("_"))


# Runs in the page once it has loaded: waits for MathJax and the images, then reads what a reader sees.
_INSPECT = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const images = Array.from(document.images);
  const broken = await Promise.all(images.map(img => {
    img.loading = "eager";
    return img.decode().then(() => null, () => img.getAttribute("src"));
  }));
  const math = Array.from(document.querySelectorAll(".math"));
  const unrendered = math.filter(m => !m.querySelector("mjx-container") && m.tagName !== "MJX-CONTAINER")
                         .map(m => m.textContent.trim().slice(0, 80));
  const mathErrors = Array.from(document.querySelectorAll("mjx-merror, mjx-container [data-mjx-error]"))
                         .map(e => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 80));
  // Prose a reader sees as text: code listings and rendered maths (whose hidden copies hold TeX) set aside.
  const article = (document.querySelector("main") || document.body).cloneNode(true);
  article.querySelectorAll("pre, code, script, style, mjx-container, .highlight").forEach(e => e.remove());
  const prose = article.textContent;
  const whole = document.body.cloneNode(true);
  whole.querySelectorAll("script, style").forEach(e => e.remove());
  const download = document.querySelector("a.btn-download-source-button");
  // Tables and figures that run past the content column or scroll sideways inside it. The column is
  // the article's box; anything wider, or any box in it whose content is wider than the box (a
  // scrolling wrapper), hides part of a table or figure from a reader at this window width.
  const column = document.querySelector("main article, article.bd-article, main") || document.body;
  const bounds = column.getBoundingClientRect();
  const describe = e => {
    const cap = e.closest("figure, .cell, section");
    const head = cap ? (cap.querySelector("figcaption, h1, h2, h3, th") || cap) : e;
    return e.tagName.toLowerCase() + ": " + head.textContent.trim().replace(/\s+/g, " ").slice(0, 60);
  };
  const overflowing = [];
  const items = Array.from(column.querySelectorAll("table, img, figure, svg.plot, .itables, .dataTables_wrapper, .dt-container"));
  for (const e of items) {
    if (e.closest("pre, .highlight, mjx-container, .MathJax")) continue;
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // hidden (e.g. a collapsed cell's input)
    if (r.right > bounds.right + 1 || r.left < bounds.left - 1) {
      overflowing.push("runs past the column by " + Math.round(Math.max(r.right - bounds.right, bounds.left - r.left)) + " px: " + describe(e));
    }
  }
  for (const e of column.querySelectorAll("*")) {
    if (e.closest("pre, .highlight, mjx-container, .MathJax, .cell_input, nav")) continue;
    if (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0 && e.querySelector("table, img")) {
      const style = getComputedStyle(e);
      if (["auto", "scroll"].includes(style.overflowX) || style.overflowX === "hidden") {
        overflowing.push("scrolls sideways (" + e.scrollWidth + " px in " + e.clientWidth + " px): " + describe(e.querySelector("table, img")));
      }
    }
  }
  if (document.documentElement.scrollWidth > document.documentElement.clientWidth + 1) {
    overflowing.push("the page scrolls sideways (" + document.documentElement.scrollWidth + " px in " +
                     document.documentElement.clientWidth + " px)");
  }
  const links = Array.from(column.querySelectorAll("a[href]")).map(a => a.getAttribute("href"));
  // the introduction's list of chapters (its section "Chapters"), in the order a reader meets it
  const list = document.querySelector("section#chapters");
  const chapterLinks = list ? Array.from(list.querySelectorAll("a[href]")).map(a => a.getAttribute("href")) : [];
  const tables = column.querySelectorAll("table").length;
  const figures = column.querySelectorAll("img").length;
  return {
    title: document.title,
    height: Math.max(document.documentElement.scrollHeight, document.body.scrollHeight),
    broken: broken.filter(Boolean),
    mathTotal: math.length, unrendered, mathErrors,
    prose, text: whole.textContent,
    download: download ? download.getAttribute("href") : "",
    overflowing: Array.from(new Set(overflowing)), links, chapterLinks, tables, figures,
  };
}
"""


def _watch(page, report: PageReport) -> None:
    """Record the page's external and failed requests and its JavaScript errors into ``report``."""

    def route(r):
        url = r.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about") or parts.hostname in LOCAL_HOSTS:
            r.continue_()
        else:  # never let it out; say that the page asked
            report.external_requests.append(url)
            r.abort()

    def failed(request):
        if urlsplit(request.url).hostname in LOCAL_HOSTS:  # external ones are aborted above on purpose
            report.failed_requests.append(f"{request.url} ({request.failure})")

    def response(resp):
        if resp.status >= 400:
            report.failed_requests.append(f"{resp.url} (HTTP {resp.status})")

    def console(msg):
        if msg.type == "error":
            report.js_errors.append(f"console: {msg.text[:300]}")

    page.route("**/*", route)
    page.on("requestfailed", failed)
    page.on("response", response)
    page.on("pageerror", lambda exc: report.js_errors.append(str(exc)[:300]))
    page.on("console", console)


def _context_of(text: str, match: re.Match, width: int = 50) -> str:
    return " ".join(text[max(0, match.start() - width): match.end() + width].split())


def browse(out: Path, pages: list | None = None, screenshots: Path | None = None,
           forbidden_strings: tuple = ()) -> list:
    """Open each page of ``out/_build/html`` and return a ``PageReport`` per page.

    ``forbidden_strings`` (e.g. the build folder) are reported as absolute paths wherever they appear
    in a page's text, besides anything that looks like a build machine's absolute path.
    """
    from playwright.sync_api import sync_playwright

    html = Path(out) / "_build" / "html"
    screenshots = Path(screenshots) if screenshots else Path(out) / "_build" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    pages = pages if pages is not None else book_pages(html)
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no chromium on PATH: install it (Debian: apt-get install -y chromium)")
    reports = []
    with BookServer(html) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, service_workers="block")
            for page_path in pages:
                report = PageReport(page=page_path)
                page = context.new_page()

                _watch(page, report)
                page.goto(server.url + page_path, wait_until="networkidle", timeout=60_000)
                seen = page.evaluate(_INSPECT)
                report.title = seen["title"]
                report.height = int(seen["height"])
                report.broken_images = seen["broken"]
                report.math_total = seen["mathTotal"]
                report.math_unrendered = seen["unrendered"]
                report.math_errors = seen["mathErrors"]
                report.download_link = seen["download"]
                report.overflowing = seen["overflowing"]
                report.links = seen["links"]
                report.chapter_links = seen["chapterLinks"]
                report.tables_total = seen["tables"]
                report.figures_total = seen["figures"]
                report.template_leaks = [_context_of(seen["prose"], m) for m in TEMPLATE_LEAK.finditer(seen["prose"])][:10]
                report.raw_tex = [_context_of(seen["prose"], m) for m in RAW_TEX.finditer(seen["prose"])][:10]
                text = seen["text"]
                matches = list(ABS_PATH.finditer(text))
                matches += [m for s in forbidden_strings if s for m in re.finditer(re.escape(str(s)), text)]
                starts, hits = set(), []
                for m in sorted(matches, key=lambda m: m.start()):
                    if not any(abs(m.start() - s) < 80 for s in starts):  # one report per place in the text
                        starts.add(m.start())
                        hits.append(_context_of(text, m))
                report.absolute_paths = hits[:10]
                shot = screenshots / (page_path.removesuffix(".html").replace("/", "__") + ".png")
                page.screenshot(path=str(shot), full_page=True)
                report.screenshot = str(shot)
                page.close()
                reports.append(report)
        finally:
            browser.close()
    (screenshots / "pages.json").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    return reports


def interactive_tables(out: Path, page_path: str, javascript: bool = True) -> list:
    """The interactive tables (itables) of one page as a reader sees them, with or without JavaScript:
    per table, whether it is sortable (DataTables ran), its visible rows and whether it has a search box."""
    from playwright.sync_api import sync_playwright

    html = Path(out) / "_build" / "html"
    with BookServer(html) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, java_script_enabled=javascript, service_workers="block")
            page = context.new_page()
            page.goto(server.url + page_path, wait_until="networkidle", timeout=60_000)
            if javascript:
                page.wait_for_timeout(500)  # the bundle loads after DOMContentLoaded
            found = page.evaluate("""() => Array.from(document.querySelectorAll("main table")).filter(t => {
                const r = t.getBoundingClientRect(); return r.width > 0 && r.height > 0;
              }).map(t => ({
                sortable: t.classList.contains("dataTable"),
                rows: Array.from(t.querySelectorAll("tbody tr")).filter(r => r.getBoundingClientRect().height > 0).length,
                search: !!(t.closest(".dt-container") && t.closest(".dt-container").querySelector("input[type=search]")),
                header: (t.querySelector("thead") || t).textContent,
              }))""")
        finally:
            browser.close()
    for table in found:  # the header's words only (DataTables adds sort buttons, the fallback an info mark)
        table["header"] = re.sub(r"[^A-Za-z0-9%]", "", table["header"])[:80]
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    out = Path(argv[0]).resolve()
    reports = browse(out, forbidden_strings=(str(out),))
    problems = 0
    for r in reports:
        issues = {k: v for k, v in asdict(r).items()
                  if isinstance(v, list) and v and k not in ("links", "chapter_links")}
        problems += bool(issues)
        print(f"{r.page:28s} {r.height:6d} px  maths {r.math_total - len(r.math_unrendered)}/{r.math_total}"
              + ("".join(f"\n    {k}: {v[:3]}" for k, v in issues.items())))
    print(f"screenshots and pages.json in {out / '_build' / 'screenshots'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
