"""Why the VAEs fail here, settled by experiment rather than asserted.

Every experiment trains on the training donors and is scored on the validation donors, beside the
null model on the same donors:

- **learning curves**: training- and validation-donor MAE per epoch of the Table 3 run (monitors of
  the training loop);
- **optimiser steps**: the Table 3 configuration with a smaller batch for the same epochs, its step
  count stated against the paper's;
- **age weight**: the weight of the age term raised above the paper's 1;
- **linear probes**: a ridge on donor-mean latent means of an unsupervised VAE (age weight 0), and
  the same probe on SVD scores and NMF usages of the same cells;
- **as coded by the authors**: MSE reconstruction, SGD for the autoencoder and Adam for the age head.

:func:`findings` then turns the table of these results into sentences whose claims are decided by
the numbers (training-validation gaps, paired intervals against the null and between experiments).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from neuroage_utils import paper
from neuroage_utils.chapters.chapter import FitTask
from neuroage_utils.metrics import paired_difference, table_from_donor_predictions
from neuroage_utils.models.probe import probe_scores
from neuroage_utils.results import tuning_key

__all__ = ["step_budget", "paper_step_budget", "learning_curves", "run_experiments", "experiment_table",
           "display_table", "paired_comparisons", "findings", "EXPERIMENT_KEYS"]

#: Results keys of the experiments (validation donors), in the order of the table.
EXPERIMENT_KEYS = ("vae_exp_steps", "vae_exp_coded", "probe_vae_latent", "probe_svd", "probe_nmf")


def step_budget(n_cells: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of a run: ``ceil(cells / batch) * epochs`` (the loop's batches per epoch)."""
    return int(math.ceil(int(n_cells) / int(batch_size)) * int(epochs))


def paper_step_budget(splits=("train",)) -> dict:
    """The paper's longest Poisson run (Table 3's last row), from its own cohort table and settings:
    cells of the donors of ``splits``, batch size, epochs and the steps they make."""
    cohort = paper.load_paper_cohort()
    cells = int(cohort.loc[cohort["split"].isin(splits), "n_cells"].sum())
    batch, epochs = int(paper.TRAINING["batch_size"]), int(paper.POISSON_VAE_GRID[-1]["epochs"])
    return {"cells": cells, "batch_size": batch, "epochs": epochs,
            "batches_per_epoch": int(math.ceil(cells / batch)), "steps": step_budget(cells, batch, epochs)}


def learning_curves(history: pd.DataFrame) -> pd.DataFrame:
    """``epoch``, ``train_mae``, ``val_mae`` (and ``steps`` when known) of a monitored run's history."""
    cols = [c for c in ("epoch", "train_mae", "val_mae") if c in history.columns]
    if "train_mae" not in cols or "val_mae" not in cols:
        raise ValueError("learning_curves: the history has no train_mae / val_mae monitors "
                         "(fit with monitor=('train', 'val'))")
    return history[cols].reset_index(drop=True)


def _last(history, column):
    return float(history[column].iloc[-1]) if history is not None and column in history else float("nan")


