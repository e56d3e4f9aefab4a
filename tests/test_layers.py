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
from neuroage_utils.notebook import Chapter
from neuroage_utils.train import device_label

from .conftest import make_adata

PACKAGE = Path(neuroage_utils.__file__).resolve().parent

#: Each module's layer: a module may import only from strictly lower layers (so no circle either).
#: A new module must be placed here, which is where a newcomer sees what may depend on what.
LAYERS = {
    # ground: the error type, the study, the results contract
    "errors": 0, "paper": 0, "results": 0,
    "checks": 1, "evaluate": 1, "tables": 1,
    "features": 2, "profiles": 2,
    "data": 3,
    "simulate": 4,
    # torch linear algebra on any device (NMF by HALS, randomised SVD, batched elastic net): numpy/torch only
    "device_linalg": 4.5,
    # models: torch modules, building blocks and likelihoods import no training code
    "models": 5, "models.blocks": 5, "models.likelihoods": 5, "models.linear": 5, "models.svd": 5,
    "models.nmf": 5.1, "models.networks": 6,
    # training: used by the estimators, never the reverse
    "train.device": 7, "train.batches": 7.1, "train.schedules": 7.1, "train.checkpoints": 7.2, "train.loop": 7.3,
    "train": 7.4,
    # independent fits in single-threaded worker processes (grids, CV folds)
    "workers": 7.5,
    "models.estimator": 8, "models.mlp": 9, "models.vae": 9,
    # analyses built from estimators: probes, the VAE clock, ground-truth recovery, repeated CV
    "probe": 9.5, "models.vae_clock": 9.6, "recovery": 9.7, "crossval": 9.8, "realdata": 3.5, "donor_clocks": 9.8,
    "vae_experiments": 9.9,
    # on top: figures, the chapter helper, the command line
    "plots": 10, "summary_plots": 10.1, "realdata_plots": 10.1, "summary": 10.2, "notebook": 11, "run": 12,
}


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


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(LAYERS))
    assert not missing, f"place these modules in tests/test_layers.py::LAYERS: {missing}"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_no_module_imports_from_its_own_or_a_higher_layer(name):
    path = _modules()[name]
    upward = {m: LAYERS[m] for m in _imports(name, path) if LAYERS[m] >= LAYERS[name]}
    assert not upward, f"{name} (layer {LAYERS[name]}) imports from layers at or above it: {upward}"


def test_the_named_rules_of_the_layout_hold():
    mods = _modules()
    for name in ("models.blocks", "models.likelihoods", "models.networks"):
        assert not any(m == "train" or m.startswith("train.") for m in _imports(name, mods[name])), name
    for name in mods:
        if name.startswith("train"):
            assert not any(m.startswith("models.") and LAYERS[m] > LAYERS["models.networks"]
                           for m in _imports(name, mods[name])), name
    assert "simulate" not in _imports("data", mods["data"])
    assert "notebook" not in _imports("run", mods["run"])


def test_the_import_parser_sees_relative_and_function_level_imports():
    mods = _modules()
    assert {"models.estimator", "models.networks", "train", "features"} <= _imports("models.mlp", mods["models.mlp"])
    assert "models.vae" in _imports("notebook", mods["notebook"])  # imported inside a method


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
    from neuroage_utils.data import validate_obs
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
