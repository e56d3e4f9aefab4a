"""The runner's generated pieces: the status page and the executed notebook prepared for the book."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest

from neuroage_utils import run


def _git(repo: Path, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo,
                   check=True, capture_output=True)


def test_source_commit_says_dirty_and_unknown(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    clean = run.source_commit(repo)
    assert len(clean) == 12 and all(c in "0123456789abcdef" for c in clean)
    (repo / "untracked.txt").write_text("new")  # untracked files do not change what ran
    assert run.source_commit(repo) == clean
    (repo / "a.txt").write_text("two")
    assert run.source_commit(repo) == clean + "-dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert run.source_commit(outside) == "unknown"


def _fake_build(out: Path, device: str):
    (out / "results").mkdir(parents=True)
    (out / "executed").mkdir()
    sha = "ab12cd34ef56" + "0" * 52
    for section in ("data", "vae"):
        doc = {"section": section, "profile": "smoke", "runtime_s": 12.34 if section == "data" else 4000.0,
               "params": {"device": device, "amp": section == "vae", "workers": 2 if section == "vae" else 1},
               "data": {"path": "/some/build/dir/data/cohort.h5ad", "sha256": sha, "simulated": False,
                        "n_cells": 1175, "n_genes": 200, "n_donors": 69},
               "models": {}}
        (out / "results" / f"{section}.json").write_text(json.dumps(doc))
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("x")
        cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=(
            "\rfit:  50%|#####     | 1/2\n" if section == "vae" else
            "/tmp/ipykernel_1/123.py:4: FutureWarning: The default of observed=False is deprecated\n  x = 1\n"
            f"/x/train.py:9: UserWarning: checkpoint {out}/checkpoints/vae/a.pt holds 10 epochs; /elsewhere/b.pt\n"))]
        nb.cells = [cell]
        nb.metadata["papermill"] = {"duration": 20.5 if section == "data" else 4100.0}
        nbformat.write(nb, out / "executed" / f"{section}.ipynb")


def test_status_page_shows_device_commit_time_and_data(tmp_path):
    _fake_build(tmp_path, "cuda:0 (NVIDIA H100)")
    text = run.write_status_page(tmp_path, {"vae": "executed in 4100 s"}, total_s=4130.0).read_text()
    assert "cuda:0 (NVIDIA H100)" in text and "| auto |" not in text
    assert "cuda:0 (NVIDIA H100), bf16, 2 workers |" in text and "cuda:0 (NVIDIA H100) |" in text
    assert f"commit `{run.source_commit()}`" in text
    assert "Total kernel time** over the pages shown: 1 h 08 min" in text  # 20.5 s + 4100 s
    assert "this build executed 1 of them in 1 h 08 min" in text
    assert "`cohort.h5ad` (user data), SHA-256 `ab12cd34ef56`" in text
    assert "/some/build/dir" not in text and "/tmp/ipykernel" not in text
    assert "The cohort: FutureWarning: The default of observed=False is deprecated" in text
    assert "UserWarning: checkpoint checkpoints/vae/a.pt holds 10 epochs; …/b.pt" in text
    assert str(tmp_path) not in text and "/elsewhere" not in text
    assert "fit:" not in text  # progress bars are not warnings
    assert "(this build)" in text and "(cached)" in text
    header = next(line for line in text.splitlines() if line.startswith("| page"))
    assert header.count("|") == 7  # one data file: no data column repeated on each row
    assert "memory: estimated / peak" in header and "| - |" in text  # no memory recorded in these results


def test_parameter_cells_are_removed_from_the_page_and_kept_in_the_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("data_path = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("data_path = '/tmp/x'", metadata={"tags": ["injected-parameters",
                                                                                        "hide-cell"]}),
                nbformat.v4.new_code_cell("fit()", metadata={"tags": ["remove-stderr"]})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    run._prepare_for_book(path)
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].metadata.tags == ["parameters", "remove-cell"]
    assert cells[1].metadata.tags == ["injected-parameters", "remove-cell"]
    assert cells[2].metadata.tags == ["remove-stderr"]
    assert cells[1].source == "data_path = '/tmp/x'"


@pytest.mark.parametrize("seconds, shown", [(4.04, "4.0 s"), (89.9, "89.9 s"), (125, "2 min 05 s"),
                                            (7300, "2 h 01 min")])
def test_durations_read_as_people_say_them(seconds, shown):
    assert run._seconds(seconds) == shown
