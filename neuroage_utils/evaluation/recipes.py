"""The one registry of model recipes: a model key -> what the model reads, its name for readers, and
the one function that builds it from typed settings, a device and a seed.

Every part of the book that needs "model K with these settings on this device" asks here: the
chapters (:meth:`~neuroage_utils.chapters.chapter.Chapter.mlp`, ``Chapter.vae``), the repeated
cross-validation (:mod:`neuroage_utils.evaluation.crossval`), the real-donor clocks
(:mod:`neuroage_utils.chapters.donor_clocks`) and the user-facing clock API::

    from neuroage_utils.evaluation import recipes

    spec = recipes.get("pseudobulk_elastic_net")          # a Recipe: .input, .name, .torch, .settings
    spec.input                                           # Input.COUNTS: feed raw counts
    model = recipes.build("pseudobulk_elastic_net", {"n_alphas": 8}, device="cpu", seed=0)
    model.fit(X_train, ages_train, donors_train)         # cells of the training donors
    model.predict_donors(X_test, donors_test)            # pandas.Series: predicted age per donor id

Two levels of data, one registry: ``level="cells"`` (the default: a cohort of cells, as in every
chapter but the real-donor one) and ``level="donors"`` (one continuous profile per donor, log1p(CPM),
as in the real-donor files). A key names the same kind of model at both levels (``"elastic_net"``),
but a recipe is fitted on the rows it is given, so the two levels are separate recipes.

The protocol of a built model: ``fit(X, ages, donors) -> self`` and ``predict_donors(X, donors) ->
pandas.Series`` (index ``donor_id``, sorted); cell-level models also ``predict(X)`` one age per row.
Settings are a typed dataclass per recipe (``recipe.settings``, a comment per field); :func:`build`
takes an instance or a mapping of its field names (unknown names are an error, so a misspelt
setting never silently falls back to its default). ``overrides`` replace constructor options of the
underlying estimator for one run (an experiment's age weight, ``progress=False`` in a worker).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import numpy as np
import pandas as pd

from neuroage_utils import paper
from neuroage_utils.data.cohort import subsample_cells
from neuroage_utils.errors import DataValidationError

__all__ = ["Input", "Recipe", "get", "build", "keys", "name", "names", "NeedsCounts", "ElasticNetSettings",
           "PseudocellSettings", "MLPSettings", "SVDRidgeSettings", "NMFMLPSettings", "VAESettings",
           "VAEClockSettings", "NullSettings", "NullClock", "NMFMLP", "CellSVDRidge", "DonorSVDRidge",
           "DonorElasticNet", "CellElasticNet"]

LEVELS = ("cells", "donors")


class NeedsCounts(DataValidationError):
    """A model that sums or models raw counts was given values that are not counts."""


class Input(str, Enum):
    """What a recipe's ``fit`` and ``predict_donors`` read."""

    COUNTS = "raw counts per cell"  # summed or modelled as counts: values that are not counts are refused
    RAW_CELLS = "cells as stored"  # counts when the data are counts, else the values as given (NMF, VAEs)
    LOG_CELLS = "log-normalised cells"  # log1p(CP10k) of counts (the values as given when not counts)
    DONOR_PROFILES = "donor profiles"  # one continuous profile per donor (log1p CPM), no cells


# --------------------------------------------------------------------------------------------------
# Typed settings, one dataclass per kind of model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NullSettings:
    """The null model has no settings: it predicts the training donors' mean age."""


@dataclass(frozen=True)
class ElasticNetSettings:
    n_alphas: int = 20  # penalties per L1 ratio, on a log scale down from the smallest that zeroes every gene
    l1_ratios: tuple = (0.1, 0.5, 0.9, 1.0)  # the L1 share of the penalty, each tried
    n_splits: int = 5  # inner CV folds over training donors (fewer when fewer donors)
    max_cells: int | None = None  # cells a cell-level fit draws at random from its training cells (None: all)
    eps: float = 1e-2  # donor profiles: smallest penalty as a share of the largest
    max_iter: int = 2000  # donor profiles: coordinate-descent iterations per fit
    tol: float = 1e-4  # donor profiles: coordinate-descent tolerance


