"""The model card of a saved clock: what it is, what it was fitted on, how good it is, how to use it."""

from __future__ import annotations

import numpy as np

__all__ = ["model_card"]


def _interval(values) -> str:
    return f"{values[0]:.1f}–{values[1]:.1f}"


def _streamed_lines(t: dict) -> list[str]:
    """How a clock fitted on a streamed file saw its cells: all of them summed, or a sample."""
    if not t.get("streamed"):
        return []
    sample = t.get("cell_sample")
    if sample is None:
        return [f"- read block by block from the file (streamed): every cell counted, {t.get('rows', 'summed counts')}"]
    return [f"- read block by block from the file (streamed) and fitted on a per-donor sample of {sample['cells']:,} "
            f"of the {sample['of_cells']:,} cells (at most {sample['per_donor_cap']:,} per donor, seed "
            f"{sample['seed']}): {sample['how']}"]


def model_card(clock) -> str:
    """Markdown describing ``clock`` (a :class:`neuroage_utils.clock.clock.Clock`)."""
    from neuroage_utils.clock.models import MODELS, NORMALISATIONS

    t = clock.training
    pooled = clock.members["all"].info
    keys = clock.keys
    lines = [
        f"# Age clock: `{clock.model}`",
        "",
        f"A linear age clock fitted with NeuroAge {t['package_version']} on {t['fitted_at']}. One row of "
        f"features is a {MODELS[clock.model][0]}; a donor's predicted age is "
        + ("its pseudobulk profile's prediction." if clock.model == "pseudobulk_elastic_net"
           else "the mean over its rows."),
        "",
        "## Training data",
        "",
        f"- donors: {t['n_donors']} ({t['fitted_on']}), cells: {t['n_cells']:,}, genes: {t['n_genes']:,}",
        *_streamed_lines(t),
        f"- ages: {t['age_range'][0]:g}–{t['age_range'][1]:g} years (mean {t['age_mean']:.1f})",
        f"- data SHA-256: `{t['data_sha256']}`",
        f"- columns: donor `{keys['donor_key']}`, age `{keys['age_key']}`"
        + (f", cell type `{keys['cell_type_key']}`" if keys.get("cell_type_key") else ""),
        f"- normalisation: {clock.normalisation} ({NORMALISATIONS[clock.normalisation]})",
        "",
        "## How good it is",
        "",
        "Cross-validated over donors: each fold refitted (penalty tuned inside the fold) on the other "
        "folds' donors and scored on its held-out donors; the interval is a bootstrap over donors.",
        "",
        "| member | donors | CV MAE (years) | 95% interval | r | genes used | alpha | l1 ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in clock.members.items():
        info = m.info
        r = "–" if info.get("cv_r") is None else f"{info['cv_r']:.2f}"
        lines.append(f"| {name} | {info['n_donors']} | {info['cv_mae']:.2f} | {_interval(info['cv_mae_ci95'])} | {r} "
                     f"| {info['n_nonzero']} | {info['alpha']:.3g} | {info['l1_ratio']:g} |")
    if t.get("cell_types_skipped"):
        lines += ["", "Cell types without a clock: "
                  + "; ".join(f"{k} ({v})" for k, v in t["cell_types_skipped"].items()) + "."]
    top = np.argsort(-np.abs(clock.members["all"].coef))[:10]
    top = [g for g in top if clock.members["all"].coef[g] != 0]
    if top:
        lines += ["", "Genes with the largest coefficients (years per SD of the gene, pooled clock): "
                  + ", ".join(f"{clock.genes[g]} ({clock.members['all'].coef[g]:+.2f})" for g in top) + "."]
    lines += [
        "",
        "## Using it",
        "",
        "```bash",
        "neuroage predict --clock THIS_DIRECTORY --data new.h5ad --out predictions.csv "
        f"--donor-key {keys['donor_key']} --age-key {keys['age_key']}",
        "```",
        "",
        "- Genes are matched by name. A missing gene is set to its training mean (never zero); "
        "`genes_missing` in the output is the share of the clock's genes absent, and above 20% a warning is printed.",
        "- `age_gap` is predicted minus chronological age. It carries the clock's pull towards the training "
        f"mean age ({t['age_mean']:.0f} years): old donors come out young and young donors old. "
        "`age_gap_corrected` removes that trend (a line of predicted on age, fitted on the new data's controls "
        "with `--control-key`, else on this clock's cross-validated training predictions; `correction` says which). "
        "A clock that moves b years per year of age moves only about b x A years for a donor A years older inside; "
        "`age_gap_scaled` is the corrected gap divided by b, in years.",
        "- Valid for data like the training data: the same tissue and cell types, counts from the same kind "
        f"of assay, donors aged {t['age_range'][0]:g}–{t['age_range'][1]:g}. Outside that range predictions "
        "extrapolate a straight line.",
        "",
        "## Files",
        "",
        "`clock.json` (settings, intercepts, checksums), `genes.json`, `parameters.npz` (arrays; loads with "
        "`allow_pickle=False`), `training.json` (this summary and every training donor's out-of-fold "
        "prediction), `coefficients.csv`. No file is a pickle: loading the clock runs no code from it.",
        "",
    ]
    return "\n".join(lines)
