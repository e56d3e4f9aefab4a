"""The conclusion page's builders: leaderboard, caveats beside the paper's numbers, ground truth,
and the conclusion text, each computed from results files and the cross-validation of this run."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from neuroage_utils import paper, profiles, results
from neuroage_utils.report import tables
from neuroage_utils.profiles import SECTION_TITLES
from neuroage_utils.report.labels import MODEL_NAMES

__all__ = ["PAPER_TEST_MAE", "leaderboard", "paper_caveat", "ground_truth", "conclusion", "cv_table",
           "skipped_models", "cv_settings", "cv_differences", "vae_clock_settings", "chapter_settings",
           "board_labels", "ground_truth_note"]

#: The paper's test MAE per model key, for the column that is another experiment on other data.
PAPER_TEST_MAE = {
    "null": paper.TEXT["null_test_mae"],
    "mlp": paper.TEXT["mlp_test_mae"],
    "nmf_mlp": paper.TEXT["nmf_mlp_test_mae"],
    "vae_poisson": paper.TEXT["poisson_vae_test_mae"],
    "dae": paper.TEXT["dae_test_mae"],
}


def _name(key: str) -> str:
    return MODEL_NAMES.get(key, key)


def other_results(out_dir, sha256, exclude=("summary",)) -> dict:
    """``{section: results document}`` for every other chapter that ran on the same data: ``sha256``
    is the file's digest, or a chapter's ``data`` record (then the cap on cells per donor must match too)."""
    data = sha256 if isinstance(sha256, dict) else {"sha256": sha256}
    keys = ("sha256", "max_cells_per_donor") if isinstance(sha256, dict) else ("sha256",)
    docs = {}
    for section in profiles.SECTIONS:
        if section in exclude:
            continue
        try:
            doc = results.read_results(out_dir, section)
        except FileNotFoundError:
            continue
        if all(doc["data"].get(k) == data.get(k) for k in keys):
            docs[section] = doc
    return docs


def leaderboard(docs: dict, own: dict | None = None, own_section: str = "summary") -> list[dict]:
    """Every model scored on the test donors, best MAE first: ``{model, section, mae, mae_ci95, r,
    n_donors, paper_mae}``. The null model appears once (every chapter scores the same one)."""
    rows, seen_null = [], False
    sources = [(s, d["models"]) for s, d in docs.items()] + ([(own_section, own)] if own else [])
    for section, models in sources:
        for key, e in models.items():
            if "mae" not in e or e.get("split") != "test" or key == "oracle":  # the oracle is the floor, not a clock
                continue
            if int(e["n_donors"]) < results.MIN_SCORED_DONORS:  # too few test donors to score
                continue
            if key == "null":
                if seen_null:
                    continue
                seen_null = True
            rows.append({"model": key, "section": section, "mae": float(e["mae"]),
                         "mae_ci95": [float(v) for v in e["mae_ci95"]], "r": e["r"], "n_donors": int(e["n_donors"]),
                         "paper_mae": PAPER_TEST_MAE.get(key), "trained_on": e.get("trained_on")})
    return sorted(rows, key=lambda r: r["mae"])


def skipped_models(docs: dict, own: dict | None = None, cv_skipped: dict | None = None) -> pd.DataFrame:
    """Every model a chapter (or the cross-validation) skipped, with its reason."""
    rows = [{"model": k, "where": s, "reason": e["skipped"]}
            for s, d in list(docs.items()) + [("summary", {"models": own or {}})]
            for k, e in d["models"].items() if "skipped" in e]
    rows += [{"model": k, "where": "cross-validation", "reason": r} for k, r in (cv_skipped or {}).items()]
    return pd.DataFrame(rows, columns=["model", "where", "reason"])


def board_labels(rows: list[dict]) -> list[str]:
    """A reader's name for each leaderboard row: the model's name, and its chapter's title only where
    two rows would otherwise read the same (no internal keys)."""
    names = [_name(r["model"]) for r in rows]
    return [f"{n} ({SECTION_TITLES.get(r['section'], r['section'])})" if names.count(n) > 1 else n
            for n, r in zip(names, rows)]


def leaderboard_table(rows: list[dict]) -> pd.DataFrame:
    """The leaderboard for display (the paper's column labelled as the other experiment it is)."""
    return pd.DataFrame([{
        "model": tables.null_label(r["trained_on"]) if r["model"] == "null" and r.get("trained_on") else _name(r["model"]),
        "key": r["model"], "chapter": SECTION_TITLES.get(r["section"], r["section"]), "MAE": round(r["mae"], 2),
        "95% CI": f"{r['mae_ci95'][0]:.1f}-{r['mae_ci95'][1]:.1f}",
        "r": np.nan if r["r"] is None else round(r["r"], 2), "donors": r["n_donors"],
        "paper MAE (other data)": r["paper_mae"]} for r in rows])


def paper_caveat(data: dict, docs: dict) -> str:
    """What differs between the paper's experiment and this run, read from this run's own results."""
    parts = [
        f"The paper's numbers come from another experiment on other data: the study's "
        f"{paper.TEXT['n_cells']:,} real nuclei x {paper.TEXT['n_genes']:,} genes from {paper.TEXT['n_donors']} donors. "
        f"This run used {data['n_cells']:,} {'simulated' if data['simulated'] else 'user-supplied'} cells x "
        f"{data['n_genes']:,} genes from {data['n_donors']} donors"
    ]
    nmf = docs.get("nmf", {}).get("params", {})
    if "mlp" in nmf:
        parts.append(f"MLP widths {nmf['mlp']['hidden']} (paper [5000, 5000, 5000]), {nmf.get('mlp_epochs')} epochs")
    if "n_components" in nmf:
        parts.append(f"NMF with {nmf['n_components']} components, {nmf.get('max_iter')} iterations")
    vae = docs.get("vae", {})
    cfg = (vae.get("models", {}).get("vae_poisson") or {}).get("config")
    grid = vae.get("params", {}).get("poisson_grid")
    epochs = cfg.get("epochs") if isinstance(cfg, dict) else (grid[-1]["epochs"] if grid else None)
    if epochs is not None:
        parts.append(f"final Poisson VAE {epochs} epochs at batch {vae['params'].get('batch_size')} "
                     f"(paper {int(paper.TABLE3['epochs'].max())} epochs at batch 4096)")
    return "; ".join(parts) + ". A paper value is shown for orientation, never as a result of this run."


def ground_truth_note(n_truth_genes: int | None) -> str:
    """The summary's sentence on ground truth, for simulated data (a count of planted genes) or not
    (``None``: no ground truth, said in words rather than as a zero)."""
    if n_truth_genes is None:
        return ("There is no ground-truth table: these data are not simulated, so no gene is known to change "
                "with age.")
    return (f"The ground-truth table scores each model's gene ranking against the {n_truth_genes:,} age genes the "
            f"simulator planted.")


def cv_table(summary: dict, comparisons: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The CV scores beside the paired differences against the null and the elastic net."""
    def diff(a, b):
        row = comparisons[(comparisons["a"] == a) & (comparisons["b"] == b)]
        if row.empty:
            return "-"
        r = row.iloc[0]
        return f"{r['difference']:+.2f} ({r['ci95'][0]:+.1f} to {r['ci95'][1]:+.1f})"

    rows = []
    for key, s in sorted(summary.items(), key=lambda kv: kv[1]["mae"]):
        name = "null (CV mean)" if key == "null" else _name(key)
        rows.append({"model": name, "key": key, "CV MAE": round(s["mae"], 2),
                     "95% CI": f"{s['mae_ci95'][0]:.1f}-{s['mae_ci95'][1]:.1f}",
                     "MAE per repeat": ", ".join(f"{v:.1f}" for v in s["mae_repeats"]),
                     "r": np.nan if s["r"] is None else round(s["r"], 2),
                     "cells per fit": s.get("cells_fitted"),
                     "vs null": diff(key, "null"), "vs elastic net": diff(key, "elastic_net")})
    return pd.DataFrame(rows)


def ground_truth(truth, rankings: dict, ks) -> pd.DataFrame:
    """Recovery at k of the planted age genes for each ``{method: gene ranking}``."""
    from neuroage_utils.evaluation.recovery import recovery_at_k

    frames = [recovery_at_k(r, truth, ks).assign(method=m) for m, r in rankings.items()]
    table = pd.concat(frames, ignore_index=True)
    return table[["method", "k", "hits", "precision", "chance_precision", "recall", "chance_recall",
                  "enrichment", "p_value"]]


# --------------------------------------------------------------------------------------------------
# The conclusion, in words built from the numbers
# --------------------------------------------------------------------------------------------------


def _fmt_diff(row) -> str:
    return f"{row['difference']:+.2f} years, 95% interval {row['ci95'][0]:+.2f} to {row['ci95'][1]:+.2f}"


def _listing(items) -> str:
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def residual_slopes(predictions: pd.DataFrame) -> pd.Series:
    """Least-squares slope of (repeat-averaged prediction - age) on age, per model."""
    mean = predictions.groupby(["model", "donor_id"]).agg(age=("age", "first"), predicted=("predicted", "mean"))
    out = {}
    for model, sub in mean.groupby(level="model"):
        if sub["age"].std() > 0:
            out[model] = float(np.polyfit(sub["age"], sub["predicted"] - sub["age"], 1)[0])
    return pd.Series(out, dtype=float)


def conclusion(summary: dict, comparisons: pd.DataFrame, board: list[dict], predictions: pd.DataFrame,
               seed: int = 0, vae_claim: dict | None = None) -> str:
    """Markdown bullets: what the cross-validation and the test split show, and what that says about
    the paper's claims. Every clause is derived from the numbers passed in."""
    from neuroage_utils.evaluation.crossval import paired_cv_difference

    lines = []
    if not summary:
        return "- No model was cross-validated on these data."
    any_s = next(iter(summary.values()))
    n, folds, repeats = any_s["n_donors"], any_s["folds"], any_s["repeats"]
    vs_null = comparisons[comparisons["b"] == "null"]
    better = vs_null[vs_null["excludes_zero"] & (vs_null["difference"] < 0)].sort_values("difference")
    worse = vs_null[vs_null["excludes_zero"] & (vs_null["difference"] > 0)]
    tied = vs_null[~vs_null["excludes_zero"]]
    lines.append(
        f"- Over all {n} donors ({folds} age-stratified folds x {repeats} repeats), "
        f"{len(better)} of {len(vs_null)} models miss donors by less than the null model with a paired interval "
        f"that excludes zero: " + _listing(f"{_name(r['a'])} ({_fmt_diff(r)})" for _, r in better.iterrows()) + "."
    )
    if len(tied):
        lines.append("- Not distinguishable from the null model on these donors: "
                     + _listing(f"{_name(r['a'])} ({_fmt_diff(r)})" for _, r in tied.iterrows()) + ".")
    if len(worse):
        lines.append("- Worse than the null model, with an interval that excludes zero: "
                     + _listing(f"{_name(r['a'])} ({_fmt_diff(r)})" for _, r in worse.iterrows()) + ".")
    ranked = sorted(summary, key=lambda k: summary[k]["mae"])
    ranked = [k for k in ranked if k != "null"] + (["null"] if "null" in ranked else [])
    best = ranked[0]
    beaten, close = [], []
    for other in ranked[1:]:
        c = paired_cv_difference(predictions, other, best, seed=seed)
        (beaten if c["excludes_zero"] and c["difference"] > 0 else close).append((other, c))
    lines.append(
        f"- The lowest CV MAE is the {_name(best)}'s, {summary[best]['mae']:.2f} years "
        f"({summary[best]['mae_ci95'][0]:.1f}-{summary[best]['mae_ci95'][1]:.1f}). Worse than it with an interval "
        f"excluding zero: {_listing(_name(k) for k, _ in beaten)}; within the noise of these donors: "
        f"{_listing(f'{_name(k)} ({_fmt_diff(c)})' for k, c in close)}."
    )
    slopes = residual_slopes(predictions)
    if len(slopes) > 1:
        flat = slopes.drop("null", errors="ignore")
        lines.append(
            f"- {int((flat < 0).sum())} of {len(flat)} clocks pull predictions towards the mean age (a negative slope of "
            f"residual on age, figure above); the slope runs from "
            f"{flat.max():+.2f} ({_name(flat.idxmax())}) to {flat.min():+.2f} ({_name(flat.idxmin())}); 0 would be "
            f"no pull and -1 is the null model, which predicts one age for everyone. The best CV model's slope is "
            f"{slopes.get(best, float('nan')):+.2f}.")
    # The paper's claims, tested where this run has the models.
    by_key = {r["model"]: r for r in board}
    claims = []
    if "vae_poisson" in by_key:
        rank = [r["model"] for r in board].index("vae_poisson") + 1
        top = board[0]
        claims.append(
            f"the paper's Poisson VAE is its best clock (paper test MAE {paper.TEXT['poisson_vae_test_mae']}); here it "
            f"ranks {rank} of {len(board)} on the test donors with {by_key['vae_poisson']['mae']:.2f} years, "
            f"against {top['mae']:.2f} for the {_name(top['model'])}"
            + (f" and {by_key['null']['mae']:.2f} for the null model" if "null" in by_key else ""))
    if {"mlp", "nmf_mlp"} <= set(summary):
        c = paired_cv_difference(predictions, "nmf_mlp", "mlp", seed=seed)
        verdict = ("lower, with an interval excluding zero" if c["excludes_zero"] and c["difference"] < 0 else
                   "higher, with an interval excluding zero" if c["excludes_zero"] else "not distinguishable")
        claims.append(f"NMF features improve the MLP (paper {paper.TEXT['mlp_test_mae']} -> "
                      f"{paper.TEXT['nmf_mlp_test_mae']}); in cross-validation NMF + MLP minus MLP is "
                      f"{_fmt_diff(c)}: {verdict}")
    if vae_claim and vae_claim.get("status"):
        claims.append(vae_claim["sentence"])
    if {"vae_latent_pseudobulk", "elastic_net"} <= set(summary):
        c = paired_cv_difference(predictions, "vae_latent_pseudobulk", "elastic_net", seed=seed)
        outcome = (", which these donors cannot resolve" if not c["excludes_zero"] else
                   " in cross-validation: better, at the CV's VAE budget" if c["difference"] < 0 else
                   " in cross-validation: worse at the CV's VAE budget (smaller than the paper's), so not reproduced "
                   "at that budget")
        claims.append(f"the paper concludes that a VAE's latent representation makes a better clock than an elastic net "
                      f"on genes; built the way clocks are built (donor-mean latent vectors, donor-level elastic "
                      f"net), the VAE clock minus the cell elastic net is {_fmt_diff(c)}{outcome}")
    if claims:
        lines.append("- The paper's claims, on this run: " + "; ".join(claims) + ".")
    return "\n".join(lines)


def write_summary(chapter, cv: dict, board: list[dict], **extra_params):
    """Write ``results/summary.json`` atomically: the chapter's usual keys plus ``cv`` and ``leaderboard``."""
    return chapter.finish(extra={"cv": cv, "leaderboard": board}, **extra_params)


def fit_vae_clock(chapter):
    """Fit the VAE clock on the training + validation donors' cells and score it on the test donors
    (entry ``vae_latent_pseudobulk`` of ``chapter.models``, beside the null on the same donors).
    Returns the fitted clock and a table of its settings as run."""
    from neuroage_utils.evaluation import crossval
    from neuroage_utils.metrics import table_from_donor_predictions

    cohort, P = chapter.cohort, chapter.params
    donors = cohort.donor_table
    train_cells, test_cells = cohort.mask("train", "val"), cohort.mask("test")
    # at least the VAE chapter's budget: its final Poisson configuration (widths, latent size,
    # epochs) on every training and validation cell
    V = vae_clock_settings(chapter.profile, P)
    clock = crossval.vae_clock_from_params({**P, "vae": V}, chapter.seed, chapter.device)
    clock.fit(cohort.X[train_cells], cohort.ages[train_cells], cohort.donors[train_cells])
    predicted = clock.predict_donors(cohort.X[test_cells], cohort.donors[test_cells])
    kept = int((clock.probe_.direction_ != 0).sum())
    chapter.add("vae_latent_pseudobulk", table_from_donor_predictions(predicted, donors[donors["split"] == "test"]),
                "test", trained_on=["train", "val"], likelihood=clock.likelihood_, config=V,
                probe_alpha=clock.probe_.alpha_, n_latent_used=kept, cells_fitted=clock.n_cells_vae_)
    chapter.add_null("test", train_splits=("train", "val"))
    settings = pd.Series({"likelihood": clock.likelihood_, "encoder widths": str(V["hidden"]),
                          "latent dimensions": V["latent"], "epochs": V["epochs"],
                          "cells the VAE trained on": clock.n_cells_vae_,
                          "latent dimensions the elastic net kept": kept,
                          "age-loss weight": 0}, name="VAE clock as run").to_frame()
    return clock, settings


def vae_clock_settings(profile: str, P: dict) -> dict:
    """The single-split VAE clock's VAE: the VAE chapter's final Poisson configuration (widths, latent
    size, epochs) on every training cell, or the CV's where that is larger."""
    cfg = profiles.section_params(profile, "vae")["poisson_grid"][-1]
    V = dict(P["vae"])
    V.update(hidden=list(cfg["hidden"]), latent=max(int(cfg["latent"]), int(V["latent"])),
             epochs=max(int(cfg["epochs"]), int(V["epochs"])), max_cells=None)
    return V


def cv_settings(P: dict, docs: dict | None = None, cells_fitted: float | None = None,
                single_vae: dict | None = None) -> pd.DataFrame:
    """The per-fold settings of the repeated cross-validation, as run, beside each chapter's own
    (read from the chapters' results files): the differences the reconciliation table refers to."""
    V = P["vae"]
    chapter = chapter_settings(docs or {})
    cap = P.get("cells_per_donor")
    rows = {
        "folds x repeats": (f"{P['folds']} x {P['repeats']}", "one split: 49 / 9 / 11 donors"),
        "training cells per fit, every model": (
            (f"all of the training donors' cells" if cap is None else f"at most {cap} per donor")
            + (f" (mean {cells_fitted:,.0f})" if cells_fitted else ""), chapter.get("cells", "-")),
        "elastic net: L1 ratios, penalties, inner donor folds": (f"{P['en_l1']}, {P['en_alphas']}, {P['inner_splits']}",
                                                                 chapter.get("elastic_net", "-")),
        "pseudocells per donor x cells each": (
            f"{P['pseudocells']['n_per_donor']} x {P['pseudocells']['cells_per_pseudocell']}", chapter.get("pseudocells", "-")),
        "SVD components (+ ridge on donor means)": (P["svd_k"], chapter.get("svd", "-")),
        "NMF components, iterations (raw counts)": (f"{P['nmf_k']}, {P['nmf_iter']}", chapter.get("nmf", "-")),
        "MLP widths, epochs": (f"{P['mlp_hidden']}, {P['mlp_epochs']}", chapter.get("mlp", "-")),
        "NMF + MLP: MLP widths, epochs": (f"{P['mlp_hidden']}, {P['mlp_epochs']}", chapter.get("nmf_mlp", "-")),
        "VAE clock: widths, latent, epochs": (f"{V['hidden']}, {V['latent']}, {V['epochs']}",
                                              f"{single_vae['hidden']}, {single_vae['latent']}, {single_vae['epochs']} "
                                              "(this page's single split)" if single_vae else "-"),
    }
    return pd.DataFrame(rows, index=["as run per fold", "its chapter (single split)"]).T


def chapter_settings(docs: dict) -> dict:
    """Each model's settings in its own chapter, read from that chapter's results file."""
    out = {}
    base = docs.get("baselines", {}).get("params", {})
    if base:
        en = base.get("elastic_net", {})
        out["elastic_net"] = f"{en.get('l1_ratios')}, {en.get('n_alphas')}, {en.get('n_splits')}"
        cap = en.get("max_cells")
        out["cells"] = ("every training cell" + (f"; the cell elastic net at most {cap:,}" if cap else ""))
        pc = base.get("pseudocells", {})
        out["pseudocells"] = f"{pc.get('n_per_donor')} x {pc.get('cells_per_pseudocell')}"
        best = (docs["baselines"]["models"].get("mlp") or {}).get("config") or {}
        out["mlp"] = f"{best.get('hidden', '-')}, {base.get('mlp_epochs')}"
    svd = docs.get("svd", {}).get("params", {})
    if svd:
        out["svd"] = svd.get("n_components")
    nmf = docs.get("nmf", {}).get("params", {})
    if nmf:
        out["nmf"] = f"{nmf.get('n_components')}, {nmf.get('max_iter')}"
        out["nmf_mlp"] = f"{nmf.get('mlp', {}).get('hidden')}, {nmf.get('mlp_epochs')}"
    return out


def cv_differences(P: dict, docs: dict, single_vae: dict | None = None) -> dict:
    """Per model key: what differs between its CV fit and its single-split fit, in words."""
    ch = chapter_settings(docs)
    grid = (f"L1 ratios, penalties, inner folds {P['en_l1']}, {P['en_alphas']}, {P['inner_splits']} in the CV; "
            f"{ch.get('elastic_net', '-')} in its chapter")
    d = {"null": "the same model; the CV averages over every donor",
         "elastic_net": grid + (f"; its chapter fits {ch['cells'].split('; ')[-1]}" if "at most" in ch.get("cells", "") else ""),
         "pseudobulk_elastic_net": grid,
         "pseudocell_elastic_net": (f"pseudocells {P['pseudocells']['n_per_donor']} x {P['pseudocells']['cells_per_pseudocell']} "
                                    f"in the CV, {ch.get('pseudocells', '-')} in its chapter"),
         "svd_ridge": f"{P['svd_k']} components in the CV, {ch.get('svd', '-')} in its chapter",
         "mlp": f"MLP {P['mlp_hidden']}, {P['mlp_epochs']} epochs in the CV; {ch.get('mlp', '-')} in its chapter",
         "nmf_mlp": (f"NMF {P['nmf_k']} components, {P['nmf_iter']} iterations, MLP {P['mlp_hidden']} x {P['mlp_epochs']} "
                     f"epochs in the CV; {ch.get('nmf', '-')} and MLP {ch.get('nmf_mlp', '-')} in its chapter")}
    if single_vae:
        V = P["vae"]
        d["vae_latent_pseudobulk"] = (f"VAE {V['hidden']}, latent {V['latent']}, {V['epochs']} epochs in the CV; "
                                      f"{single_vae['hidden']}, latent {single_vae['latent']}, {single_vae['epochs']} "
                                      "epochs on the single split")
    return d


def repeated_cv(chapter, data) -> dict:
    """Every cross-validation recipe over all donors (:func:`crossval.run_cv`), summarised: per-model
    CV entries, paired comparisons against the null and the elastic net, the display table (with each
    model's fitting seconds, summed over folds), the out-of-fold predictions, skipped models, seconds
    and the wall time (``wall_s``; the folds run in ``chapter.workers`` processes side by side)."""
    from neuroage_utils.evaluation import crossval

    P = chapter.params
    started = time.perf_counter()
    pred, skipped, seconds = crossval.run_cv(data, list(crossval.RECIPES), P, seed=chapter.seed, device=chapter.device,
                                             workers=chapter.workers)
    cv = crossval.cv_summary(pred, P, n_boot=P["boot"], seed=chapter.seed)
    # the leakage demonstration: the same elastic net with cells, not donors, split at random
    if "elastic_net" in cv:
        tic = time.perf_counter()
        cells = crossval.cell_split_cv(data, P, seed=chapter.seed, workers=chapter.workers)
        leak = crossval.cv_summary(cells, P, n_boot=P["boot"], seed=chapter.seed)["elastic_net_cell_split"]
        chapter.models["elastic_net_cell_split"] = {"split": "cv", **leak, "split_by": "cells at random (donors shared)",
                                                    "seconds": round(time.perf_counter() - tic, 1)}
    comparisons = crossval.cv_comparisons(pred, n_boot=P["boot"], seed=chapter.seed)
    display = cv_table(cv, comparisons, P)
    display["seconds"] = display["key"].map(lambda k: round(seconds.get(k, 0.0), 1))
    return {"cv": cv, "comparisons": comparisons, "table": display, "predictions": pred, "skipped": skipped,
            "seconds": seconds, "wall_s": time.perf_counter() - started}