@dataclass(frozen=True)
class PseudocellSettings(ElasticNetSettings):
    n_per_donor: int = 100  # pseudocells drawn per donor
    cells_per_pseudocell: int = 15  # cells summed into one pseudocell


@dataclass(frozen=True)
class MLPSettings:
    hidden: tuple = (500, 500)  # widths of the hidden layers
    lr: float = paper.TRAINING["lr"]  # Adam's learning rate
    epochs: int = paper.TRAINING["mlp_epochs"]  # passes over the training cells
    batch_size: int = paper.TRAINING["batch_size"]  # cells per optimiser step
    dropout: float = paper.TRAINING["mlp_dropout"]  # dropout after each hidden layer (the paper's 0.4)
    weight_decay: float = 0.0  # Adam's L2 penalty
    early_stopping_patience: int | None = None  # epochs without validation gain before stopping (None: off)
    max_cells: int | None = None  # training cells drawn at random for the fit (None: all)
    amp: bool = False  # bf16 autocast (runs only where the device multiplies bf16 in hardware)


@dataclass(frozen=True)
class SVDRidgeSettings:
    n_components: int = 100  # SVD components of the z-scored genes
    n_alphas: int = 20  # cells: ridge penalties tried by the donor-mean probe's inner CV
    n_splits: int = 5  # cells: the probe's inner CV folds over training donors (fewer when fewer donors)
    max_cells: int | None = None  # cells the SVD is fitted on, drawn at random (None: all)
    linalg_backend: str = "auto"  # "auto": torch on CUDA, ARPACK on a CPU


@dataclass(frozen=True)
class NMFMLPSettings:
    n_components: int = 100  # NMF programmes, fitted on raw values (as the paper)
    max_iter: int = 200  # NMF iterations
    mlp: MLPSettings = field(default_factory=MLPSettings)  # the MLP on the programme usages
    max_cells: int | None = None  # training cells drawn at random for both fits (None: all)
    linalg_backend: str = "auto"  # "auto": torch on CUDA, HALS on a CPU


@dataclass(frozen=True)
class VAESettings:
    hidden: tuple = (300, 150)  # encoder widths (the decoder mirrors them)
    latent: int = 100  # latent dimensions
    age_hidden: tuple = (20, 20)  # widths of the age head on the latent means
    dropout: float = 0.0  # encoder dropout
    epochs: int = 100  # passes over the training cells
    lr: float = paper.TRAINING["lr"]  # Adam's learning rate
    batch_size: int = paper.TRAINING["batch_size"]  # cells per optimiser step
    kl_cycle: dict | None = None  # cyclical KL weight: zero_epochs / rise_epochs / hold_epochs (None: the model's)
    t0: int = paper.TRAINING["t0"]  # cosine warm-restart period (epochs)
    input_noise: float = 0.0  # denoising VAE: share of each cell's counts corrupted per batch
    log_normalize: bool = True  # log1p(CP10k) the input of the encoder (False: values already continuous)
    checkpoint_path: str | None = None  # where the run checkpoints (None: no checkpoints)
    checkpoint_every: int = 10  # epochs between checkpoints
    amp: bool = False  # bf16 autocast (runs only where the device multiplies bf16 in hardware)


@dataclass(frozen=True)
class VAEClockSettings:
    likelihood: str = "auto"  # "auto": Poisson on counts, Gaussian otherwise
    hidden: tuple = (128, 64)  # encoder widths
    latent: int = 16  # latent dimensions
    epochs: int = 20  # passes over the VAE's training cells
    batch_size: int = 512  # cells per optimiser step
    max_cells: int | None = None  # cells the VAE trains on, drawn at random (None: all)
    probe_alphas: int = 20  # penalties of the donor-level elastic net on latent means
    probe_splits: int = 5  # its inner CV folds over training donors
    amp: bool = False  # bf16 autocast (runs only where the device multiplies bf16 in hardware)