def run_experiments(chapter, X) -> dict:
    """Run the chapter's experiments (see the module docstring) and record their entries.

    ``chapter`` is the VAE chapter (:class:`neuroage_utils.chapters.chapter.Chapter`) after its Table 3 runs,
    which were fitted with ``monitor=("train", "val")``. Settings come from
    ``chapter.params["experiments"]``: ``row`` (the Table 3 row whose length the extra runs share and
    whose scored run is their baseline), ``batch_size`` (the step run), ``age_weights``,
    ``monitor_cells``, ``nmf_iter``. Returns ``meta`` (key -> what ran), the baseline key, the
    learning curves and the step budgets; entries go to ``chapter.models``.
    """
    from neuroage_utils.data.features import log_normalize
    from neuroage_utils.models.nmf import fit_nmf
    from neuroage_utils.models.svd import fit_svd

    c, P = chapter.cohort, chapter.params
    E = P["experiments"]
    row = int(E["row"])
    cfg = P["poisson_grid"][row]
    base_key = tuning_key("vae_poisson", 3, row + 1)
    last_key = tuning_key("vae_poisson", 3, len(P["poisson_grid"]))
    age_keys = [f"vae_exp_age_w{w:g}" for w in E["age_weights"]]
    if not c.is_counts or not chapter.has_fitted(base_key):
        reason = "the data are not raw counts" if not c.is_counts else "the Table 3 run was not fitted"
        for key in (*EXPERIMENT_KEYS, *age_keys):
            chapter.skip(key, reason)
        return {"meta": {}, "base_key": base_key, "curves": None, "steps": None, "skipped": reason}

    started = time.perf_counter()
    n_train = int(c.mask("train").sum())
    monitor = {"monitor": ("train", "val"), "monitor_cells": E["monitor_cells"]}  # FitTask fields
    base_hist = chapter.fitted_model(base_key).history_
    meta = {base_key: {"experiment": f"Table 3 configuration ({cfg['epochs']} epochs, as the paper describes)",
                       "kind": "table3", "epochs": cfg["epochs"], "batch_size": P["batch_size"],
                       "steps": step_budget(n_train, P["batch_size"], cfg["epochs"]), "age_weight": 1.0,
                       "train_mae": _last(base_hist, "train_mae"), "seconds": float(base_hist["seconds"].sum())}}

    # (key, label, kind, checkpoint, options): independent runs, fitted side by side (chapter.workers)
    runs = [("vae_exp_steps", f"more optimiser steps (batch {E['batch_size']})", "steps", "exp_steps",
             {"batch_size": int(E["batch_size"])})]
    runs += [(key, f"age weight {w:g}", "age_weight", f"exp_age_w{w:g}", {"age_weight": float(w)})
             for w, key in zip(E["age_weights"], age_keys)]
    runs.append(("vae_exp_coded", "as coded by the authors (MSE reconstruction, SGD + Adam)", "coded", "exp_coded",
                 {"likelihood": "mse", "optimizer": "authors"}))
    jobs = []
    for key, _, _, checkpoint, options in runs:
        options = dict(options)
        likelihood = options.pop("likelihood", "poisson")
        jobs.append(FitTask(key, chapter.vae(likelihood, cfg, checkpoint, **options), X, fit=("train",), on="val",
                            extra={"config": cfg}, **monitor))
    # the probe's unsupervised VAE (age weight 0) trains alongside; it is not scored as a clock
    jobs.append(FitTask("vae_exp_unsupervised", chapter.vae("poisson", cfg, "exp_unsupervised", age_weight=0.0), X,
                        fit=("train",), on="val", score=False))
    chapter.fit_score_many(jobs)
    for key, label, kind, _, options in runs:
        h = chapter.fitted_model(key).history_
        batch = options.get("batch_size", P["batch_size"])
        meta[key] = {"experiment": label, "kind": kind, "epochs": cfg["epochs"], "batch_size": batch,
                     "steps": step_budget(n_train, batch, cfg["epochs"]),
                     "age_weight": options.get("age_weight", 1.0), "train_mae": _last(h, "train_mae"),
                     "seconds": float(h["seconds"].sum())}
        chapter.annotate(key, **{k: v for k, v in meta[key].items() if k not in ("experiment", "kind")})

    # The probes: one feature space each, the same ridge on donor means, training -> validation donors.
    train, used = c.mask("train"), c.mask("train", "val")
    table = c.donor_table
    train_ids = table.loc[table["split"] == "train", "donor_id"]
    val_ids = table.loc[table["split"] == "val", "donor_id"]
    unsupervised = chapter.release("vae_exp_unsupervised")
    k = int(min(cfg["latent"], X.shape[1] - 1, n_train - 1))
    X_norm = log_normalize(X)
    svd = fit_svd(X_norm[train], n_components=k, seed=chapter.seed)
    nmf = fit_nmf(X[train], n_components=k, seed=chapter.seed, max_iter=int(E["nmf_iter"]))
    features = {
        "probe_vae_latent": (unsupervised.latent(X[used]), f"ridge on latent means of an unsupervised VAE (age weight 0, {cfg['latent']} dims)"),
        "probe_svd": (svd.transform(X_norm[used]), f"ridge on SVD scores ({k} components)"),
        "probe_nmf": (nmf.transform(X[used]), f"ridge on NMF usages ({k} programmes, raw counts)"),
    }
    for key, (F, label) in features.items():
        pred = probe_scores(F, c.donors[used], c.ages[used], train_ids, val_ids, kind="ridge", seed=chapter.seed)
        chapter.add(key, table_from_donor_predictions(pred, table), "val", features=label, trained_on=["train"])
        meta[key] = {"experiment": label, "kind": "probe", "epochs": np.nan, "batch_size": np.nan, "steps": np.nan,
                     "age_weight": np.nan, "train_mae": np.nan, "seconds": np.nan}

    curves = learning_curves(chapter.fitted_model(last_key).history_)
    steps = {"run": {"cells": n_train, "batch_size": int(P["batch_size"]),
                     "epochs": int(P["poisson_grid"][-1]["epochs"]),
                     "steps": step_budget(n_train, P["batch_size"], P["poisson_grid"][-1]["epochs"])},
             "experiment": {"cells": n_train, "batch_size": int(E["batch_size"]), "epochs": int(cfg["epochs"]),
                            "steps": meta["vae_exp_steps"]["steps"]},
             "paper": paper_step_budget(("train",)), "paper_final": paper_step_budget(("train", "val"))}
    # Table 3 rows resume one run: the longest row's history holds every epoch's monitor time
    monitor_seconds = float(chapter.fitted_model(last_key).history_.get(
        "monitor_seconds", pd.Series(dtype=float)).sum())
    timing = {"experiments_s": time.perf_counter() - started, "table3_monitors_s": monitor_seconds}
    chapter.record(vae_experiments={
        "learning_curves": curves.to_dict(orient="list"), "step_budgets": steps, "baseline": base_key,
        "seconds": timing,
        "runs": {k: {kk: vv for kk, vv in v.items()} for k, v in meta.items()}})
    train_ages = table.loc[table["split"] == "train", "age"].to_numpy(dtype=float)
    train_null = float(np.mean(np.abs(train_ages - train_ages.mean())))  # one age per donor, as the null
    return {"meta": meta, "base_key": base_key, "curves": curves, "steps": steps, "seconds": timing,
            "train_null_mae": train_null}


