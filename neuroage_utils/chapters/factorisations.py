"""The SVD and NMF chapters' fits: in memory, or in streamed passes over every cell of the file.

A chapter on a streamed cohort (``Chapter.stream``) whose profile asks for every cell
(``stream_every_cell``, see :attr:`Chapter.factorise_streamed`) fits its factorisation with
``models.streamed`` over every training cell of the file, and reads every cell's scores as per-donor
sums (``models.svd.DonorScores``) for the correlations with age and their chance level; the SVD's
ridge is fitted on the scores of every training cell in two streamed passes (the same ``RidgeCV``)
and scores the test donors from their mean scores. What needs cells in memory (the figure of cells,
the MLP on NMF factors: cell-level models) reads :attr:`Chapter.cohort`, the per-donor sample,
transformed with the streamed basis. Otherwise everything is fitted in memory on ``Chapter.cohort``,
as before. Either way the results file records what ran (``params.factorisation``) and the page says
it in one sentence (:func:`~neuroage_utils.report.chapter_page.factorisation_sentence`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroage_utils.data.checks import require_non_negative
from neuroage_utils.errors import DataValidationError
from neuroage_utils.metrics import table_from_donor_predictions
from neuroage_utils.models.nmf import NMFModel, fit_nmf
from neuroage_utils.models.streamed import (fit_streamed_nmf, fit_streamed_ridge, fit_streamed_svd,
                                            streamed_donor_summary)
from neuroage_utils.models.svd import (DonorScores, chance_best_abs_r, component_age_correlations,
                                       donor_score_chance, donor_score_correlations, fit_component_ridge, fit_svd,
                                       top_components)
from neuroage_utils.report import chapter_page as pages

__all__ = ["FactorRun", "svd_exploration", "svd_ridge", "nmf_components", "nmf_factors"]

_SPLIT_WORDS = {("train",): "training", ("train", "val"): "training and validation"}


@dataclass
class FactorRun:
    """One factorisation of a chapter and what its page reads."""

    model: object  # the fitted SVDModel or NMFModel
    n_components: int
    scores: np.ndarray  # cells x components of the in-memory cohort (Chapter.cohort): figures, cell-level models
    summary: DonorScores | None  # every cell of the file, per donor (streamed); None: in memory, from ``scores``
    corr: pd.DataFrame  # each component's r with age, over cells and over donors
    top: dict  # models.svd.top_components of ``corr``
    chance: dict  # models.svd.chance_best_abs_r: the best |r| that shuffled donor ages reach
    record: dict  # what ran, as the results file records it (params.factorisation)

    @property
    def streamed(self) -> bool:
        return self.summary is not None

    @property
    def sentence(self) -> str:
        """The page's sentence on which cells the factorisation (and the model on its scores) read."""
        return pages.factorisation_sentence(self.record)


def _record(chapter, method: str, splits: tuple, fit_cells: int, k: int, backend: str, **more) -> dict:
    streamed = chapter.factorise_streamed
    file_cells = chapter.stream.n_cells if chapter.stream is not None else chapter.cohort.n_cells
    return {"method": method, "streamed": chapter.stream is not None, "every_cell": streamed,
            "splits": _SPLIT_WORDS[splits], "fit_cells": int(fit_cells),
            "scored_cells": int(file_cells if streamed else chapter.cohort.n_cells),
            "cells_in_file": int(file_cells), "cells_in_memory": int(chapter.cohort.n_cells), "n_components": int(k),
            "backend": backend, **more}


def _from_sample(chapter) -> bool:
    """Whether the in-memory cells are a per-donor sample of a streamed file (not every cell)."""
    return chapter.stream is not None and chapter.cohort.n_cells < chapter.stream.n_cells


def _correlations(chapter, scores, summary: DonorScores | None):
    """Correlations with age, the top components and their chance level: from every cell's scores
    summed per donor (streamed) or from the in-memory cells' scores (the same numbers on the same cells)."""
    n_perm = chapter.params.get("chance_permutations", 1000)
    c = chapter.cohort
    if summary is None:
        corr = component_age_correlations(scores, c.ages, c.donors)
        top = top_components(corr)
        return corr, top, chance_best_abs_r(scores, c.ages, c.donors, n_perm=n_perm, seed=chapter.seed, observed=top)
    corr = donor_score_correlations(summary)
    top = top_components(corr)
    return corr, top, donor_score_chance(summary, n_perm=n_perm, seed=chapter.seed, observed=top)


def svd_exploration(chapter) -> FactorRun:
    """The SVD chapter's decomposition: fitted on the training cells (every training cell of the file
    when :attr:`Chapter.factorise_streamed`), applied to every cell; its correlations with age over cells
    and over donors (downloaded as ``component-correlations``) and their chance level; recorded."""
    c, P = chapter.cohort, chapter.params
    X = c.normalized()  # log1p of counts per 10,000
    if chapter.factorise_streamed:
        stream = chapter.stream
        rows = stream.mask("train")
        k = min(P["n_components"], c.n_genes - 1, int(rows.sum()) - 1)
        model = fit_streamed_svd(stream, rows, n_components=k, seed=chapter.seed)
        chapter.record(linalg_backend_used={"svd": model.backend})
        summary = streamed_donor_summary(model.transform, stream, np.ones(stream.n_cells, dtype=bool))
    else:
        rows = c.mask("train")
        k = min(P["n_components"], c.n_genes - 1, int(rows.sum()) - 1)
        model = fit_svd(X[rows], n_components=k, seed=chapter.seed, **chapter.linalg())  # torch on a GPU, ARPACK on a CPU
        summary = None
    scores = model.transform(X)
    corr, top, chance = _correlations(chapter, scores, summary)
    chapter.download("component-correlations", corr)
    record = _record(chapter, "SVD", ("train",), rows.sum(), k, model.backend)
    chapter.record(factorisation=record, top_abs_r_cell=top["abs_r_cell"], top_abs_r_donor=top["abs_r_donor"])
    return FactorRun(model, k, scores, summary, corr, top, chance, record)