# --------------------------------------------------------------------------------------------------
# Models that are more than one estimator: all with fit(X, ages, donors) and predict_donors(X, donors)
# --------------------------------------------------------------------------------------------------


def _donor_mean(pred, donors) -> pd.Series:
    """Predicted age per donor: the mean over its rows (index ``donor_id``, sorted)."""
    s = pd.Series(np.asarray(pred, float)).groupby(np.asarray(donors)).mean()
    s.index.name = "donor_id"
    return s.rename("predicted")


def _drawn(n_rows: int, max_cells: int | None, seed: int) -> np.ndarray:
    """Rows of a fit drawn as :func:`~neuroage_utils.data.cohort.subsample_cells` draws them."""
    return subsample_cells(np.ones(n_rows, dtype=bool), max_cells, seed=seed)


def _n_splits(wanted: int, donors) -> int:
    return int(min(wanted, len(np.unique(np.asarray(donors)))))


class _CellModel:
    """``predict_donors`` of a model whose ``predict`` gives one age per cell: the donor's mean."""

    def predict_donors(self, X, donors) -> pd.Series:
        return _donor_mean(self.predict(X), np.asarray(donors).astype(str))


class NullClock:
    """The null model: every donor is predicted the mean age of the training donors (one per donor)."""

    def __init__(self, settings: NullSettings | None = None, seed: int = 0):
        self.settings = settings

    def fit(self, X, ages, donors=None) -> "NullClock":
        ages = np.asarray(ages, float)
        donors = np.arange(len(ages)) if donors is None else np.asarray(donors).astype(str)
        self.mean_ = float(pd.Series(ages, index=donors).groupby(level=0).first().mean())
        return self

    def predict(self, X) -> np.ndarray:
        return np.full(X.shape[0], self.mean_)

    def predict_donors(self, X, donors) -> pd.Series:
        ids = sorted(set(np.asarray(donors).astype(str)))
        return pd.Series(self.mean_, index=pd.Index(ids, name="donor_id"), name="predicted")


class CellElasticNet:
    """The cell-level elastic net (:func:`~neuroage_utils.models.linear.fit_elastic_net`) on at most
    ``max_cells`` of the training cells, penalty tuned by donor-grouped CV."""

    def __init__(self, settings: ElasticNetSettings, seed: int = 0):
        self.settings, self.seed = settings, seed

    def fit(self, X, ages, donors) -> "CellElasticNet":
        from neuroage_utils.models.linear import fit_elastic_net

        S, donors = self.settings, np.asarray(donors)
        rows = _drawn(X.shape[0], S.max_cells, self.seed)
        self.n_cells_fit_ = int(rows.sum())
        self.clock_ = fit_elastic_net(X[rows], np.asarray(ages)[rows], donors[rows], l1_ratios=S.l1_ratios,
                                      n_alphas=S.n_alphas, n_splits=_n_splits(S.n_splits, donors), seed=self.seed)
        return self

    def predict(self, X) -> np.ndarray:
        return self.clock_.predict(X)

    def predict_donors(self, X, donors) -> pd.Series:
        return self.clock_.predict_donors(X, donors)


class _SummedElasticNet:
    """An elastic net on summed counts (pseudobulk or pseudocells) of the training donors."""

    what = ""

    def __init__(self, settings: ElasticNetSettings, seed: int = 0):
        self.settings, self.seed = settings, seed

    def _fit(self, X, ages, donors, **options):
        from neuroage_utils.data.checks import is_count_matrix

        if not is_count_matrix(X):
            raise NeedsCounts(f"{self.what} sums raw counts and the data are not raw counts")
        S = self.settings
        return self._fitter()(X, ages, donors, l1_ratios=S.l1_ratios, n_alphas=S.n_alphas,
                              n_splits=_n_splits(S.n_splits, donors), seed=self.seed, **options)

    def predict_donors(self, X, donors) -> pd.Series:
        return self.clock_.predict_donors(X, donors)


