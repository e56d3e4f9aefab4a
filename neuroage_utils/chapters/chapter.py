"""What every chapter notebook does first and last.

A chapter opens with ``chapter = Chapter("svd", data_path=..., profile=..., ...)``: that resolves the
dataset (the simulated cohort of the profile when ``data_path`` is empty), validates and splits it,
and holds the chapter's parameters. It closes with ``chapter.finish()``, which writes
``results/<section>.json`` atomically. Between the two the notebook calls model functions and adds
their donor tables with ``chapter.add(...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroage_utils import metrics, paper, profiles, results
from neuroage_utils.report import chapter_page as pages
from neuroage_utils.report.labels import MODEL_LABELS, MODEL_NAMES
from neuroage_utils.data.cohort import Cohort, cap_cells_per_donor, file_sha256, load_cohort, load_h5ad
from neuroage_utils.data.simulate import ensure_simulated
from neuroage_utils.data.stream import load_streamed, should_stream
from neuroage_utils.data.sources import source_for
from neuroage_utils.evaluation import recipes
from neuroage_utils.train.device import amp_active, device_label, resolve_device
from neuroage_utils.train.workers import run_tasks, worker_count

__all__ = ["Chapter", "FitTask", "glue", "default_out_dir"]


def default_out_dir() -> Path:
    """The repository root when run from a checkout, else the working directory."""
    here = Path(__file__).resolve().parents[2]  # neuroage_utils/chapters/chapter.py -> the checkout
    return here if (here / "_toc.yml").exists() else Path.cwd()


def glue(name: str, value, display: bool = False) -> None:
    """myst-nb ``glue``: record ``value`` under ``name`` for the book's text and figures.

    Returns nothing, so a glue call at the end of a cell does not display the value again.
    """
    from myst_nb import glue as _glue

    _glue(name, value, display=display)


def glue_paper() -> None:
    """Glue every number the paper reports (``paper.TEXT``) as ``paper_<name>``, so that prose cites
    them from the one source, never typed (e.g. ``{glue:text}`paper_poisson_vae_test_mae:.2f```)."""
    for name, value in paper.TEXT.items():
        parts = value.items() if isinstance(value, dict) else [("", value)]
        for part, v in parts:  # a dict (the split's donors) is glued one number per key
            if isinstance(v, (int, float)):
                glue(f"paper_{name}_{part}" if part else f"paper_{name}", v)


#: The papermill parameters every chapter notebook declares (its first code cell).
PARAMETERS = ("data_path", "profile", "device", "seed", "donor_key", "age_key", "out_dir", "allow_non_counts")
#: Optional papermill parameters a notebook need not declare (the runner passes them only when set):
#: ``amp`` (None: the profile's setting; False turns bf16 autocast off); ``max_cells`` (at most this
#: many cells per donor, drawn with the seed; None: all); ``stream`` (None: by size, see
#: ``data.stream.should_stream``; True streams the data from the file, False loads it).
OPTIONAL_PARAMETERS = ("amp", "max_cells", "stream")


@dataclass
class FitTask:
    """One fit of :meth:`Chapter.fit_score_many` (the arguments of :meth:`Chapter.fit_score`)."""

    key: str  # the results key the entry is recorded under
    model: object  # an unfitted regressor: fit(X, ages, donors=...), predict(X)
    X: object  # cells x features of the whole cohort; the task takes the rows of its splits
    fit: tuple = ("train",)  # splits whose cells it is fitted on
    on: str = "val"  # split whose donors score it
    watch: str | None = None  # split a torch model follows per epoch (validation loss, early stopping)
    monitor: tuple | None = None  # splits whose donor MAE is logged per epoch (learning curves)
    monitor_cells: int | None = None  # cells read per monitored split (None: all)
    score: bool = True  # False: fitted and kept (Chapter.fitted_model), no results entry
    extra: dict = field(default_factory=dict)  # more fields of the results entry (e.g. its config)


def _fit_predict(model, args: dict):
    """Fit ``model`` on ``args`` (see :meth:`Chapter._fit_args`) and predict its evaluation cells: one
    task of :meth:`Chapter.fit_score_many` (module-level, so worker processes can run it)."""
    model.fit(args["X"], args["ages"], donors=args["donors"], **args["options"])
    return model, model.predict(args["X_eval"])


class Chapter:
    """One executed chapter: its data, its parameters, the models it scored, and its results file."""

    @classmethod
    def start(cls, section: str, namespace: dict) -> "Chapter":
        """What a notebook's first line after its parameters does: the book's figure style, then the
        chapter built from the papermill parameters found in ``namespace`` (the notebook's ``globals()``)."""
        from neuroage_utils.report import plots

        plots.set_style()
        glue_paper()
        params = {name: namespace[name] for name in PARAMETERS + OPTIONAL_PARAMETERS if name in namespace}
        params["out_dir"] = params.get("out_dir") or None
        return cls(section, **params)

    def __init__(
        self,
        section: str,
        data_path: str | None = None,
        profile: str = "quick",
        device: str = "auto",
        seed: int = 0,
        donor_key: str = "donor_id",
        age_key: str = "age",
        out_dir: str | None = None,
        allow_non_counts: bool = False,
        amp: bool | None = None,
        workers: int | None = None,
        max_cells: int | None = None,
        stream: bool | None = None,
    ):
        self.started = time.perf_counter()
        self.section = section
        self.profile = profile
        self.seed = int(seed)
        # Resolved once, here: every model of the chapter gets this torch.device, and the results
        # file records the device that ran (not the request "auto").
        self.device_request = str(device)
        self.device = resolve_device(device)
        self.device_label = device_label(self.device)
        # Independent fits (tuning grids, CV folds) run in this many single-threaded worker processes:
        # one per core on a CPU, 1 on a GPU (see neuroage_utils.train.workers).
        self.out_dir = Path(out_dir) if out_dir else default_out_dir()
        self.params = profiles.section_params(profile, section)
        self.workers = worker_count(self.device, workers if workers is not None else self.params.get("n_jobs"))
        # bf16 autocast of this chapter's torch models: the profile's setting unless the run turns it
        # off; it runs only where the device has native bf16, and the results file records whether it ran.
        self.amp_requested = bool(self.params.get("amp", False)) if amp is None else bool(amp)
        self.amp = amp_active(self.amp_requested, self.device)
        if "amp" in self.params:  # what the chapter's recipes read (e.g. the summary's CV)
            self.params["amp"] = self.amp_requested
        self.models: dict = {}
        self.fitted: dict = {}
        self.cell_predictions: dict = {}
        self.extra_params: dict = {}
        self.max_cells = None if max_cells is None else int(max_cells)
        # A section with its own data (data.sources: the real-donor profiles) loads them through its
        # source's hook instead of the cohort of cells; ``data_path`` does not apply to it.
        self.source = source_for(section)
        self.stream, self.stream_params = None, {}
        if self.source is not None:
            self.max_cells = None  # a cap on cells per donor does not apply to donor-level data
            self.donor_data = self.source.load(self.out_dir)
            self.cohort, self.data_path, self.simulated = None, None, False
            self.data = self.source.record(self.donor_data)
            np.random.seed(self.seed)
            return
        self.donor_data = None
        if data_path:
            path = Path(data_path)
        else:
            path = ensure_simulated(profile, self.seed, self.out_dir)
            donor_key, age_key = "donor_id", "age"  # the simulator's own column names
        self.data_path = path
        source, n_in_file = path, None
        # Large files stream: the aggregated clocks read every cell from the file block by block
        # (``self.stream``), the cell-level models get an in-memory sample of cells per donor (``self.cohort``).
        # A per-donor cap (``max_cells``) loads the file and keeps the capped cells in memory instead.
        if self.max_cells is None and should_stream(path, stream):
            self.stream = load_streamed(path, donor_key=donor_key, age_key=age_key, seed=self.seed,
                                        allow_non_counts=allow_non_counts)
            sample = profiles.section_params(profile, "data").get("stream_sample_cells")
            self.cohort: Cohort = self.stream.sample_cohort(sample, seed=self.seed)
        else:
            if self.max_cells is not None:  # a per-donor cap: the kept cells are copied out, the file's freed
                source = load_h5ad(path, donor_key, age_key)
                n_in_file = source.n_obs
                source = cap_cells_per_donor(source, donor_key, self.max_cells, seed=self.seed)
            self.cohort: Cohort = load_cohort(
                source, donor_key=donor_key, age_key=age_key, seed=self.seed, allow_non_counts=allow_non_counts
            )
        self.stream_params = {"stream_requested": stream, "streamed": self.stream is not None,
                              "cells_in_memory": self.cohort.n_cells}
        uns = self.cohort.adata.uns
        self.simulated = "simulation" in uns
        self.data = {
            "path": str(path),
            "sha256": file_sha256(path, cache_dir=self.out_dir / ".cache" / "sha256"),
            "simulated": bool(self.simulated),
            "n_cells": self.stream.n_cells if self.stream is not None else self.cohort.n_cells,
            "n_genes": self.cohort.n_genes,
            "n_donors": self.cohort.n_donors,
        }
        if self.max_cells is not None:  # other chapters' results compare only under the same cap
            self.data.update(max_cells_per_donor=self.max_cells, n_cells_in_file=int(n_in_file))
        np.random.seed(self.seed)

    @property
    def factorise_streamed(self) -> bool:
        """Whether this chapter's SVD or NMF runs in streamed passes over every cell of the file
        (``chapters.factorisations``): the data are streamed and the profile asks for every cell
        (``stream_every_cell``); otherwise it is fitted in memory on :attr:`cohort`."""
        return self.stream is not None and bool(self.params.get("stream_every_cell", False))

    # -- what the page says about its data ----------------------------------------------------
    def data_summary(self) -> str:
        """One Markdown paragraph naming the data this page ran on."""
        if self.source is not None:
            return self.source.summary(self.donor_data, self.params, self.profile)
        text = pages.data_summary(self.data, simulated=self.simulated, profile=self.profile, seed=self.seed,
                                  is_counts=self.cohort.is_counts, split_source=self.cohort.split_source)
        if self.stream is not None:
            cells = (f"every one of its {self.cohort.n_cells:,} cells, read into memory"
                     if self.cohort.n_cells == self.stream.n_cells else
                     f"a sample of {self.cohort.n_cells:,} cells drawn per donor")
            text += (" The matrix was streamed from the file in blocks: the pseudobulk and pseudocell clocks read every "
                     f"cell, the cell-level models {cells}.")
        counts = self.cohort.donor_table["split"].value_counts()
        small = [f"{int(counts.get(s, 0))} {name}" for s, name in (("val", "validation"), ("test", "test"))
                 if int(counts.get(s, 0)) < results.MIN_SCORED_DONORS]
        if small:
            text += (f" **The single split is too small to score**: it leaves {' and '.join(small)} donors (at least "
                     f"{results.MIN_SCORED_DONORS} are needed), so the results file records no MAE on them and any "
                     "number on those donors below is not evidence; the repeated cross-validation over all donors "
                     "on the conclusion page carries the comparison.")
        return text

    def show_data_summary(self):
        from IPython.display import Markdown, display

        text = self.data_summary()
        glue(f"{self.section}_data_summary", Markdown(text), display=False)
        display(Markdown(text))
        return text

    # -- scored models -------------------------------------------------------------------------
    def add(self, key: str, table: pd.DataFrame, split: str, **extra) -> dict:
        """Score a donor table (see :func:`metrics.donor_table`) and record it under ``key``."""
        entry = metrics.model_entry(table, split, seed=self.seed, **extra)
        self.models[key] = entry
        return entry

    def add_cells(self, key: str, cell_pred, mask, split: str, **extra) -> dict:
        """Average cell predictions of the cells in ``mask`` per donor, then :meth:`add`."""
        c = self.cohort
        table = metrics.donor_table(cell_pred, c.donors[mask], c.ages[mask])
        return self.add(key, table, split, **extra)

    def add_null(self, split: str, train_splits=("train",), key: str = "null") -> dict:
        """The null model: the mean age of the training donors, for every donor of ``split``."""
        c = self.cohort
        train = c.donor_table[c.donor_table["split"].isin(train_splits)]
        evald = c.donor_table[c.donor_table["split"] == split]
        table = metrics.null_table(train["age"], evald["donor_id"], evald["age"])
        return self.add(key, table, split, trained_on=list(train_splits))

    def fit_score(self, key: str, model, X, fit=("train",), on: str = "val", watch: str | None = None,
                  monitor=None, monitor_cells: int | None = None, **extra) -> dict:
        """Fit ``model`` on the cells of the ``fit`` splits, score it on the donors of ``on``.

        ``model`` follows the regressor protocol of this package: ``fit(X, ages, donors=...)`` and
        ``predict(X) -> ages``. ``watch`` names a split whose donors a torch model follows during
        training (validation MAE per epoch; needed for early stopping). The entry records the splits it
        was trained on; the fitted model
        is kept in ``self.fitted[key]`` and the cell predictions in ``self.cell_predictions[key]``.
        """
        model, pred = _fit_predict(model, self._fit_args(X, fit, on, watch, monitor, monitor_cells))
        return self._record_fit(key, model, pred, fit, on, extra)

    def fit_score_many(self, tasks: list[FitTask]) -> list[dict | None]:
        """:meth:`fit_score` for several models at once, one :class:`FitTask` each (``score=False``:
        fit only, kept for :meth:`fitted_model`, no entry). The fits (and their predictions) run in
        :attr:`workers` single-threaded processes on a CPU, in order on a GPU; entries come back in
        the order of ``tasks``. Per-epoch progress bars are off in workers; one bar counts finished fits."""
        from tqdm import tqdm  # plain text bar: rendered statically in the book (no widget)

        for task in tasks:
            if not isinstance(task, FitTask):
                raise TypeError(f"fit_score_many takes FitTask objects, not {type(task).__name__}")
            if self.workers > 1:
                task.model.progress = False
        args = [self._fit_args(t.X, t.fit, t.on, t.watch, t.monitor, t.monitor_cells) for t in tasks]
        bar = tqdm(total=len(tasks), desc=f"fits ({self.workers} worker{'s' if self.workers > 1 else ''})",
                   disable=self.workers <= 1 or len(tasks) < 2)
        done = run_tasks(_fit_predict, [(t.model, a) for t, a in zip(tasks, args)], self.workers,
                         progress=lambda i, n: bar.update(i - bar.n))
        bar.close()
        entries = []
        for task, (model, pred) in zip(tasks, done):
            if task.score:
                entries.append(self._record_fit(task.key, model, pred, task.fit, task.on, task.extra))
            else:
                self.fitted[task.key] = model
                entries.append(None)
        return entries

    # -- what other modules read and add (typed, instead of reaching into the dicts) -----------
    def fitted_model(self, key: str):
        """The fitted model recorded under ``key`` (by :meth:`fit_score` or :meth:`fit_score_many`)."""
        if key not in self.fitted:
            raise KeyError(f"no fitted model {key!r} in chapter {self.section!r}")
        return self.fitted[key]

    def has_fitted(self, key: str) -> bool:
        return key in self.fitted

    def release(self, key: str):
        """Forget fitted model ``key`` (its memory) and return it; its results entry stays."""
        return self.fitted.pop(key)

    def add_models(self, models: dict) -> None:
        """Record scored entries (or groups of them, e.g. the real-donor chapter's per cell type) as they are."""
        self.models.update(models)

    def annotate(self, key: str, **fields) -> dict:
        """Add ``fields`` to the results entry of model ``key`` (e.g. an experiment's steps and timing)."""
        if key not in self.models:
            raise KeyError(f"no results entry {key!r} in chapter {self.section!r}")
        self.models[key].update(fields)
        return self.models[key]

    def _fit_args(self, X, fit, on, watch, monitor, monitor_cells) -> dict:
        """What one fit reads: its training cells, options (validation, monitors) and evaluation cells."""
        c = self.cohort
        train, evaluate_on = c.mask(*fit), c.mask(on)
        options = {}
        if watch is not None:  # a torch model watches these donors (validation loss, early stopping)
            w = c.mask(watch)
            options["validation"] = (X[w], c.ages[w], c.donors[w])
        if monitor:
            options["monitors"] = {name: self._monitor_set(X, name, monitor_cells) for name in monitor}
        return {"X": X[train], "ages": c.ages[train], "donors": c.donors[train], "options": options,
                "X_eval": X[evaluate_on]}

    def _record_fit(self, key, model, pred, fit, on, extra) -> dict:
        self.fitted[key] = model
        self.cell_predictions[key] = pred
        return self.add_cells(key, pred, self.cohort.mask(on), on, trained_on=list(fit), **extra)

    def _monitor_set(self, X, split: str, max_cells: int | None):
        """``(X, ages, donors)`` of the cells of ``split``, at most ``max_cells`` of them (uniform draw)."""
        c = self.cohort
        rows = np.flatnonzero(c.mask(split))
        if max_cells is not None and len(rows) > max_cells:
            # its own generator: drawing here must not move any other random stream of the chapter
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, int(max_cells), replace=False))
        return X[rows], c.ages[rows], c.donors[rows]

    def build(self, key: str, settings=None, **overrides):
        """Model ``key`` of the registry (:func:`neuroage_utils.evaluation.recipes.build`) on this
        chapter's device and seed, from ``settings`` (its settings dataclass or a mapping of its fields)."""
        return recipes.build(key, settings, device=self.device, seed=self.seed, **overrides)

    def mlp(self, config: dict, **overrides):
        """The registry's ``"mlp"`` (:mod:`~neuroage_utils.evaluation.recipes`) for one row of a tuning grid.

        ``config`` holds the row (``hidden``, ``lr``); epochs, batch size and dropout come from the
        chapter's profile (``mlp_epochs``, ``batch_size``, ``dropout`` when the profile sets one);
        ``overrides`` replace any option of the underlying ``MLPRegressor``.
        """
        P = self.params
        settings = {"hidden": config["hidden"], "lr": config["lr"], "epochs": P["mlp_epochs"],
                    "batch_size": P["batch_size"], "amp": self.amp}
        if "dropout" in P:
            settings["dropout"] = P["dropout"]
        return self.build("mlp", settings, **overrides)

    def linalg(self, step: str | None = None) -> dict:
        """Keyword arguments of ``fit_nmf`` / ``fit_svd`` for this chapter: the profile's
        ``linalg_backend`` resolved on the chapter's device for ``step`` (default: the chapter's own
        section, ``"nmf"`` or ``"svd"``; see :func:`~neuroage_utils.models.device_linalg.choose_backend`),
        recorded in the results file as ``linalg_backend_used``."""
        from neuroage_utils.models.device_linalg import choose_backend

        step = step or self.section
        backend = choose_backend(self.params.get("linalg_backend", "auto"), self.device, step)
        self.record(linalg_backend_used={**self.extra_params.get("linalg_backend_used", {}), step: backend})
        return {"backend": backend, "device": self.device}

    def seen_fit(self, key: str, X, splits=("train", "val")) -> dict:
        """How fitted model ``key`` does on the donors it was trained on: their donor MAE, and the
        standard deviation of their ages (what a model that learnt nothing would miss by)."""
        c = self.cohort
        seen = c.mask(*splits)
        table = metrics.donor_table(self.fitted[key].predict(X[seen]), c.donors[seen], c.ages[seen])
        ages = c.donor_table.loc[c.donor_table["split"].isin(splits), "age"]
        return pd.Series({"donor MAE on its training donors": metrics.donor_metrics(table)["mae"],
                          "SD of their ages": float(ages.std()), "training donors": int(len(ages))},
                         name=MODEL_NAMES.get(key, key))  # a reader's name, not the results key

    def vae(self, likelihood: str, config: dict, key: str, **extra):
        """The registry's VAE of ``likelihood`` (``"vae_<likelihood>"``) for one row of a tuning table.

        ``config`` holds the row (``hidden``, ``latent``, ``age_hidden``, ``dropout``, ``epochs``);
        the optimiser and schedules come from the chapter's profile (Adam, batch size, cyclical KL,
        cosine warm restarts), and the model checkpoints under ``key``; ``extra`` replaces any option
        of the underlying ``VAEAgeRegressor`` (another batch size or age weight for an experiment;
        ``likelihood="mse"`` for the authors' coded reconstruction).
        """
        P = self.params
        settings = {name: config[name] for name in ("hidden", "latent", "age_hidden", "dropout", "epochs")}
        settings.update(lr=P["lr"], batch_size=P["batch_size"], kl_cycle=P["kl_cycle"], t0=P["t0"],
                        log_normalize=self.cohort.is_counts, checkpoint_path=self.checkpoint(key),
                        checkpoint_every=P["checkpoint_every"], amp=self.amp)
        base = likelihood if likelihood in ("gaussian", "poisson", "nb") else "poisson"
        if likelihood != base:
            extra = {"likelihood": likelihood, **extra}
        return self.build(f"vae_{base}", settings, **extra)

    def training_settings(self) -> pd.DataFrame:
        """The VAE training settings as run under this profile, beside the paper's."""
        return pages.training_settings(self.params)

    def checkpoint(self, key: str) -> Path:
        """Where model ``key`` of this chapter checkpoints; tied to the data so a checkpoint
        trained on other data is never resumed."""
        data = self.data["sha256"][:16] + (f"-max{self.max_cells}" if self.max_cells is not None else "")
        return self.out_dir / "checkpoints" / data / self.section / f"{key}.pt"

    def tuning_table(self, runs, paper_mae=None) -> tuple[pd.DataFrame, int]:
        """:func:`neuroage_utils.report.chapter_page.tuning_table` of ``(config, entry)`` pairs, with this
        chapter's null model on the validation donors as its last row."""
        if "null_val" not in self.models:
            self.add_null("val", key="null_val")
        return pages.tuning_table(runs, self.models["null_val"], paper_mae)

    paper_comparison = staticmethod(pages.paper_comparison)

    def record(self, **params) -> None:
        """Add parameters (e.g. a statistic worth keeping) to the results file's ``params``."""
        self.extra_params.update(params)

    def skip(self, key: str, reason: str) -> dict:
        self.models[key] = metrics.skipped_entry(reason)
        return self.models[key]

    def scores(self, keys=None, others: dict | None = None, paper: dict | None = None) -> pd.DataFrame:
        """Scored models, one row each: key, split, MAE, 95% CI, r, donors.

        ``keys`` selects this chapter's models (default: all); ``others`` maps ``"section::key"``
        references (read from other chapters' results on the same data) to row labels; ``paper``
        maps row labels to the paper's MAE, shown in a ``paper MAE`` column.
        """
        chosen = [(k, self.models[k]) for k in (keys if keys is not None else self.models) if k in self.models]
        for ref, label in (others or {}).items():
            entry = self.entry(ref)
            if entry is not None:
                chosen.append((label, entry))
        return pages.score_rows(chosen, paper)

    # -- comparisons ---------------------------------------------------------------------------
    def entry(self, ref: str) -> dict | None:
        """A scored model by key, or ``"section::key"`` from another chapter's results file on the
        same data; None when absent, skipped, or run on other data."""
        if "::" not in ref:
            e = self.models.get(ref)
        else:
            section, key = ref.split("::", 1)
            try:
                doc = results.read_results(self.out_dir, section)
            except FileNotFoundError:
                return None
            same = all(doc["data"].get(k) == self.data.get(k) for k in ("sha256", "max_cells_per_donor"))
            e = doc["models"].get(key) if same else None
        return e if e and "mae" in e else None

    def verdicts(self, pairs, names: dict | None = None) -> str:
        """Markdown bullets comparing models pairwise on shared donors (paired bootstrap), one per
        pair whose two models exist; a pair with a missing model says so."""
        names = {**{ref: MODEL_NAMES.get(ref.split("::")[-1], ref) for pair in pairs for ref in pair}, **(names or {})}
        return pages.verdict_lines([(a, self.entry(a), b, self.entry(b)) for a, b in pairs], names, seed=self.seed)

    # -- downloads ----------------------------------------------------------------------------
    def download_path(self, name: str) -> Path:
        """Where download ``name`` of this chapter is written: ``results/<section>-<name>.csv``, next to
        the results file (a page links it as ``../results/<section>-<name>.csv``)."""
        return self.out_dir / "results" / f"{self.section}-{name}.csv"

    def download(self, name: str, table: pd.DataFrame) -> Path:
        """Write ``table`` (e.g. a clock's coefficients) as the CSV download ``name`` (atomically)."""
        return results.atomic_write_text(self.download_path(name), pd.DataFrame(table).to_csv(index=False))

    # -- the end -------------------------------------------------------------------------------
    @property
    def runtime_s(self) -> float:
        return time.perf_counter() - self.started

    def finish(self, extra: dict | None = None, **extra_params) -> Path:
        """Write ``results/<section>.json`` (atomically) and return its path; ``extra`` holds
        top-level keys beyond the usual ones (the summary's ``cv`` and ``leaderboard``)."""
        if "linalg_backend" in self.params and "linalg_backend_used" not in self.extra_params:
            from neuroage_utils.models.device_linalg import backends_used  # what NMF / SVD fits of this chapter would run on

            self.record(linalg_backend_used=backends_used(self.params["linalg_backend"], self.device))
        params = {
            **self.params,
            **self.extra_params,
            **extra_params,
            **self.stream_params,
            "seed": self.seed,
            "device": self.device_label,
            "device_requested": self.device_request,
            "amp": self.amp,  # bf16 autocast ran (native bf16 only); the profile's request is amp_requested
            "amp_requested": self.amp_requested,
            "workers": self.workers,
            "max_cells_per_donor": self.max_cells,
        }
        if self.cohort is not None:
            params.update(donor_key=self.cohort.donor_key, age_key=self.cohort.age_key,
                          split_source=self.cohort.split_source)
        # always written (the page links it): every scored model's per-donor predictions
        self.download("predictions", pages.predictions_table(self.models, MODEL_NAMES, group_names=MODEL_LABELS))
        return results.write_results(
            self.out_dir, self.section, self.data, self.profile, params, self.runtime_s, self.models, extra=extra
        )
