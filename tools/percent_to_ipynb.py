"""Turn a `# %%` script into a notebook without outputs (a convenience for authors).

    python tools/percent_to_ipynb.py notebooks/src/svd.py notebooks/svd.ipynb

`# %% [markdown]` starts a Markdown cell (its lines lose their leading "# "); `# %% tags=["parameters"]`
starts a code cell with those tags. The notebook in notebooks/ is the source of truth.
"""

import json
import re
import sys

import nbformat


def convert(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    blocks = re.split(r"^# %%", text, flags=re.M)
    for block in blocks[1:]:
        header, _, body = block.partition("\n")
        body = body.strip("\n")
        tags = []
        m = re.search(r"tags=(\[.*?\])", header)
        if m:
            tags = json.loads(m.group(1))
        if "[markdown]" in header:
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines()]
            cell = nbformat.v4.new_markdown_cell("\n".join(lines))
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    nbformat.write(convert(open(src).read()), dst)
    print(f"wrote {dst}")
