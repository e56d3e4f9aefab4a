"""The package's layers run one way, the device is resolved once and recorded, one age check."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import neuroage_utils
from neuroage_utils import run
from neuroage_utils.errors import DataValidationError
from neuroage_utils.chapters.chapter import Chapter
from neuroage_utils.train import device_label

from .conftest import make_adata

PACKAGE = Path(neuroage_utils.__file__).resolve().parent

#: The package's floors, bottom to top. A module may import from its own floor or a lower one, never a
#: higher one; within a floor the imports must not form a circle (checked below). A new subpackage is
#: placed here, which is where a newcomer sees what may depend on what.
PACKAGES = ["ground", "data", "nn", "train", "models", "evaluation", "clock", "report", "chapters", "run"]
#: Top-level modules: the ground floor (no package imports above it) and the runner on the roof.
TOP = {"errors": "ground", "paper": "ground", "results": "ground", "metrics": "ground", "profiles": "ground",
       "run": "run", "": "ground"}


def floor(module: str) -> int:
    head = module.split(".")[0]
    return PACKAGES.index(TOP[head] if head in TOP else head)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Package modules imported by ``name`` anywhere in its file (function-level imports included)."""
    modules = _modules()
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
                if stem != "neuroage_utils" and not stem.startswith("neuroage_utils."):
                    continue
                stem = stem[len("neuroage_utils."):] if stem != "neuroage_utils" else ""
            targets = [f"{stem}.{a.name}".strip(".") if f"{stem}.{a.name}".strip(".") in modules else stem
                       for a in node.names]
        else:
            continue
        for target in targets:
            target = target[len("neuroage_utils."):] if target.startswith("neuroage_utils.") else target
            if target in modules and target != name:
                found.add(target)
    return found


def test_every_module_sits_on_a_known_floor():
    unknown = sorted(m for m in _modules() if m.split(".")[0] not in TOP and m.split(".")[0] not in PACKAGES)
    assert not unknown, f"add these packages to tests/test_layers.py::PACKAGES or TOP: {unknown}"
    top = sorted(m for m in _modules() if "." not in m and m not in PACKAGES)
    assert len(top) <= 6, f"the package's top holds at most six modules besides its subpackages: {top}"



def test_no_module_imports_from_a_higher_floor():
    upward = {}
    for name, path in _modules().items():
        up = sorted(m for m in _imports(name, path) if floor(m) > floor(name))
        if up:
            upward[name] = up
    assert not upward, f"imports from a higher floor ({' -> '.join(PACKAGES)}): {upward}"


def test_no_import_circle():
    mods = _modules()
    graph = {name: _imports(name, path) - {name} for name, path in mods.items()}
    # a package's __init__ re-exporting its own modules is not a circle
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") and mods[name].name == "__init__.py")}
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.xfail(strict=True, reason="data/simulate.py (900 lines) is being split (issue 16)")
def test_no_module_is_over_800_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items() if len(p.read_text().splitlines()) > 800}
    assert not long, f"split these modules: {long}"


def test_the_named_rules_of_the_layout_hold():
    mods = _modules()
    # torch modules and likelihoods import no training code; train knows no estimator (checked by floors too)
    for name in ("nn.blocks", "nn.likelihoods", "nn.networks"):
        assert not any(m == "train" or m.startswith("train.") for m in _imports(name, mods[name])), name
    # reading a user's file never needs the simulator; the runner never imports the chapter helper
    assert "data.simulate" not in _imports("data.cohort", mods["data.cohort"])
    assert "chapters.chapter" not in _imports("run", mods["run"])


def test_the_import_parser_sees_relative_and_function_level_imports():
    mods = _modules()
    assert {"models.estimator", "nn.networks", "train", "data.features"} <= _imports("models.mlp", mods["models.mlp"])
    assert "models.vae" in _imports("evaluation.recipes", mods["evaluation.recipes"])  # imported inside a function


# -- the device ---------------------------------------------------------------------------------


def test_device_label_names_the_gpu(monkeypatch):
    assert device_label(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Test GPU")
    assert device_label(torch.device("cuda:0")) == "cuda:0 (Test GPU)"


def test_results_and_status_page_record_the_device_used(tmp_path, h5ad_path):
    path = h5ad_path(make_adata(n_donors=12, cells_per_donor=6, n_genes=10))
    chapter = Chapter("data", data_path=str(path), profile="smoke", device="auto", out_dir=str(tmp_path))
    assert isinstance(chapter.device, torch.device)
    used = "cpu" if not torch.cuda.is_available() else device_label(torch.device("cuda"))
    assert chapter.device_label == used
    chapter.add_null("test")
    doc = json.loads(chapter.finish().read_text())
    assert doc["params"]["device"] == used and doc["params"]["device_requested"] == "auto"
    (tmp_path / "executed").mkdir()
    (tmp_path / "executed" / "data.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    status = run.write_status_page(tmp_path, {"data": 1.0}).read_text()
    row = next(line for line in status.splitlines() if line.startswith("| [The cohort]"))
    assert row.split("|")[2].strip().split(",")[0] == used and "auto" not in row  # then precision, workers


# -- one age per donor: one check -----------------------------------------------------------------


def test_every_entry_point_uses_the_one_age_check():
    from neuroage_utils.data.cohort import validate_obs
    from neuroage_utils.models.linear import fit_elastic_net
    from neuroage_utils.models.mlp import MLPRegressor
    from neuroage_utils.models.svd import component_age_correlations

    adata = make_adata(n_donors=10, cells_per_donor=4, n_genes=6)
    ages = adata.obs["age"].to_numpy().copy()
    ages[1] += 1.0  # donor D00 now has two ages
    donors = adata.obs["donor_id"].to_numpy()
    X = adata.X.toarray()
    message = r"donor D00 has more than one age \(25, 26\)"
    calls = [
        lambda: validate_obs(adata.obs.assign(age=ages), "donor_id", "age"),
        lambda: fit_elastic_net(X, ages, donors),
        lambda: MLPRegressor(hidden=(4,), epochs=1, device="cpu", progress=False).fit(X, ages, donors=donors),
        lambda: component_age_correlations(X, ages, donors),
    ]
    for call in calls:
        with pytest.raises(DataValidationError, match=message):
            call()
    # the sentence lives in one module only
    homes = [p.name for p in PACKAGE.rglob("*.py") if "has more than one age" in p.read_text()]
    assert homes == ["checks.py"]
    assert np.isfinite(ages).all()


def test_the_tests_mirror_the_packages():
    """Each folder of tests/ is named after a package of neuroage_utils (tests/data/ tests data/ ...)."""
    tests = Path(__file__).resolve().parent
    package = tests.parent / "neuroage_utils"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders and folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