def experiment_table(models: dict, meta: dict, null_key: str = "null_val", seed: int = 0,
                     train_null_mae: float | None = None) -> pd.DataFrame:
    """One row per experiment (``meta``: key -> experiment, kind, epochs, batch_size, steps,
    age_weight, train_mae) from the results entries ``models``, with the paired difference of its
    validation MAE from the null's on the same donors, and the null last (with ``train_null_mae``,
    the null's MAE on the training donors, as its training-donor MAE)."""
    null = models[null_key]
    rows = []
    for key, m in meta.items():
        e = models.get(key)
        if not e or "mae" not in e:
            continue
        d = paired_difference(e, null, seed=seed)
        rows.append({"experiment": m["experiment"], "key": key, "kind": m["kind"], "epochs": m.get("epochs"),
                     "batch_size": m.get("batch_size"), "steps": m.get("steps"), "age_weight": m.get("age_weight"),
                     "train_mae": m.get("train_mae", np.nan), "val_mae": e["mae"], "ci_lo": e["mae_ci95"][0],
                     "ci_hi": e["mae_ci95"][1], "r": np.nan if e["r"] is None else e["r"],
                     "vs_null": d["difference"], "vs_null_lo": d["ci95"][0], "vs_null_hi": d["ci95"][1],
                     "seconds": m.get("seconds", np.nan)})
    rows.append({"experiment": "null (training donors' mean age)", "key": null_key, "kind": "null",
                 "train_mae": np.nan if train_null_mae is None else float(train_null_mae), "val_mae": null["mae"], "ci_lo": null["mae_ci95"][0], "ci_hi": null["mae_ci95"][1]})
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`experiment_table` for people (pass it to :func:`neuroage_utils.report.tables.styled`)."""
    def pair(lo, hi):
        return [lo, hi] if pd.notna(lo) else np.nan

    def whole(v):
        return int(v) if pd.notna(v) else np.nan

    # Epochs and batch sizes are in the experiment's name and the section's text; r is in the results
    # file: the table keeps what the comparison needs, so it fits the page's width.
    return pd.DataFrame({
        "experiment (validation donors)": table["experiment"],
        "optimiser steps": [whole(v) for v in table["steps"]],
        "age weight": [f"{v:g}" if pd.notna(v) else np.nan for v in table["age_weight"]],
        "training-donor MAE": table["train_mae"],
        "validation MAE": table["val_mae"],
        "95% interval": [pair(a, b) for a, b in zip(table["ci_lo"], table["ci_hi"])],
        "minus the null": table["vs_null"],
        "paired 95% interval": [pair(a, b) for a, b in zip(table["vs_null_lo"], table["vs_null_hi"])],
        "seconds": table["seconds"] if "seconds" in table else np.nan,
    })


def paired_comparisons(models: dict, pairs, seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap differences ``MAE(a) - MAE(b)`` on shared donors for each ``(a, b)`` present."""
    rows = []
    for a, b in pairs:
        ea, eb = models.get(a), models.get(b)
        if not (ea and eb and "mae" in ea and "mae" in eb):
            continue
        d = paired_difference(ea, eb, seed=seed)
        rows.append({"a": a, "b": b, "difference": d["difference"], "lo": d["ci95"][0], "hi": d["ci95"][1],
                     "n_donors": d["n_donors"]})
    return pd.DataFrame(rows, columns=["a", "b", "difference", "lo", "hi", "n_donors"])


