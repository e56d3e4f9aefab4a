"""Sphinx tweaks for the book's HTML pages.

sphinx-thebe (loaded by Jupyter Book whether or not launch buttons are on) registers its inline
configuration script on every ``env-before-read-docs``, which fires more than once per build; each
page then declares ``const THEBE_JS_URL`` twice and the browser reports a SyntaxError. Each script
is kept once per page.
"""

from __future__ import annotations


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
    return {"parallel_read_safe": True, "parallel_write_safe": True}