class PseudobulkElasticNet(_SummedElasticNet):
    what = "the pseudobulk elastic net"

    def _fitter(self):
        from neuroage_utils.models.linear import fit_pseudobulk_elastic_net

        return fit_pseudobulk_elastic_net

    def fit(self, X, ages, donors) -> "PseudobulkElasticNet":
        self.clock_ = self._fit(X, ages, donors)
        return self


class PseudocellElasticNet(_SummedElasticNet):
    what = "the pseudocell elastic net"

    def _fitter(self):
        from neuroage_utils.models.linear import fit_pseudocell_elastic_net

        return fit_pseudocell_elastic_net

    def fit(self, X, ages, donors) -> "PseudocellElasticNet":
        S = self.settings
        self.clock_ = self._fit(X, ages, donors, n_per_donor=S.n_per_donor,
                                cells_per_pseudocell=S.cells_per_pseudocell)
        return self


class CellSVDRidge:
    """SVD of z-scored log-normalised genes (fitted on at most ``max_cells`` training cells), then a
    ridge on donor-mean scores tuned over training donors (:mod:`~neuroage_utils.models.probe`)."""

    def __init__(self, settings: SVDRidgeSettings, seed: int = 0, device="cpu"):
        self.settings, self.seed, self.device = settings, seed, device

    def fit(self, X, ages, donors) -> "CellSVDRidge":
        from neuroage_utils.models.probe import fit_probe
        from neuroage_utils.models.svd import fit_svd

        S, donors = self.settings, np.asarray(donors).astype(str)
        rows = _drawn(X.shape[0], S.max_cells, self.seed)
        k = int(min(S.n_components, min(int(rows.sum()), X.shape[1]) - 2))
        self.svd_ = fit_svd(X[rows], n_components=max(k, 1), seed=self.seed, backend=S.linalg_backend,
                            device=self.device)
        self.probe_ = fit_probe(self.svd_.transform(X), donors, ages, np.unique(donors), kind="ridge",
                                n_alphas=S.n_alphas, n_splits=_n_splits(S.n_splits, donors), seed=self.seed)
        return self

    def predict_donors(self, X, donors) -> pd.Series:
        from neuroage_utils.models.probe import donor_means

        F, ids = donor_means(self.svd_.transform(X), np.asarray(donors).astype(str))
        return pd.Series(self.probe_.predict(F), index=pd.Index(ids, name="donor_id"), name="predicted")


class NMFMLP(_CellModel):
    """NMF programmes of the raw values, then an MLP on the usages (the paper's Fig 1c model)."""

    def __init__(self, settings: NMFMLPSettings, seed: int = 0, device="cpu", **overrides):
        self.settings, self.seed, self.device, self.overrides = settings, seed, device, overrides

    def fit(self, X, ages, donors) -> "NMFMLP":
        from neuroage_utils.models.nmf import fit_nmf

        S = self.settings
        rows = _drawn(X.shape[0], S.max_cells, self.seed)
        X, ages, donors = X[rows], np.asarray(ages)[rows], np.asarray(donors)[rows]
        k = int(min(S.n_components, X.shape[1] - 1, X.shape[0] - 1))
        self.nmf_ = fit_nmf(X, n_components=k, seed=self.seed, max_iter=S.max_iter, backend=S.linalg_backend,
                            device=self.device)
        self.mlp_ = _build_mlp(S.mlp, self.device, self.seed, **self.overrides)
        self.mlp_.fit(self.nmf_.transform(X).astype(np.float32), ages, donors=donors)
        return self

    def predict(self, X) -> np.ndarray:
        return self.mlp_.predict(self.nmf_.transform(X).astype(np.float32))