# --------------------------------------------------------------------------------------------------
# From numbers to sentences
# --------------------------------------------------------------------------------------------------


def _verdict(lo: float, hi: float) -> int:
    """-1: a is better (interval below 0), +1: worse (above 0), 0: the interval includes zero."""
    return -1 if hi < 0 else (1 if lo > 0 else 0)


def _compare(comparisons: pd.DataFrame, a: str, b: str):
    hit = comparisons[(comparisons["a"] == a) & (comparisons["b"] == b)]
    return None if hit.empty else hit.iloc[0]


def _interval(lo, hi) -> str:
    return f"paired 95% interval {lo:+.2f} to {hi:+.2f}"


def _change(name: str, before: float, after: float, comparison=None) -> str:
    """'lowered/raised/left <name> from a to b' with the paired verdict when given."""
    if comparison is None:
        word = "lowered" if after < before else "raised"
        return f"{word} {name} from {before:.2f} to {after:.2f}"
    v = _verdict(comparison["lo"], comparison["hi"])
    interval = _interval(comparison["lo"], comparison["hi"])
    if v == 0:
        return f"left {name} where it was ({before:.2f} to {after:.2f}; {interval}, which includes zero)"
    word = "lowered" if v < 0 else "raised"
    return f"{word} {name} from {before:.2f} to {after:.2f} ({interval}, which excludes zero)"


