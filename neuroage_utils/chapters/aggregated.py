"""The aggregated clocks of the baselines chapter: pseudobulk and pseudocell elastic nets fitted on
the training + validation donors and scored on the test donors.

On a streamed cohort (``chapter.stream``) they use every cell of the file, summed block by block;
otherwise the in-memory cohort. The profiles are the same either way (tested in ``tests/data``), so
the same clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from neuroage_utils.models.linear import (
    fit_pseudobulk_elastic_net, fit_pseudocell_elastic_net, fit_streamed_pseudobulk_elastic_net,
    fit_streamed_pseudocell_elastic_net, predict_streamed_donors,
)

__all__ = ["AggregatedClock", "fit_aggregated_clocks"]

FIT_ON = ("train", "val")


@dataclass
class AggregatedClock:
    """One fitted aggregated clock and its test donors' predicted ages."""

    key: str
    clock: object
    predicted: pd.Series  # per test donor
    settings: dict  # what the page and results record beside the score


def fit_aggregated_clocks(chapter, grid: dict, pseudocells: dict) -> list[AggregatedClock]:
    """Fit the pseudobulk and pseudocell elastic nets on the training + validation donors (``grid``: the
    elastic net's ``l1_ratios``, ``n_alphas``, ``n_splits``, ``seed``; ``pseudocells``:
    ``cells_per_pseudocell``, ``n_per_donor``) and predict the test donors."""
    stream, cohort = chapter.stream, chapter.cohort
    if stream is not None:  # a large file: every cell, summed block by block from the file
        pb = fit_streamed_pseudobulk_elastic_net(stream, FIT_ON, **grid)
        pc = fit_streamed_pseudocell_elastic_net(stream, FIT_ON, **pseudocells, **grid)
        pb_pred, pc_pred = (predict_streamed_donors(clock, stream, "test") for clock in (pb, pc))
    else:
        fit, test = cohort.mask(*FIT_ON), cohort.mask("test")
        X, ages, donors = cohort.X[fit], cohort.ages[fit], cohort.donors[fit]
        pb = fit_pseudobulk_elastic_net(X, ages, donors, **grid)
        pc = fit_pseudocell_elastic_net(X, ages, donors, **pseudocells, **grid)
        pb_pred, pc_pred = (clock.predict_donors(cohort.X[test], cohort.donors[test]) for clock in (pb, pc))
    return [AggregatedClock("pseudobulk_elastic_net", pb, pb_pred, {}),
            AggregatedClock("pseudocell_elastic_net", pc, pc_pred, dict(pseudocells))]