class DonorElasticNet:
    """An elastic net on donor profiles, one row per donor: genes scaled, penalty and L1 ratio by
    K-fold CV over donors.

    Random coordinate order: with thousands of strongly correlated log-CPM genes and fewer donors,
    cyclic coordinate descent hit its iteration cap on every fold; random order converges in a
    fraction of the time to the same objective."""

    def __init__(self, settings: ElasticNetSettings, seed: int = 0):
        self.settings, self.seed = settings, seed

    def fit(self, X, ages, donors=None) -> "DonorElasticNet":
        import warnings

        from sklearn.linear_model import ElasticNetCV
        from sklearn.model_selection import KFold
        from threadpoolctl import threadpool_limits

        from neuroage_utils.models.linear import ElasticNetClock, column_scale

        S = self.settings
        scale = column_scale(X)
        model = ElasticNetCV(l1_ratio=list(S.l1_ratios), alphas=S.n_alphas, eps=S.eps,
                             cv=KFold(S.n_splits, shuffle=True, random_state=self.seed), selection="random",
                             random_state=self.seed, max_iter=S.max_iter, tol=S.tol)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence is reported per fit, not as noise
            model.fit(X / scale.astype(X.dtype), ages)
        self.clock_ = ElasticNetClock(model=model, scale_=scale)
        return self

    def predict(self, X) -> np.ndarray:
        return self.clock_.predict(X)

    def predict_donors(self, X, donors) -> pd.Series:
        return _donor_mean(self.predict(X), np.asarray(donors).astype(str))


class DonorSVDRidge:
    """SVD of donor profiles, then a scaled ridge on the scores, its penalty by leave-one-out CV."""

    def __init__(self, settings: SVDRidgeSettings, seed: int = 0, device="cpu"):
        self.settings, self.seed, self.device = settings, seed, device

    def fit(self, X, ages, donors=None) -> "DonorSVDRidge":
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from neuroage_utils.models.svd import fit_svd

        S = self.settings
        k = min(S.n_components, min(X.shape) - 1)
        self.svd_ = fit_svd(X, n_components=k, seed=self.seed, backend=S.linalg_backend, device=self.device)
        self.ridge_ = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 30)))
        self.ridge_.fit(self.svd_.transform(X), ages)
        return self

    def predict(self, X) -> np.ndarray:
        return self.ridge_.predict(self.svd_.transform(X))

    def predict_donors(self, X, donors) -> pd.Series:
        return _donor_mean(self.predict(X), np.asarray(donors).astype(str))


# --------------------------------------------------------------------------------------------------
# Builders: (settings, device, seed, **overrides) -> an unfitted model
# --------------------------------------------------------------------------------------------------


def _build_null(S, device, seed, **overrides):
    return NullClock(S, seed)


def _build_mlp(S: MLPSettings, device, seed, **overrides):
    from neuroage_utils.models.mlp import MLPRegressor

    options = dict(hidden=list(S.hidden), lr=S.lr, epochs=S.epochs, batch_size=S.batch_size, dropout=S.dropout,
                   weight_decay=S.weight_decay, early_stopping_patience=S.early_stopping_patience,
                   device=device, seed=seed, amp=S.amp)
    options.update(overrides)
    if S.max_cells is not None:
        return _Drawn(MLPRegressor(**options), S.max_cells, seed)
    return MLPRegressor(**options)


class _Drawn(_CellModel):
    """A cell-level model fitted on at most ``max_cells`` of its training cells (drawn at random)."""

    def __init__(self, model, max_cells: int, seed: int):
        self.model, self.max_cells, self.seed = model, max_cells, seed

    def fit(self, X, ages, donors=None, **options):
        rows = _drawn(X.shape[0], self.max_cells, self.seed)
        self.model.fit(X[rows], np.asarray(ages)[rows], donors=None if donors is None else np.asarray(donors)[rows],
                       **options)
        return self

    def predict(self, X) -> np.ndarray:
        return self.model.predict(X)


def _vae_builder(likelihood: str):
    def build(S: VAESettings, device, seed, **overrides):
        from neuroage_utils.models.vae import VAEAgeRegressor

        options = dict(likelihood=likelihood, hidden=S.hidden, latent=S.latent, age_hidden=S.age_hidden,
                       dropout=S.dropout, epochs=S.epochs, lr=S.lr, batch_size=S.batch_size, kl_schedule="cyclical",
                       kl_cycle=S.kl_cycle, lr_schedule="cosine_warm_restarts", T_0=S.t0,
                       log_normalize=S.log_normalize, device=device, seed=seed, checkpoint_path=S.checkpoint_path,
                       checkpoint_every=S.checkpoint_every)
        if S.input_noise:
            options["input_noise"] = S.input_noise
        if S.amp:
            options["amp"] = True
        options.update(overrides)  # e.g. another batch size or age weight for an experiment
        return VAEAgeRegressor(**options)

    return build


