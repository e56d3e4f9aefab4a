"""The "Run it on your cohort" page: its worked example runs exactly as printed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from neuroage_utils import results

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "book" / "own_cohort.md"


def worked_example() -> tuple[str, str]:
    """The page's Python block and bash command under '## Worked example'."""
    text = PAGE.read_text().split("## Worked example", 1)[1]
    python = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip()
    return python, bash


def test_the_worked_example_runs_as_printed(tmp_path):
    python, bash = worked_example()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    made = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    assert (tmp_path / "small.h5ad").exists()
    argv = shlex.split(bash)
    assert argv[:3] == ["python", "-m", "neuroage_utils.run"]
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = tmp_path / "my_run"
    doc = results.read_results(out, "baselines")
    assert doc["data"]["simulated"] is False and doc["data"]["n_donors"] == 12
    assert Path(doc["data"]["path"]).name == "small.h5ad"
    assert doc["params"]["donor_key"] == "patient" and doc["params"]["age_key"] == "age_years"
    assert "elastic_net" in doc["models"] and (out / "executed" / "baselines.ipynb").exists()
    assert not (out / "results" / "vae.json").exists()  # --only data baselines
    assert json.loads((out / "results" / "data.json").read_text())["data"]["n_cells"] == 480


def test_the_page_names_the_flags_it_explains():
    text = PAGE.read_text()
    for needle in ("--donor-key", "--age-key", "layers['counts']", "--allow-non-counts", "--device cuda",
                   "peak memory", "*derived*"):
        assert needle in text, needle