def _names(keys, table) -> str:
    labels = [table.set_index("key").loc[k, "experiment"] for k in keys]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def findings(table: pd.DataFrame, comparisons: pd.DataFrame, paper_steps: int | None = None,
             gap_years: float = 2.0, paper_final_steps: int | None = None) -> list[str]:
    """Sentences about what the experiments show, each claim decided by the numbers.

    ``table`` is :func:`experiment_table` (kinds ``table3``, ``steps``, ``age_weight``, ``coded``,
    ``probe``, ``null``); ``comparisons`` is :func:`paired_comparisons` holding (experiment, Table 3
    baseline) pairs and the latent probe against the SVD and NMF probes. A training-validation gap
    counts as memorising when it exceeds ``gap_years``; a difference counts only when its paired
    interval excludes zero. The last sentence is the explanation these claims support.
    """
    out: list[str] = []
    vae = table[table["kind"].isin(["table3", "steps", "age_weight", "coded"])]
    base = table[table["kind"] == "table3"]
    base = base.iloc[0] if len(base) else None
    facts = {}

    # 1. fitting the donors seen vs new donors
    seen = vae.dropna(subset=["train_mae"])
    null_row = table[table["kind"] == "null"].iloc[0]
    train_null = float(null_row["train_mae"]) if "train_mae" in table and pd.notna(null_row.get("train_mae")) else None
    if len(seen):
        gaps = seen["val_mae"] - seen["train_mae"]
        fitted = seen[gaps > gap_years]
        rest = len(seen) - len(fitted)
        null_part = f"; the null model misses the training donors by {train_null:.2f}" if train_null is not None else ""
        if fitted.empty:
            out.append(f"None of the {len(seen)} VAE runs fits its training donors more than {gap_years:g} years better "
                       f"than new donors (training-donor MAE {seen['train_mae'].min():.2f} to {seen['train_mae'].max():.2f}, "
                       f"validation {seen['val_mae'].min():.2f} to {seen['val_mae'].max():.2f}{null_part}).")
        else:
            each = "; ".join(f"{r.experiment}: {r.train_mae:.2f} on its training donors, {r.val_mae:.2f} on new ones"
                             for r in fitted.itertuples())
            out.append(f"{len(fitted)} of {len(seen)} VAE runs fit{'s' if len(fitted) == 1 else ''} the training donors "
                       f"more than {gap_years:g} years better than new donors ({each}); the other {rest} stay within "
                       f"{gap_years:g} years{null_part}.")
        # memorising: fitting the donors seen without beating the null on new ones
        facts["memorises"] = bool(len(fitted)) and not bool((fitted["vs_null_hi"] < 0).any())
        facts["memorisers"] = list(fitted["experiment"])
        if base is not None and train_null is not None:
            facts["underfit_at_paper"] = bool(base["train_mae"] > train_null - gap_years)
            word = "about as much as" if facts["underfit_at_paper"] else "well below"
            out.append(f"With the paper's age weight of 1 the Table 3 configuration misses its own training donors by "
                       f"{base['train_mae']:.2f} years, {word} the null model does ({train_null:.2f}).")

    # 2. against the null
    rows = table[table["kind"] != "null"]
    better = rows.loc[rows["vs_null_hi"] < 0, "key"].tolist()
    worse = rows.loc[rows["vs_null_lo"] > 0, "key"].tolist()
    facts["vae_beats_null"] = bool(set(better) & set(vae["key"]))
    if better:
        text = f"{_names(better, table)} beat{'s' if len(better) == 1 else ''} the null model on the validation donors (paired interval below zero)"
    else:
        text = f"None of the {len(rows)} experiments beats the null model on the validation donors with a paired interval that excludes zero"
    if worse:
        text += f"; {_names(worse, table)} {'is' if len(worse) == 1 else 'are'} worse than it"
    out.append(text + ".")

    # 3. more optimiser steps
    steps = table[table["kind"] == "steps"]
    if len(steps) and base is not None:
        s = steps.iloc[0]
        cmp = _compare(comparisons, s["key"], base["key"])
        ratio = s["steps"] / base["steps"]
        paper_part = f"; the paper's 1,000-epoch Table 3 run made {paper_steps:,}" if paper_steps else ""
        if paper_steps and paper_final_steps:
            paper_part += f" and its final model {paper_final_steps:,}"
        facts["steps_help"] = cmp is not None and _verdict(cmp["lo"], cmp["hi"]) < 0
        facts["steps_fit_train"] = s["train_mae"] < base["train_mae"]
        out.append(f"{ratio:.1f}x the optimiser steps ({int(s['steps']):,} instead of {int(base['steps']):,} in the same "
                   f"{int(s['epochs'])} epochs{paper_part}) "
                   f"{_change('the training-donor MAE', base['train_mae'], s['train_mae'])} and "
                   f"{_change('the validation MAE', base['val_mae'], s['val_mae'], cmp)}.")

    # 4. the weight of the age term
    sweep = table[table["kind"] == "age_weight"].sort_values("age_weight")
    facts["weight_help"] = facts["weight_fits_train"] = False
    if len(sweep) and base is not None:
        top = sweep.iloc[-1]
        cmp = _compare(comparisons, top["key"], base["key"])
        trains = " -> ".join(f"{v:.2f}" for v in [base["train_mae"], *sweep["train_mae"]])
        vals = " -> ".join(f"{v:.2f}" for v in [base["val_mae"], *sweep["val_mae"]])
        weights = ", ".join(f"{w:g}" for w in [1.0, *sweep["age_weight"]])
        facts["weight_help"] = cmp is not None and _verdict(cmp["lo"], cmp["hi"]) < 0
        facts["weight_fits_train"] = top["train_mae"] < base["train_mae"] - gap_years
        out.append(f"Weighting the age term {weights}: training-donor MAE {trains}, validation MAE {vals}; "
                   f"weight {top['age_weight']:g} against 1 {_change('the validation MAE', base['val_mae'], top['val_mae'], cmp)}.")

    # 5. the linear probes
    probe = table[table["key"] == "probe_vae_latent"]
    if len(probe):
        p = probe.iloc[0]
        facts["probe_beats_null"] = _verdict(p["vs_null_lo"], p["vs_null_hi"]) < 0
        parts, verdicts = [], []
        for other, name in (("probe_svd", "SVD scores"), ("probe_nmf", "NMF usages")):
            cmp = _compare(comparisons, "probe_vae_latent", other)
            if cmp is None:
                continue
            v = _verdict(cmp["lo"], cmp["hi"])
            verdicts.append(v)
            other_mae = float(table.loc[table["key"] == other, "val_mae"].iloc[0])
            word = {-1: "better than", 1: "worse than", 0: "indistinguishable from"}[v]
            parts.append(f"{word} the same probe on {name} ({other_mae:.2f}; {_interval(cmp['lo'], cmp['hi'])})")
        facts["probe_beats_linear"] = bool(verdicts) and all(v < 0 for v in verdicts)
        facts["probe_loses_linear"] = any(v > 0 for v in verdicts)
        null_word = "beats" if facts["probe_beats_null"] else ("is worse than" if p["vs_null_lo"] > 0 else "does not beat")
        out.append(f"A ridge on the donor-mean latent means of an unsupervised VAE scores {p['val_mae']:.2f} and "
                   f"{null_word} the null ({_interval(p['vs_null_lo'], p['vs_null_hi'])})"
                   + (": " + "; ".join(parts) if parts else "") + ".")

    # 6. the variant the authors coded
    coded = table[table["kind"] == "coded"]
    if len(coded) and base is not None:
        k = coded.iloc[0]
        cmp = _compare(comparisons, k["key"], base["key"])
        facts["coded_better"] = cmp is not None and _verdict(cmp["lo"], cmp["hi"]) < 0
        out.append(f"The variant as coded by the authors scores {k['val_mae']:.2f} against {base['val_mae']:.2f} for "
                   f"the model the paper describes; swapping in the code's reconstruction and optimisers "
                   f"{_change('the validation MAE', base['val_mae'], k['val_mae'], cmp)}.")

    out.append(_explanation(facts))
    return out


