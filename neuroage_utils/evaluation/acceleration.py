"""Age acceleration: the age gap of a clock, the gap with the clock's pull to the mean removed, and
how well a case-control difference in it can be detected.

Every clock regresses towards the mean age of its training donors: old donors are predicted too
young and young donors too old, so the raw gap ``predicted - age`` falls with age. A group that is
older on average than its controls would then look "decelerated" for no biological reason. The
corrected gap removes that dependence: a straight line ``predicted = a + b * age`` is fitted on
reference donors (controls of the new data, or the clock's own cross-validated training
predictions), and the corrected gap is ``predicted - (a + b * age)``. Among the reference donors it
is uncorrelated with age by construction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from neuroage_utils.errors import DataValidationError
from neuroage_utils.metrics import bootstrap_mean_ci

#: Below this slope of predicted on chronological age a clock hardly follows age: no scaled gap.
MIN_SLOPE = 0.1

__all__ = ["MIN_SLOPE", "AgeTrend", "fit_age_trend", "add_age_gaps", "group_difference", "gap_slope",
           "analytic_power", "empirical_power"]


class AgeTrend(dict):
    """``{"intercept", "slope", "n_donors", "source"}``: the line ``predicted = a + b * age``."""

    def expected(self, ages) -> np.ndarray:
        return self["intercept"] + self["slope"] * np.asarray(ages, dtype=float)


def fit_age_trend(ages, predicted, source: str) -> AgeTrend:
    """Least-squares line of predicted on chronological age among reference donors.

    ``source`` says which donors these are (recorded beside every corrected gap). Needs at least
    three donors of at least two different ages.
    """
    ages = np.asarray(ages, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    keep = np.isfinite(ages) & np.isfinite(predicted)
    ages, predicted = ages[keep], predicted[keep]
    if len(ages) < 3 or np.ptp(ages) == 0:
        raise DataValidationError(
            f"the age-gap correction needs at least 3 reference donors of different ages ({source}: "
            f"{len(ages)}): give more control donors, or leave out the control key to use the clock's training donors"
        )
    slope, intercept = np.polyfit(ages, predicted, 1)
    return AgeTrend(intercept=float(intercept), slope=float(slope), n_donors=int(len(ages)), source=source)


def add_age_gaps(table: pd.DataFrame, trend: AgeTrend | None) -> pd.DataFrame:
    """``table`` (columns ``age``, ``predicted_age``) with ``age_gap``, ``age_gap_corrected`` and
    ``age_gap_scaled`` (the corrected gap divided by the trend's slope, in years of age).

    Donors without a known age get NaN gaps; ``correction`` names the reference of the trend.
    """
    out = table.copy()
    age = pd.to_numeric(out["age"], errors="coerce").to_numpy(dtype=float)
    out["age_gap"] = out["predicted_age"].to_numpy(dtype=float) - age
    if trend is None:
        out["age_gap_corrected"] = np.nan
        out["age_gap_scaled"] = np.nan
        out["correction"] = "none"
    else:
        out["age_gap_corrected"] = out["predicted_age"].to_numpy(dtype=float) - trend.expected(age)
        # A clock moves by `slope` years per year of age, so a donor biologically A years older moves it
        # by about slope x A: dividing by the slope puts the gap back in years. Undefined for a flat clock.
        slope = trend["slope"]
        out["age_gap_scaled"] = out["age_gap_corrected"] / slope if slope >= MIN_SLOPE else np.nan
        out["correction"] = trend["source"]
    return out


def group_difference(cases, controls, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``cases`` minus mean of ``controls`` (e.g. corrected gaps), with a percentile
    bootstrap interval (donors resampled within each group) and Welch's t-test p-value."""
    a = np.asarray(cases, dtype=float)
    b = np.asarray(controls, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        raise DataValidationError(f"a group comparison needs at least 2 donors per group, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    boot = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1)
            - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    test = stats.ttest_ind(a, b, equal_var=False)
    return {"difference": float(a.mean() - b.mean()), "ci95": [float(lo), float(hi)], "p_value": float(test.pvalue),
            "n_cases": int(len(a)), "n_controls": int(len(b))}


def gap_slope(ages, gaps, n_boot: int = 2000, seed: int = 0) -> dict:
    """Slope of a gap on chronological age (years of gap per year of age) with a donor-bootstrap
    interval: the bias a gap carries against age (0 when it carries none)."""
    ages = np.asarray(ages, dtype=float)
    gaps = np.asarray(gaps, dtype=float)
    slope = float(np.polyfit(ages, gaps, 1)[0])
    rng = np.random.default_rng(seed)
    boots = []
    for idx in rng.integers(0, len(ages), (n_boot, len(ages))):
        if np.ptp(ages[idx]) > 0:
            boots.append(np.polyfit(ages[idx], gaps[idx], 1)[0])
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"slope": slope, "ci95": [float(lo), float(hi)], "n_donors": int(len(ages))}


def analytic_power(effect: float, sd: float, n_per_group, alpha: float = 0.05) -> np.ndarray:
    """Power of a two-sided two-sample t-test with ``n`` donors per group to detect a mean
    difference ``effect`` when the per-donor standard deviation is ``sd`` (noncentral t)."""
    n = np.asarray(n_per_group, dtype=float)
    df = 2 * n - 2
    ncp = effect / (sd * np.sqrt(2.0 / n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)


def empirical_power(cases, controls, n_per_group, n_draws: int = 500, alpha: float = 0.05,
                    seed: int = 0) -> pd.DataFrame:
    """Share of Welch t-tests with p < ``alpha`` over ``n_draws`` draws of ``n`` cases and ``n``
    controls (without replacement) from the donors given, for each ``n`` they allow; with a
    Wilson 95% interval of that share."""
    a = np.asarray(cases, dtype=float)
    b = np.asarray(controls, dtype=float)
    rng = np.random.default_rng(seed)
    rows = []
    for n in n_per_group:
        n = int(n)
        if n < 2 or n > min(len(a), len(b)):
            continue
        hits = 0
        for _ in range(n_draws):
            x = rng.choice(a, n, replace=False)
            y = rng.choice(b, n, replace=False)
            hits += stats.ttest_ind(x, y, equal_var=False).pvalue < alpha
        lo, hi = _wilson(hits, n_draws)
        rows.append({"n_per_group": n, "power": hits / n_draws, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["n_per_group", "power", "ci_low", "ci_high"])


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mean_ci(values, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-donor values with a donor-bootstrap interval."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return {"mean": float(values.mean()), "ci95": bootstrap_mean_ci(values, n_boot=n_boot, seed=seed),
            "n_donors": int(len(values))}


__all__.append("mean_ci")