def _build_vae_clock(S: VAEClockSettings, device, seed, **overrides):
    from neuroage_utils.models.vae_clock import VAELatentClock

    # the KL cycle and restart period follow the (short) epoch budget of a per-fold fit
    options = dict(likelihood=S.likelihood, hidden=S.hidden, latent=S.latent, epochs=S.epochs,
                   batch_size=S.batch_size, max_cells=S.max_cells, probe="elastic_net", probe_alphas=S.probe_alphas,
                   probe_splits=S.probe_splits,
                   kl_cycle={"zero_epochs": 1, "rise_epochs": max(1, S.epochs // 3), "hold_epochs": S.epochs},
                   T_0=max(2, S.epochs), device=device, seed=seed, amp=S.amp)
    options.update(overrides)
    return VAELatentClock(**options)


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What the book knows about one model key at one level of data."""

    key: str  # the results key (``models[key]`` of a results file)
    level: str  # "cells" (a cohort of cells) or "donors" (one profile per donor)
    name: str  # its name for readers (tables, figures, sentences)
    input: Input  # what fit / predict_donors read
    torch: bool  # a torch model: trains on the run's device, bf16 where native
    settings: type  # its settings dataclass
    builder: Callable | None  # (settings, device, seed, **overrides) -> unfitted model; None: not built here
    short_name: str = ""  # a shorter name where the page's context says the rest (a chapter's own tables)

    def build(self, settings=None, *, device="cpu", seed: int = 0, **overrides):
        """An unfitted model; ``settings``: an instance of :attr:`settings`, a mapping of its fields, or None."""
        if self.builder is None:
            raise ValueError(f"{self.key!r} is not built by the registry (it is loaded, not fitted)")
        return self.builder(self.coerce(settings), device, int(seed), **overrides)

    def coerce(self, settings):
        """``settings`` as an instance of :attr:`settings` (a mapping's unknown names are an error)."""
        if isinstance(settings, self.settings):
            return settings
        values = dict(settings or {})
        known = {f.name for f in dataclasses.fields(self.settings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)} for {self.key!r}: use {', '.join(sorted(known))}")
        for name, value in values.items():
            if isinstance(value, list):  # tuples keep the settings hashable and frozen
                values[name] = tuple(value)
        if "mlp" in values and not isinstance(values["mlp"], MLPSettings):
            values["mlp"] = MLPSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values["mlp"].items()})
        return self.settings(**values)


def _r(key, level, name, input, torch, settings, builder, short_name=""):
    return Recipe(key, level, name, input, torch, settings, builder, short_name or name)


_VAE_NAMES = {"gaussian": "Gaussian VAE", "poisson": "Poisson VAE (paper's model)", "nb": "negative-binomial VAE"}

_REGISTRY: dict[tuple[str, str], Recipe] = {
    (r.key, r.level): r for r in [
        # cohorts of cells: the chapters, the cross-validation, the clock API
        _r("null", "cells", "null (training mean)", Input.LOG_CELLS, False, NullSettings, _build_null),
        _r("elastic_net", "cells", "elastic net (cells)", Input.LOG_CELLS, False, ElasticNetSettings,
           lambda S, device, seed, **o: CellElasticNet(S, seed), "elastic net"),
        _r("pseudobulk_elastic_net", "cells", "pseudobulk elastic net", Input.COUNTS, False, ElasticNetSettings,
           lambda S, device, seed, **o: PseudobulkElasticNet(S, seed)),
        _r("pseudocell_elastic_net", "cells", "pseudocell elastic net", Input.COUNTS, False, PseudocellSettings,
           lambda S, device, seed, **o: PseudocellElasticNet(S, seed)),
        _r("svd_ridge", "cells", "SVD + ridge (donor means)", Input.LOG_CELLS, False, SVDRidgeSettings,
           lambda S, device, seed, **o: CellSVDRidge(S, seed, device), "SVD + ridge"),
        _r("mlp", "cells", "MLP (cells)", Input.LOG_CELLS, True, MLPSettings, _build_mlp, "MLP"),
        _r("nmf_mlp", "cells", "NMF + MLP", Input.RAW_CELLS, True, NMFMLPSettings,
           lambda S, device, seed, **o: NMFMLP(S, seed, device, **o)),
        _r("vae_latent_pseudobulk", "cells", "VAE clock (latent means + elastic net)", Input.RAW_CELLS, True,
           VAEClockSettings, _build_vae_clock),
        *[_r(f"vae_{lik}", "cells", label, Input.COUNTS if lik != "gaussian" else Input.RAW_CELLS, True, VAESettings,
             _vae_builder(lik)) for lik, label in _VAE_NAMES.items()],
        _r("dae", "cells", "denoising Gaussian VAE", Input.RAW_CELLS, True, VAESettings, _vae_builder("gaussian")),
        _r("dae_poisson", "cells", "denoising Poisson VAE", Input.COUNTS, True, VAESettings, _vae_builder("poisson")),
        # donor profiles: the real-donor chapter
        _r("null", "donors", "null (training mean)", Input.DONOR_PROFILES, False, NullSettings, _build_null),
        _r("elastic_net", "donors", "elastic net", Input.DONOR_PROFILES, False, ElasticNetSettings,
           lambda S, device, seed, **o: DonorElasticNet(S, seed)),
        _r("mlp", "donors", "MLP", Input.DONOR_PROFILES, True, MLPSettings, _build_mlp),
        _r("svd_ridge", "donors", "SVD + ridge", Input.DONOR_PROFILES, False, SVDRidgeSettings,
           lambda S, device, seed, **o: DonorSVDRidge(S, seed, device)),
        _r("nmf_mlp", "donors", "NMF + MLP", Input.DONOR_PROFILES, True, NMFMLPSettings,
           lambda S, device, seed, **o: NMFMLP(S, seed, device, **o)),
        _r("vae_gaussian", "donors", "Gaussian VAE (age head)", Input.DONOR_PROFILES, True, VAESettings,
           _vae_builder("gaussian")),
        _r("published_clock", "donors", "published clock (grnimmuneclock)", Input.DONOR_PROFILES, False,
           NullSettings, None),
    ]
}


def _level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    return level


def get(key: str, level: str = "cells") -> Recipe:
    """The recipe of model ``key`` at ``level`` ("cells" or "donors")."""
    try:
        return _REGISTRY[key, _level(level)]
    except KeyError:
        raise ValueError(f"no recipe for {key!r} on {level}: use one of {', '.join(keys(level))}") from None


def build(key: str, settings=None, *, device="cpu", seed: int = 0, level: str = "cells", **overrides):
    """An unfitted model ``key`` (see the module docstring for its protocol) from ``settings`` (an
    instance of its settings dataclass or a mapping of its fields), on ``device``, seeded by ``seed``."""
    return get(key, level).build(settings, device=device, seed=seed, **overrides)


def keys(level: str = "cells") -> tuple[str, ...]:
    """Every model key at ``level``, in registry order."""
    return tuple(k for k, lv in _REGISTRY if lv == _level(level))


def name(key: str, level: str = "cells", short: bool = False) -> str:
    """A model's name for readers (``short``: the chapter pages' shorter form); the key when unknown."""
    recipe = _REGISTRY.get((key, _level(level)))
    if recipe is None:
        return key
    return recipe.short_name if short else recipe.name


def names(level: str = "cells", short: bool = False) -> dict[str, str]:
    """``{key: name}`` of every model at ``level``: the one display-name table."""
    return {k: name(k, level, short) for k in keys(level)}