def _explanation(f: dict) -> str:
    """The explanation the facts support, clause by clause."""
    clauses = []
    if f.get("underfit_at_paper"):
        clauses.append("at the paper's weight the age term barely shapes the model: it fits its own training donors "
                       "no better than the null model does")
    if f.get("memorises"):
        clauses.append(f"where the age head is made to fit its training donors ({', '.join(f['memorisers'])}) it "
                       "learns those donors rather than age, since new donors gain nothing that beats the null")
    elif f.get("memorisers"):
        clauses.append(f"the runs that fit their training donors ({', '.join(f['memorisers'])}) also beat the null "
                       "on new donors, so they learnt some age")
    if "steps_help" in f:
        clauses.append("the runs are under-trained: more optimiser steps helped new donors" if f["steps_help"]
                       else "under-training is not the explanation at this budget: more steps did not help new donors")
    if f.get("weight_help"):
        clauses.append("the paper's age weight of 1 under-weights age: a heavier age term helped new donors")
    if "probe_beats_null" in f:
        if f["probe_beats_null"]:
            clause = "the latent space holds age signal that a donor-level linear probe can use"
            if not f.get("vae_beats_null"):
                clause += ", which the cell-level head misses"
        else:
            clause = "the latent space itself holds no age signal that a linear probe on these donors can use"
        if f.get("probe_beats_linear"):
            clause += ", and more than SVD and NMF features hold"
        clauses.append(clause)
    if f.get("probe_loses_linear"):
        clauses.append("linear factorisations of the same cells hold more age signal than the VAE's latent space")
    if "coded_better" in f:
        clauses.append("the code's departures from the paper (MSE, SGD) do better on these data" if f["coded_better"]
                       else "the code's departures from the paper (MSE, SGD) do not rescue the model on these data")
    return "What this evidence supports: " + "; ".join(clauses) + "."


