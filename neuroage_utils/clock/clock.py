"""A clock a user keeps: fitted on donors given, saved as arrays and JSON, applied to new donors.

>>> clock = Clock.fit(adata, model="pseudobulk_elastic_net", donor_key="donor_id", age_key="age")
>>> clock.save("my_clock")                       # arrays (.npz) + JSON + a model card; no pickle
>>> table = Clock.load("my_clock").predict(new_adata)  # one row per donor, with the age gaps

The clock directory:

- ``clock.json``: the model key, normalisation, feature settings, each member's intercept and chosen
  penalty, the column names it was fitted with, and the SHA-256 of the two files below (checked on
  load);
- ``genes.json``: the clock's genes, in the order of the arrays;
- ``parameters.npz``: per member the coefficients (years per SD), the divisor of each gene, the
  training mean of each feature (used for missing genes) and the training share of UMIs per gene;
  read with ``numpy.load(allow_pickle=False)``, so loading runs no code;
- ``training.json``: the training summary (donors, age range, cross-validated MAE with its interval,
  the out-of-fold prediction of every training donor, data SHA-256, package version, settings);
- ``MODEL_CARD.md``: the same for people; ``coefficients.csv``: the genes each member uses.

Members: ``all`` (every cell) and, with a cell-type column, one clock per cell type with enough
donors, each fitted on that type's cells only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils import __version__
from neuroage_utils.clock import models as clock_models
from neuroage_utils.clock.alignment import align_genes, feature_rows
from neuroage_utils.clock.card import model_card
from neuroage_utils.clock.columns import prediction_columns
from neuroage_utils.clock.columns import control_mask as _controls, obs_column as _column, sha256_file as _sha256_file
from neuroage_utils.data.checks import donor_ages, is_count_matrix, require_counts
from neuroage_utils.data.cohort import MIN_DONORS, counts_matrix, file_sha256, validate_obs
from neuroage_utils.data.features import column_moments
from neuroage_utils.errors import DataValidationError
from neuroage_utils.evaluation.acceleration import add_age_gaps, fit_age_trend
from neuroage_utils.metrics import bootstrap_mean_ci
from neuroage_utils.results import atomic_write_text

__all__ = ["Clock", "FORMAT", "FORMAT_VERSION", "POOLED", "PREDICTION_COLUMNS"]

FORMAT = "neuroage-clock"
FORMAT_VERSION = 1
#: The member fitted on every cell.
POOLED = "all"
#: Columns of :meth:`Clock.predict` (``cell_type`` only with a cell-type column).
PREDICTION_COLUMNS = ["donor_id", "cell_type", "age", "predicted_age", "age_gap", "age_gap_corrected", "correction",
                      "age_gap_scaled", "n_cells", "genes_missing"]
_ARRAYS = ("coef", "scale", "feature_mean", "count_share")


@dataclass
class Member:
    """One fitted linear clock: features -> years."""

    coef: np.ndarray  # years per SD of each gene
    scale: np.ndarray  # divisor of each gene (its training SD; 1 for constant genes)
    feature_mean: np.ndarray  # training mean of each feature (what a missing gene is set to)
    count_share: np.ndarray | None  # share of training UMIs per gene (None: data not counts)
    intercept: float
    info: dict = field(default_factory=dict)  # alpha, l1_ratio, donors, CV predictions and MAE

    def predict_rows(self, rows, missing: np.ndarray) -> np.ndarray:
        """``rows @ (coef / scale) + intercept``, with missing genes held at their training mean."""
        weights = self.coef / self.scale
        offset = float(self.feature_mean[missing] @ weights[missing])
        weights = np.where(missing, 0.0, weights)
        return np.asarray(rows @ weights.astype(rows.dtype), dtype=float).ravel() + self.intercept + offset


def _data_sha256(X, donors, ages, data_path) -> str:
    """SHA-256 of the data file when fitted from one, else of the matrix, donors and ages in memory."""
    if data_path is not None:
        return file_sha256(data_path)
    digest = hashlib.sha256()
    X = sp.csr_matrix(X)
    for part in (X.data, X.indices, X.indptr, np.asarray(ages, float)):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update("\0".join(map(str, donors)).encode())
    return "in-memory:" + digest.hexdigest()


@dataclass
class Clock:
    """A fitted, saveable age clock (see the module docstring)."""

    model: str
    normalisation: str
    genes: np.ndarray
    members: dict  # name -> Member; POOLED first
    extra: dict  # feature settings a prediction needs (pseudocells)
    keys: dict  # donor_key, age_key, cell_type_key, control_key, control_value used in fitting
    settings: dict
    seed: int
    training: dict  # the training summary

    # -- fitting ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, adata, model: str = "pseudobulk_elastic_net", donor_key: str = "donor_id", age_key: str = "age",
            cell_type_key: str | None = None, control_key: str | None = None, control_value=None,
            device="cpu", settings: dict | None = None, seed: int = 0, data_path=None) -> "Clock":
        """Fit ``model`` on every donor of ``adata`` (only the controls when ``control_key`` is given).

        The penalty is tuned by donor-grouped CV inside the fit; the clock's own error comes from an
        outer donor-grouped CV (each fold refitted and tuned on its training donors) and is kept
        with every donor's out-of-fold prediction. ``settings`` override :data:`models.DEFAULT_SETTINGS`.
        """
        settings = clock_models.settings_for(settings)
        obs = adata.obs
        keep = _controls(obs, control_key, control_value)
        if keep is not None:
            adata = adata[keep]
            obs = adata.obs
        validate_obs(obs, donor_key, age_key, min_donors=MIN_DONORS)
        X = counts_matrix(adata)
        normalisation = clock_models.normalisation_for(model, is_count_matrix(X))
        donors = obs[donor_key].astype(str).to_numpy()
        ages = pd.to_numeric(obs[age_key]).to_numpy(dtype=float)
        cell_types = _column(obs, cell_type_key, "cell-type-key") if cell_type_key else None
        genes = np.asarray(adata.var_names).astype(str)
        keys = {"donor_key": donor_key, "age_key": age_key, "cell_type_key": cell_type_key,
                "control_key": control_key, "control_value": None if control_value is None else str(control_value)}
        return cls._fit_rows(model, X, donors, ages, cell_types, genes, normalisation, keys, settings, seed, device,
                             data_sha256=_data_sha256(X, donors, ages, data_path), data_path=data_path)

    @classmethod
    def _fit_rows(cls, model: str, X, donors, ages, cell_types, genes, normalisation: str, keys: dict,
                  settings: dict, seed: int, device, data_sha256: str, data_path=None, cells=None,
                  training_extra: dict | None = None) -> "Clock":
        """The clock from validated rows: ``X`` raw values, one donor, age (and cell type) per row.

        A row is a cell, or (streamed pseudobulk, :mod:`neuroage_utils.clock.streamed`) the summed counts
        of a donor's cells (of one type); ``cells`` then says how many cells each row sums, so the
        recorded cell counts stay those of the file. ``training_extra`` adds facts to the summary.
        """
        if len(set(genes)) != len(genes):
            raise DataValidationError("the data have duplicated gene names: make var_names unique "
                                      "(adata.var_names_make_unique()) before fitting")
        cells = np.ones(len(donors), dtype=np.int64) if cells is None else np.asarray(cells, dtype=np.int64)
        groups = {POOLED: np.ones(len(donors), bool)}
        skipped = {}
        if cell_types is not None:
            for t in sorted(set(cell_types)):
                mask = cell_types == t
                n = len(np.unique(donors[mask]))
                if n >= MIN_DONORS:
                    groups[t] = mask
                else:
                    skipped[t] = f"{n} donors with {t} cells, fewer than {MIN_DONORS}"
        members = {}
        extra = {}
        for name, mask in groups.items():
            members[name], extra = _fit_member(model, X[mask], donors[mask], ages[mask], normalisation, settings,
                                               seed, device, n_cells=int(cells[mask].sum()))
        donor_age = donor_ages(ages, donors)
        control_key, control_value = keys["control_key"], keys["control_value"]
        training = {
            "model": model,
            "normalisation": normalisation,
            "n_donors": int(len(donor_age)),
            "n_cells": int(cells.sum()),
            "n_genes": int(X.shape[1]),
            "age_range": [float(donor_age.min()), float(donor_age.max())],
            "age_mean": float(donor_age.mean()),
            "donor_ids": [str(d) for d in donor_age.index],
            "fitted_on": (f"cells with obs['{control_key}'] == '{control_value}'" if control_key else "every cell"),
            "cell_types_skipped": skipped,
            "data_sha256": data_sha256,
            "data_path": None if data_path is None else str(data_path),
            "package": "neuroage-utils",
            "package_version": __version__,
            "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device),
            "settings": settings,
            "seed": int(seed),
            **(training_extra or {}),
        }
        return cls(model, normalisation, np.asarray(genes).astype(str), members, extra, keys, settings, int(seed),
                   training)

    # -- predicting ---------------------------------------------------------------------------------
    def predict(self, adata, donor_key: str | None = None, age_key: str | None = None,
                cell_type_key: str | None = None, control_key: str | None = None, control_value=None) -> pd.DataFrame:
        """One row per donor (per donor and cell type with a cell-type column; pooled rows have
        ``cell_type == "all"``): ``donor_id, age, predicted_age, age_gap, age_gap_corrected,
        correction, n_cells, genes_missing``.

        ``correction`` says what the corrected gap's age trend was fitted on: ``new_controls`` (the
        controls of these data, given by ``control_key``/``control_value``) or ``training_cv`` (the
        clock's own out-of-fold predictions of its training donors). ``age_gap_scaled`` is the
        corrected gap divided by that trend's slope: a clock that moves ``b`` years per year of age
        moves only ``b x A`` for a donor ``A`` years older inside, so this puts the gap in years. Missing genes are set to their
        training mean; above 20% missing a :class:`~neuroage_utils.clock.alignment.GeneOverlapWarning`.
        """
        donor_key = donor_key or self.keys["donor_key"]
        age_key = age_key or self.keys["age_key"]
        obs = adata.obs
        donors, ages, controls = prediction_columns(obs, donor_key, age_key, control_key, control_value)
        cell_types = _column(obs, cell_type_key, "cell-type-key") if cell_type_key else None
        X = counts_matrix(adata)
        if self.normalisation != "as_given":
            require_counts(X, f"this clock ({self.model}, fitted on raw counts)")
        frames = []
        for name, member in self.members.items():
            mask = np.ones(len(donors), bool) if name == POOLED else (
                cell_types == name if cell_types is not None else None)
            if mask is None or not mask.any():
                continue
            frames.append(self._predict_member(name, member, X[mask], adata.var_names, donors[mask], ages[mask],
                                               None if controls is None else controls[mask]))
        table = pd.concat(frames, ignore_index=True)
        if cell_type_key is None:
            table = table.drop(columns="cell_type")
        return table

    def _predict_member(self, name, member: Member, X, gene_names, donors, ages, controls) -> pd.DataFrame:
        has_rest = member.count_share is not None
        aligned, missing = align_genes(X, gene_names, self.genes, member.count_share, "the data")
        rows, owners = feature_rows(aligned, donors, self.normalisation, self.model, self.extra, has_rest)
        pred = pd.Series(member.predict_rows(rows, missing)).groupby(owners, sort=True).mean()
        cells = pd.DataFrame({"donor_id": donors, "age": ages})
        per_donor = cells.groupby("donor_id", sort=True).agg(age=("age", "first"), n_cells=("age", "size"))
        control_donors = None if controls is None else set(donors[controls])
        return self._member_table(name, member, pred, per_donor, control_donors, missing)

    def _member_table(self, name, member: Member, pred: pd.Series, per_donor: pd.DataFrame, control_donors,
                      missing: np.ndarray) -> pd.DataFrame:
        """The prediction rows of one member from its per-donor predictions ``pred`` and ``per_donor``
        (index donor id; ``age``, ``n_cells``); the gap's trend on ``control_donors`` when given."""
        table = pd.DataFrame({"donor_id": pred.index.astype(str), "cell_type": name,
                              "age": per_donor.loc[pred.index, "age"].to_numpy(),
                              "predicted_age": pred.to_numpy(),
                              "n_cells": per_donor.loc[pred.index, "n_cells"].to_numpy().astype(int),
                              "genes_missing": float(missing.mean())})
        if control_donors is not None:
            ref = table[table["donor_id"].isin(control_donors)]
            trend = fit_age_trend(ref["age"], ref["predicted_age"], "new_controls")
        else:
            cv = pd.DataFrame(member.info["cv_predictions"])
            trend = fit_age_trend(cv["age"], cv["predicted"], "training_cv")
        table = add_age_gaps(table, trend)
        return table[PREDICTION_COLUMNS]

    # -- saving and loading -------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write the clock directory (see the module docstring); an existing clock there is replaced,
        any other non-empty directory is an error."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not (directory / "clock.json").exists():
            raise DataValidationError(f"{directory} exists and is not a clock directory: pass a new or empty --out")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self._write(tmp)
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)  # the directory appears whole or not at all
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    def _write(self, out: Path) -> None:
        arrays = {}
        names = list(self.members)
        for i, name in enumerate(names):
            m = self.members[name]
            for key in _ARRAYS:
                value = getattr(m, key)
                if value is not None:
                    arrays[f"m{i}_{key}"] = np.asarray(value, dtype=np.float64)
        with open(out / "parameters.npz", "wb") as fh:
            np.savez(fh, **arrays)
        atomic_write_text(out / "genes.json", json.dumps([str(g) for g in self.genes]))
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model": self.model, "normalisation": self.normalisation,
            "normalisation_description": clock_models.NORMALISATIONS[self.normalisation],
            "row": clock_models.MODELS[self.model][0], "features": self.extra, "keys": self.keys,
            "settings": self.settings, "seed": self.seed, "n_genes": int(len(self.genes)),
            "members": [{"name": name, "intercept": float(self.members[name].intercept),
                         **{k: v for k, v in self.members[name].info.items() if k != "cv_predictions"}}
                        for name in names],
            "files": {"parameters.npz": _sha256_file(out / "parameters.npz"),
                      "genes.json": _sha256_file(out / "genes.json")},
            "package_version": __version__,
        }
        atomic_write_text(out / "clock.json", json.dumps(doc, indent=1))
        training = {**self.training, "members": {name: self.members[name].info for name in names}}
        atomic_write_text(out / "training.json", json.dumps(training, indent=1))
        coef_rows = []
        for name in names:
            m = self.members[name]
            for g in np.flatnonzero(m.coef):
                coef_rows.append({"member": name, "gene": self.genes[g], "coef_years_per_sd": m.coef[g]})
        coefs = pd.DataFrame(coef_rows, columns=["member", "gene", "coef_years_per_sd"])
        coefs = coefs.reindex(coefs["coef_years_per_sd"].abs().sort_values(ascending=False).index)
        atomic_write_text(out / "coefficients.csv", coefs.to_csv(index=False))
        atomic_write_text(out / "MODEL_CARD.md", model_card(self))

    @classmethod
    def load(cls, directory) -> "Clock":
        """Read a clock directory; checks its format and the SHA-256 of its arrays and genes. A torch
        clock's directory (``neuroage fit --model vae|mlp``) gives a
        :class:`~neuroage_utils.clock.torch_clock.TorchClock`, with the same ``predict``."""
        directory = Path(directory)
        path = directory / "clock.json"
        if not path.exists():
            raise DataValidationError(f"{directory} is not a clock directory (no clock.json): pass the --out of "
                                      "neuroage fit")
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            raise DataValidationError(f"{path} is not valid JSON: refit the clock with neuroage fit") from None
        from neuroage_utils.clock.torch_clock import TORCH_FORMAT, TorchClock

        if doc.get("format") == TORCH_FORMAT:  # a VAE / MLP clock: its network rebuilt from its arrays
            return TorchClock.load(directory, doc)
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise DataValidationError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} clock: refit it with this version")
        for name, digest in doc["files"].items():
            if not (directory / name).exists() or _sha256_file(directory / name) != digest:
                raise DataValidationError(f"{directory / name} is missing or was changed after the clock was "
                                          "saved: refit the clock or restore the file")
        genes = np.asarray(json.loads((directory / "genes.json").read_text()), dtype=str)
        training = json.loads((directory / "training.json").read_text())
        with np.load(directory / "parameters.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        members = {}
        for i, entry in enumerate(doc["members"]):
            name = entry["name"]
            info = dict(training["members"][name])
            members[name] = Member(*(arrays.get(f"m{i}_{k}") for k in _ARRAYS), intercept=float(entry["intercept"]),
                                   info=info)
        training = {k: v for k, v in training.items() if k != "members"}
        return cls(doc["model"], doc["normalisation"], genes, members, doc["features"], doc["keys"],
                   doc["settings"], int(doc["seed"]), training)


def _fit_member(model, X, donors, ages, normalisation, settings, seed, device, n_cells=None) -> tuple[Member, dict]:
    """One member: out-of-fold predictions of the clock's own CV, then the final fit on all donors
    (``n_cells``: the cells its rows hold, when a row sums several)."""
    cv = clock_models.cv_predictions(model, X, donors, ages, normalisation, settings, seed, device)
    fitted, rows, _, extra = clock_models.fit_final(model, X, donors, ages, normalisation, settings, seed)
    feature_mean, _ = column_moments(rows)
    share = None
    if normalisation != "as_given":
        totals = np.asarray(X.sum(axis=0, dtype=np.float64)).ravel()  # float32 sums stop counting at 2**24
        share = totals / totals.sum()
    errors = (cv["predicted"] - cv["age"]).abs().to_numpy()
    info = {
        "alpha": fitted.alpha_, "l1_ratio": fitted.l1_ratio_, "n_nonzero": fitted.n_nonzero_,
        "converged": bool(fitted.converged), "n_donors": int(len(cv)),
        "n_cells": int(X.shape[0] if n_cells is None else n_cells),
        "n_rows_fitted": int(rows.shape[0]),
        "age_range": [float(cv["age"].min()), float(cv["age"].max())],
        "cv_mae": float(errors.mean()),
        "cv_mae_ci95": bootstrap_mean_ci(errors, n_boot=int(settings["boot"]), seed=seed),
        "cv_r": float(np.corrcoef(cv["age"], cv["predicted"])[0, 1]) if cv["predicted"].std() > 0 else None,
        "cv_folds": int(min(settings["folds"], len(cv))), "cv_repeats": int(settings["repeats"]),
        "cv_predictions": [{"donor_id": str(r.donor_id), "age": float(r.age), "predicted": float(r.predicted)}
                           for r in cv.itertuples(index=False)],
    }
    member = Member(coef=fitted.coef_.astype(float), scale=np.asarray(fitted.scale_, float),
                    feature_mean=np.asarray(feature_mean, float), count_share=share,
                    intercept=float(fitted.intercept_), info=info)
    return member, extra