def svd_ridge(chapter, run: FactorRun) -> dict:
    """The ridge regression on the components, fitted on the training cells' scores (every training cell
    of the file, streamed, when the SVD was), scored on the test donors (their cells' predictions averaged:
    from their mean scores when streamed, the same number); recorded as ``svd_ridge``."""
    c, P = chapter.cohort, chapter.params
    if run.streamed:
        stream = chapter.stream
        ridge = fit_streamed_ridge(run.model.transform, stream, stream.mask("train"), P["ridge_alphas"])
        test_donors = c.donor_table[c.donor_table["split"] == "test"]
        ids = test_donors["donor_id"].astype(str).to_numpy()
        position = pd.Series(np.arange(len(run.summary.ids)), index=run.summary.ids)[ids].to_numpy()
        predicted = pd.Series(ridge.predict(run.summary.means[position]), index=ids)
        entry = chapter.add("svd_ridge", table_from_donor_predictions(predicted, test_donors), "test",
                            trained_on=["train"], n_components=run.n_components, ridge_alpha=float(ridge.alpha_))
        cells = ridge.n_cells
    else:
        train, test = c.mask("train"), c.mask("test")
        ridge = fit_component_ridge(run.scores[train], c.ages[train], P["ridge_alphas"])
        entry = chapter.add_cells("svd_ridge", ridge.predict(run.scores[test]), test, "test", trained_on=["train"],
                                  n_components=run.n_components, ridge_alpha=float(ridge.alpha_))
        cells = int(train.sum())
    run.record["downstream"] = {"model": "the ridge on its scores", "cells": int(cells), "splits": "training",
                                "sample": not run.streamed and _from_sample(chapter)}
    chapter.record(factorisation=run.record)
    return entry


def _streamed_nmf(chapter, k: int, raw: bool) -> tuple[NMFModel, DonorScores, int]:
    """HALS NMF over every training and validation cell of the file, its usages of every cell summed
    per donor; the usages live in a memory-mapped file under the run's cache, removed after the fit."""
    stream, P = chapter.stream, chapter.params
    rows = stream.mask("train", "val")
    if not stream.is_counts:  # counts are non-negative by their check; other values are checked here, block by block
        for _, block in stream.blocks(normalise=not raw):
            require_non_negative(block, "NMF")
    cache = chapter.out_dir / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nmf-usages-", dir=cache) as workdir:
        fit = fit_streamed_nmf(stream, rows, k, max_iter=P["max_iter"], seed=chapter.seed, workdir=workdir,
                               normalise=not raw)
    model = NMFModel.from_hals(fit, max_iter=P["max_iter"], seed=chapter.seed, device=chapter.device)
    chapter.record(linalg_backend_used={"nmf": "streamed-hals"})
    summary = streamed_donor_summary(model.transform, stream, np.ones(stream.n_cells, dtype=bool), normalise=not raw)
    return model, summary, int(rows.sum())


def nmf_components(chapter) -> int:
    """The NMF's number of programmes: the profile's, below the number of genes."""
    return int(min(chapter.params["n_components"], chapter.cohort.n_genes - 1))


def nmf_factors(chapter) -> FactorRun | None:
    """The NMF chapter's factorisation: fitted on the training and validation cells (every one of the
    file's when :attr:`Chapter.factorise_streamed`), applied to the in-memory cells (the MLP's input);
    the factors' correlations with age and their chance level (downloaded as ``factor-correlations``).
    Input that NMF cannot take (negative values) skips ``nmf_mlp`` with the reason and returns None."""
    c, P = chapter.cohort, chapter.params
    raw = P["input"] == "raw"
    X = c.X if raw else c.normalized()
    k = nmf_components(chapter)
    try:
        if chapter.factorise_streamed:
            model, summary, fit_cells = _streamed_nmf(chapter, k, raw)
        else:
            trainval = c.mask("train", "val")
            model = fit_nmf(X[trainval], n_components=k, seed=chapter.seed, max_iter=P["max_iter"], **chapter.linalg())
            summary, fit_cells = None, int(trainval.sum())
    except DataValidationError as err:  # e.g. negative values: the model is skipped, the reason recorded
        chapter.skip("nmf_mlp", str(err))
        return None
    scores = model.transform(X)
    corr, top, chance = _correlations(chapter, scores, summary)
    chapter.download("factor-correlations", corr)
    backend = "streamed-hals" if summary is not None else model.backend
    record = _record(chapter, "NMF", ("train", "val"), fit_cells, k, backend, converged=bool(model.converged),
                     n_iter=int(model.nmf.n_iter_), reconstruction_err=float(model.reconstruction_err_),
                     downstream={"model": "the MLP on its factors", "cells": int(c.mask("train", "val").sum()),
                                 "splits": "training and validation", "sample": _from_sample(chapter)})
    chapter.record(factorisation=record, top_abs_r_donor=top["abs_r_donor"], chance_abs_r_donor=chance)
    return FactorRun(model, k, scores, summary, corr, top, chance, record)