def report(chapter, experiments: dict, seed: int = 0) -> dict:
    """What the chapter shows of :func:`run_experiments`: the experiment table, the paired comparisons
    (each experiment against the Table 3 baseline, the VAE-latent probe against the SVD and NMF
    probes), the step budgets and the findings; ``table`` is None when the experiments were skipped."""
    if not experiments["meta"]:
        return {"table": None, "comparisons": None, "steps": None,
                "findings": [f"The experiments were skipped: {experiments['skipped']}."]}
    table = experiment_table(chapter.models, experiments["meta"], seed=seed,
                             train_null_mae=experiments["train_null_mae"])
    base = experiments["base_key"]
    pairs = [(k, base) for k in experiments["meta"] if k.startswith("vae_exp")]
    pairs += [("probe_vae_latent", "probe_svd"), ("probe_vae_latent", "probe_nmf")]
    comparisons = paired_comparisons(chapter.models, pairs, seed=seed)
    steps = experiments["steps"]
    return {"table": table, "comparisons": comparisons, "steps": steps,
            "findings": findings(table, comparisons, paper_steps=steps["paper"]["steps"],
                                 paper_final_steps=steps["paper_final"]["steps"])}


def budget_text(experiments: dict) -> str:
    """The step budgets and seconds of :func:`run_experiments`, in a sentence for the page (from the
    run's own parameters and data and the paper's cohort table; one line when nothing ran)."""
    steps = experiments["steps"]
    if steps is None:
        return f"The experiments were skipped: {experiments['skipped']}."
    paper, final = steps["paper"], steps["paper_final"]
    return (f"The step budgets, from the run's own parameters and data: the longest Table 3 run here makes "
            f"**{steps['run']['steps']:,}** optimiser steps, the step experiment **{steps['experiment']['steps']:,}**; "
            f"the paper's {paper['epochs']:,}-epoch Table 3 run on its {paper['cells']:,} training cells at batch "
            f"{paper['batch_size']:,} made **{paper['steps']:,}**, and its final model on {final['cells']:,} training "
            f"and validation cells **{final['steps']:,}**. The experiments took "
            f"{experiments['seconds']['experiments_s']:.0f} s on this machine, plus "
            f"{experiments['seconds']['table3_monitors_s']:.1f} s for the per-epoch monitors of the Table 3 run.")
