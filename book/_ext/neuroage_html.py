"""Sphinx tweaks for the book's HTML pages.

sphinx-thebe (loaded by Jupyter Book whether or not launch buttons are on) registers its inline
configuration script on every ``env-before-read-docs``, which fires more than once per build; each
page then declares ``const THEBE_JS_URL`` twice and the browser reports a SyntaxError. Each script
is kept once per page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Interactive tables (``neuroage_utils.report.tables.interactive``): the DataTables bundle that comes
# with itables, served from the build (offline), and loaded by a page only when it holds such a table.
_ITABLES_LOADER = """// Loads the DataTables bundle of itables {version} from this build, once, on pages with an
// interactive table; the tables' own scripts wait for the event below. Without JavaScript, or
// until it loads, each table shows in full as plain HTML.
document.addEventListener("DOMContentLoaded", () => {{
  const wanted = Array.from(document.scripts).some(s => s.textContent.includes("new ITable("));
  if (!wanted || window.{global_name}) return;
  const here = document.querySelector('script[src*="itables/loader.js"]').src;
  const css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = new URL("dt_bundle.css", here).href;
  document.head.appendChild(css);
  window.{global_name} = import(new URL("dt_bundle.js", here).href);
  window.{global_name}.then(() => window.dispatchEvent(new Event("itables-{version}-ready")));
}});
"""


def _copy_itables(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    import itables

    version = itables.__version__
    target = Path(app.outdir) / "_static" / "itables"
    target.mkdir(parents=True, exist_ok=True)
    source = Path(itables.__file__).parent / "html"
    for name in ("dt_bundle.js", "dt_bundle.css"):
        shutil.copyfile(source / name, target / name)
    global_name = "_itables_" + version.replace(".", "_")
    (target / "loader.js").write_text(_ITABLES_LOADER.format(version=version, global_name=global_name))


def _bench_substitutions(app, config) -> None:
    """``{{ bench_book_time }}``, ``{{ bench_date }}``... for any page: the one source of the book's
    build time and benchmark date is ``bench/results.json`` (written by ``make bench``)."""
    from neuroage_utils.report.benchfacts import substitutions

    found = substitutions()  # this checkout's bench/results.json (the book may render in another folder)
    config.myst_substitutions = {**(getattr(config, "myst_substitutions", None) or {}), **found}


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""  # inline scripts come as None or ""
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    # Early: Sphinx stops calling handlers of this event at the first that returns a template name.
    app.connect("html-page-context", _unique_scripts, priority=100)
    app.connect("build-finished", _copy_itables)
    app.connect("config-inited", _bench_substitutions)
    app.add_js_file("itables/loader.js")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
