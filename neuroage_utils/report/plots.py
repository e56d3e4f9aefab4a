"""Figure styles shared by every chapter."""

from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neuroage_utils.report import tables

AGE_CMAP = "viridis"
# The book's content column is about 690 CSS px wide (a 1280 px window): a figure drawn 7 in wide is
# scaled to it, so 9 pt text shows at about 12 px (9 pt at 96 px/in). Wider figures are scaled down
# further, and their text with them.
WIDTH = 7.0
SMALL = 9  # the smallest text a figure may carry (points, at WIDTH)
SPLIT_COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def set_style() -> None:
    """The book's look: seaborn's ticks style, readable sizes, no top/right spines."""
    import seaborn as sns

    try:  # in a kernel, render figures inline whatever MPLBACKEND says (glue needs image/png)
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and getattr(shell, "kernel", None) is not None:
            shell.run_line_magic("matplotlib", "inline")
    except ImportError:  # pragma: no cover - IPython comes with the kernel
        pass
    sns.set_theme(style="ticks", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 10, "axes.titlesize": 10.5,
                         "axes.labelsize": 10, "xtick.labelsize": SMALL, "ytick.labelsize": SMALL,
                         "legend.fontsize": SMALL, "figure.titlesize": 11})


def predicted_vs_true(table: pd.DataFrame, title: str = "", ax=None, entry: dict | None = None,
                      legend: bool = True, limits=None, stats: str = "box"):
    """Predicted vs true donor age with the least-squares line, the identity and MAE / r in the panel.

    ``table`` is a donor table (``age``, ``predicted``); ``entry`` (a results entry) adds the CI.
    ``stats``: ``"box"`` puts MAE, interval, r and donors in a box in the panel; ``"title"`` writes
    MAE, interval and r under the title instead (small panels, where a box would hide donors; the
    caption says how many donors); ``"none"`` leaves them out.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.0))
    x = table["age"].to_numpy(float)
    y = table["predicted"].to_numpy(float)
    ax.scatter(x, y, s=36 if stats == "box" else 22, color="#4C72B0", edgecolor="white", linewidth=0.6, zorder=3)
    lo, hi = limits if limits is not None else (min(x.min(), y.min()) - 3, max(x.max(), y.max()) + 3)
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.6", lw=1, label="identity")
    if len(x) > 1 and np.std(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.array([lo, hi])
        ax.plot(grid, slope * grid + intercept, color="#C44E52", lw=1.5, label="regression")
    mae = np.mean(np.abs(y - x))
    # a clock that predicts one age for everyone (the null) has no correlation: a dash, not "r 0.00"
    r = np.corrcoef(x, y)[0, 1] if np.ptp(y) > 1e-6 * max(1.0, np.abs(y).max()) else float("nan")
    interval = (tables.format_interval(entry["mae_ci95"]) if entry is not None and entry.get("mae_ci95") is not None
                else None)
    if stats == "box":
        text = f"MAE {mae:.2f} y\nr = {tables.format_r(r)}\n{len(x)} donors"
        if interval:
            text = f"MAE {mae:.2f} y\n95%: {interval}\nr = {tables.format_r(r)}\n{len(x)} donors"
        ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=SMALL,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
    elif stats == "title":
        line = f"MAE {mae:.1f}" + (f" ({interval})" if interval else "") + f", r {tables.format_r(r)}"
        title = f"{title}\n{line}" if title else line
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true age (years)", ylabel="predicted age (years)")
    ax.set_title(title, fontsize=SMALL if stats == "title" else None)
    ax.set_aspect("equal")
    if legend:
        ax.legend(loc="lower right", fontsize=SMALL, frameon=False)
    return ax


def loss_curves(history: pd.DataFrame, columns, ax=None, title: str = "", logy: bool = False):
    """Training curves from a per-epoch history table."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for col in columns:
        if col in history:
            ax.plot(history.index if "epoch" not in history else history["epoch"], history[col], label=col)
    ax.set(xlabel="epoch", title=title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=SMALL, frameon=False)
    return ax


def scores_table(rows: pd.DataFrame, paper_col: str | None = None, names: dict | None = None, decimals=None):
    """A scores table for people (:func:`tables.styled`): model keys as names, splits spelled out,
    headers with units, no index or key column, the best MAE of ours in bold, the paper's column grey."""
    from neuroage_utils.report.labels import CHAPTER_NAMES

    shown = rows.drop(columns=[c for c in ("key",) if c in rows]).copy()
    if "model" in shown:
        names = {**CHAPTER_NAMES, **(names or {})}
        shown["model"] = [names.get(m, m) if isinstance(m, str) else m for m in shown["model"]]
    if "split" in shown:
        shown["split"] = [tables.SPLIT_NAMES.get(s, s) for s in shown["split"]]
    places = {"r": 2, **(decimals or {})}
    styler = tables.styled(shown, labels=SCORE_LABELS, decimals={c: places.get(c, 2) for c in shown},
                           whole_numbers=False)
    best = next((c for c in ("MAE", "CV MAE") if c in shown), None)
    if best is not None and pd.api.types.is_numeric_dtype(shown[best]):
        styler = styler.highlight_min(subset=[best], props="font-weight: bold")
    if paper_col and paper_col in shown:
        styler = styler.set_properties(subset=[paper_col], **{"color": "#666666"})
    # short cells (numbers, intervals) stay on one line; names, sentences and longer cells may wrap (so
    # that wide tables, e.g. the verdict's reconciliation, fit the column at 1,366 px)
    one_line = [c for c in shown if c not in ("model", "MAE per repeat")
                and shown[c].map(lambda v: len(str(v))).max() <= 14]
    if one_line:
        styler = styler.set_properties(subset=one_line, **{"white-space": "nowrap"})
    return styler


# Chapter model keys that read differently on a chapter page than in the cross-validation recipes.
SCORE_LABELS = {"MAE": "MAE (years)", "CV MAE": "CV MAE (years)", "95% CI": "95% interval (years)",
                "paper MAE": "paper MAE (years)", "paper MAE (other data)": "paper MAE (years, other data)",
                "seconds": "time (s)", "hidden": "widths", "paper hidden": "paper widths",
                "age_hidden": "age head", "lr": "learning rate", "noise": "noise level"}


BLOCK_COLORS = {"encoder": "#4C72B0", "mu_head": "#8172B3", "var_head": "#8172B3", "decoder": "#55A868",
                "age_head": "#C44E52", "likelihood": "#937860", "input_transform": "#999999"}


def architecture_figure(layers: pd.DataFrame, title: str = ""):
    """Draw a network from its layer table (``models.networks.layer_table``): one bar per Linear layer,
    its height the log of its width, grouped and coloured by block; the age head branches off the
    encoder's latent layer. Built from the module itself, so it cannot drift from the code.
    """
    linear = layers[layers["type"] == "Linear"].reset_index(drop=True)
    main = linear[linear["block"].isin(["encoder", "mu_head", "decoder"])]
    age = linear[linear["block"] == "age_head"]
    fig, ax = plt.subplots(figsize=(WIDTH, 4.4))
    heights = lambda w: 0.4 + np.log10(float(w))  # noqa: E731 - the log keeps 17,658 and 20 on one page

    def bar(x, y0, width_units, color, note=""):
        h = heights(width_units)
        ax.add_patch(plt.Rectangle((x - 0.3, y0 - h / 2), 0.6, h, color=color, alpha=0.85))
        ax.text(x, y0 + h / 2 + 0.08, f"{int(width_units):,}", ha="center", va="bottom", fontsize=SMALL)
        if note:
            ax.text(x, y0 - h / 2 - 0.1, note, ha="center", va="top", fontsize=SMALL, color="0.3")

    x = 0
    first = main.iloc[0]
    bar(x, 0, first["in"], BLOCK_COLORS["input_transform"], "genes")
    positions = {}
    for row in main.itertuples(index=False):
        x += 1
        note = {"encoder": "enc", "mu_head": "latent", "decoder": "dec"}[row.block]
        bar(x, 0, row.out, BLOCK_COLORS[row.block], note)
        positions[row.name] = x
        ax.annotate("", xy=(x - 0.32, 0), xytext=(x - 0.68, 0), arrowprops={"arrowstyle": "->", "color": "0.5"})
    last_encoder = max(v for k, v in positions.items() if k.startswith("encoder"))
    ax_x, y_age = last_encoder, -3.7
    for i, row in enumerate(age.itertuples(index=False)):
        bar(ax_x + i, y_age, row.out, BLOCK_COLORS["age_head"], "age" if i == len(age) - 1 else "")
    n_encoder = len(main[main["block"] == "encoder"])
    ax.annotate("", xy=(ax_x, y_age + heights(age.iloc[0]["out"]) / 2 + 0.42),
                xytext=(ax_x, -heights(main.iloc[n_encoder - 1]["out"]) / 2 - 0.5),
                arrowprops={"arrowstyle": "->", "color": "#C44E52"})
    likelihood = layers.loc[layers["block"] == "likelihood", "type"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=BLOCK_COLORS[b]) for b in ("encoder", "mu_head", "decoder", "age_head")]
    ax.legend(handles, ["encoder (Linear-BN-ReLU)", "latent mean / variance", "decoder",
                        "age head (Linear-BN-ReLU-Dropout)"], loc="upper center", bbox_to_anchor=(0.5, 0.0),
              ncol=2, fontsize=SMALL, frameon=False)
    ax.set_xlim(-0.7, max(x, ax_x + len(age) - 1) + 0.7)
    ax.set_ylim(-5.5, 3.0)
    ax.axis("off")
    sub = f"reconstruction: {likelihood.iloc[0]}" if len(likelihood) else ""
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=10.5)
    return fig


def placeholder_figure(text: str):
    """A small figure that says why a figure is missing (a model skipped on this input)."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="0.35")
    ax.axis("off")
    return fig


# --------------------------------------------------------------------------------------------------
# The chapters' figures (every figure of the book is drawn here, none in a notebook)
# --------------------------------------------------------------------------------------------------


def age_histograms(donors: pd.DataFrame, cell_ages, split_order=("train", "val", "test")):
    """Fig S1: donor ages, the splits stacked, and cell ages (``donors``: the cohort's donor table)."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.2))
    bins = np.arange(np.floor(donors["age"].min() / 5) * 5, donors["age"].max() + 5, 5)
    present = [s for s in split_order if (donors["split"] == s).any()]
    axes[0].hist([donors.loc[donors["split"] == s, "age"] for s in present], bins=bins, stacked=True,
                 label=[tables.SPLIT_NAMES.get(s, s) for s in present], color=[SPLIT_COLORS[s] for s in present],
                 edgecolor="white", linewidth=0.5)
    axes[0].set(xlabel="age (years)", ylabel="donors", title=f"by donor ({len(donors)} donors)")
    axes[0].legend(frameon=False)
    axes[1].hist(cell_ages, bins=bins, color="0.35", edgecolor="white", linewidth=0.5)
    axes[1].set(xlabel="age (years)", ylabel="cells", title=f"by cell ({len(cell_ages):,} cells)")
    fig.tight_layout()
    return fig


def cells_per_donor(donors: pd.DataFrame):
    """Cells per donor, youngest to oldest, coloured by split."""
    order = donors.sort_values("age")
    fig, ax = plt.subplots(figsize=(WIDTH, 2.9))
    ax.bar(np.arange(len(order)), order["n_cells"], color=[SPLIT_COLORS[s] for s in order["split"]])
    ax.set(xlabel="donors, youngest to oldest", ylabel="cells", xticks=[])
    for s, c in SPLIT_COLORS.items():
        ax.bar([0], [0], color=c, label=tables.SPLIT_NAMES.get(s, s))
    # above the axes, clear of the bars (a legend inside covered the first donors' bars)
    ax.legend(frameon=False, ncol=3, loc="lower left", bbox_to_anchor=(0.0, 1.0), borderaxespad=0.2)
    return fig


def library_histograms(umis, genes_detected):
    """Library size (log10 UMIs per cell) and detected genes per cell."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    axes[0].hist(np.log10(np.maximum(umis, 1)), bins=50, color="#4C72B0")
    axes[0].set(xlabel="log10 UMIs per cell", ylabel="cells", title="library size")
    axes[1].hist(genes_detected, bins=50, color="#55A868")
    axes[1].set(xlabel="genes detected per cell", ylabel="cells", title="detected genes")
    fig.tight_layout()
    return fig


def svd_components(scores, ages, corr: pd.DataFrame, paper_abs_r: float, max_cells: int, seed: int = 0,
                   chance: dict | None = None):
    """Fig S2: cells on the first two SVD components coloured by age (left), and every component's
    |r| with age over cells and over donors, by component (right; dashed: the paper's top |r|).

    At most ``max_cells`` cells are drawn (a seeded random subset) so the figure stays light.
    """
    rng = np.random.default_rng(seed)
    show = rng.choice(len(ages), size=min(len(ages), max_cells), replace=False)
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.4), gridspec_kw={"width_ratios": [1, 1.25]})
    ax = axes[0]
    b = 1 if scores.shape[1] > 1 else 0
    sc = ax.scatter(scores[show, 0], scores[show, b], c=ages[show], cmap=AGE_CMAP, s=3, alpha=0.6, rasterized=True)
    ax.set(xlabel="SVD component 1", ylabel=f"SVD component {b + 1}", title="cells, coloured by age")
    fig.colorbar(sc, ax=ax, label="age (years)", fraction=0.06, pad=0.02)
    ax = axes[1]
    comp = np.asarray(corr["component"], dtype=float) + (1 if corr["component"].min() == 0 else 0)
    ax.scatter(comp, corr["r_cell"].abs(), s=12, color="#4C72B0", label="cells", alpha=0.8)
    ax.scatter(comp, corr["r_donor"].abs(), s=12, color="#DD8452", marker="s", label="donors", alpha=0.8)
    ax.axhline(paper_abs_r, color="#C44E52", ls="--", lw=1, label=f"paper's top ({paper_abs_r:.2f})")
    if chance is not None:  # the best of k components by chance (shuffled donor ages, 95th percentile)
        ax.axhline(chance["q95_donor"], color="#DD8452", ls=":", lw=1.5, label=f"chance, donors ({chance['q95_donor']:.2f})")
    ax.set(xlabel="component", ylabel="|r| with age", ylim=(0, 1.25), yticks=np.linspace(0, 1, 6),
           title="each component's correlation with age")
    # above the data: |r| is at most 1, the legend sits in the band above it
    ax.legend(frameon=False, loc="upper center", ncol=2, fontsize=SMALL, bbox_to_anchor=(0.5, 1.0),
              columnspacing=1.0, handletextpad=0.4)
    fig.tight_layout()
    return fig


def factor_correlations(corr: pd.DataFrame, title: str, chance: dict | None = None):
    """Each factor's r with age over cells against over donors; with ``chance``
    (:func:`~neuroage_utils.models.svd.chance_best_abs_r`) dotted lines at the best |r| that
    shuffled donor ages reach in 95% of shuffles, on each axis."""
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    ax.scatter(corr["r_cell"], corr["r_donor"], s=14, color="#4C72B0")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    if chance is not None:
        for sign in (-1, 1):
            ax.axhline(sign * chance["q95_donor"], color="#DD8452", ls=":", lw=1.5,
                       label="chance (95% of shuffles)" if sign > 0 else None)
            ax.axvline(sign * chance["q95_cell"], color="#DD8452", ls=":", lw=1.5)
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=SMALL)  # clear of the data
    ax.set(xlabel="r with age over cells", ylabel="r with age over donors", title=title)
    return fig


def cv_path(path: pd.DataFrame, chosen_alpha: float):
    """Held-out MSE along the elastic net's alpha path, one line per l1 ratio; the chosen alpha dashed."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for l1, group in path.groupby("l1_ratio"):
        ax.plot(group["alpha"], group["mse_mean"], marker=".", label=f"l1 ratio {l1:g}")
    ax.axvline(chosen_alpha, color="0.5", ls="--", lw=1)
    ax.set(xscale="log", xlabel="alpha", ylabel="held-out MSE (years²)", title="donor-grouped CV")
    ax.legend(frameon=False)
    return fig


def training_losses(histories: dict, title: str, ylabel: str = "training MSE (z-scored age)"):
    """Per-epoch training loss of several models (``label -> history``), log scale."""
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for label, h in histories.items():
        ax.plot(h["epoch"], h["loss"], label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, yscale="log", title=title)
    ax.legend(frameon=False, ncol=2 if len(histories) > 4 else 1)
    return fig


def vae_training(history: pd.DataFrame):
    """A VAE's run: reconstruction and total loss, the KL and learning-rate schedules, the age terms,
    one row each on a shared epoch axis."""
    fig, axes = plt.subplots(3, 1, figsize=(WIDTH, 6.6), sharex=True)
    cols = [c for c in history.columns if c not in ("epoch", "kl_weight", "lr", "val_mae")]
    loss_curves(history, [c for c in cols if "recon" in c or c == "loss"], ax=axes[0], title="loss", logy=True)
    loss_curves(history, ["kl_weight", "lr"], ax=axes[1], title="schedules")
    loss_curves(history, [c for c in history.columns if "age" in c or c == "val_mae"], ax=axes[2], title="age terms")
    for ax in axes:
        if ax.get_legend() is not None:
            ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in axes[:-1]:
        ax.set_xlabel("")
    fig.tight_layout()
    return fig


def predicted_vs_true_panels(panels, empty_text: str = "no model to show on this input"):
    """One :func:`predicted_vs_true` panel per ``(title, results entry)``, side by side on shared axes
    at the book's width; a placeholder when none. The identity (dashed) and least-squares line (red)
    are named in the captions, not in a legend per panel."""
    panels = [(title, entry) for title, entry in panels if entry and "predictions" in entry]
    if not panels:
        return placeholder_figure(empty_text)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(WIDTH if n > 1 else 4.0, 3.4 if n > 2 else 4.0), squeeze=False)
    frames = [pd.DataFrame(entry["predictions"]) for _, entry in panels]
    values = np.concatenate([np.r_[f["age"].to_numpy(float), f["predicted"].to_numpy(float)] for f in frames])
    limits = (values.min() - 3, values.max() + 3)
    for i, (ax, (title, entry), frame) in enumerate(zip(axes[0], panels, frames)):
        predicted_vs_true(frame, title, ax=ax, entry=entry, legend=n == 1, limits=limits)
        ax.title.set_fontsize(10)
        if i:
            ax.set_ylabel("")
    fig.tight_layout()
    return fig


def latent_space(projection, ages, donors, title: str):
    """Cells on two latent axes, coloured by donor age and by donor."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.4), sharex=True, sharey=True)
    sc = axes[0].scatter(projection[:, 0], projection[:, 1], c=ages, cmap=AGE_CMAP, s=4, alpha=0.7, rasterized=True)
    fig.colorbar(sc, ax=axes[0], label="donor age (years)", fraction=0.06, pad=0.02)
    codes = pd.Categorical(donors).codes
    axes[1].scatter(projection[:, 0], projection[:, 1], c=codes, cmap="tab20", s=4, alpha=0.7, rasterized=True)
    for ax, t in zip(axes, ["coloured by age", "coloured by donor"]):
        ax.set(xlabel="latent PC 1", title=t)
    axes[0].set_ylabel("latent PC 2")
    fig.suptitle(f"{title}: test cells")
    fig.tight_layout()
    return fig


def vae_experiments(curves: pd.DataFrame | None, table: pd.DataFrame | None, null_mae: float,
                    train_null_mae: float | None = None):
    """The VAE experiments: learning curves (training- and validation-donor MAE over the epochs of
    the paper-budget run, and of its up-weighted twin when ``curves`` holds ``*_weighted`` columns) and the age-weight sweep (training vs validation MAE per weight), the null's
    validation MAE as a dashed line on both (and its training-donor MAE dotted when given); a
    placeholder when nothing ran. One legend for both panels, under them, so the text stays legible."""
    if curves is None or table is None or table.empty:
        return placeholder_figure("VAE experiments skipped: the data are not raw counts")
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.9))
    ax = axes[0]
    ax.plot(curves["epoch"] + 1, curves["train_mae"], color=SPLIT_COLORS["train"], label="training donors")
    ax.plot(curves["epoch"] + 1, curves["val_mae"], color=SPLIT_COLORS["val"], label="validation donors")
    if "val_mae_weighted" in curves:  # the up-weighted twin of the paper-budget run, dashed
        w = curves.attrs.get("age_weight")
        ax.plot(curves["epoch"] + 1, curves["train_mae_weighted"], color=SPLIT_COLORS["train"], ls="-.", lw=1)
        ax.plot(curves["epoch"] + 1, curves["val_mae_weighted"], color=SPLIT_COLORS["val"], ls="-.", lw=1,
                label=f"age weight {w:g} (dash-dot)" if w is not None else "age up-weighted (dash-dot)")
    ax.set(xlabel="epoch", ylabel="donor MAE (years)", title="Learning curves (paper's budget)")
    ax = axes[1]
    sweep = table[table["kind"].isin(["table3", "age_weight"])].sort_values("age_weight")
    ax.plot(sweep["age_weight"], sweep["train_mae"], "o-", color=SPLIT_COLORS["train"])
    ax.errorbar(sweep["age_weight"], sweep["val_mae"],
                yerr=[sweep["val_mae"] - sweep["ci_lo"], sweep["ci_hi"] - sweep["val_mae"]], fmt="s-", capsize=3,
                color=SPLIT_COLORS["val"], label="validation donors (95% CI)")
    ax.set_xscale("log")
    ax.set(xlabel="weight of the age term (paper: 1)", ylabel="", title=f"Age weight ({int(sweep['epochs'].iloc[0])} epochs)")
    for ax in axes:
        ax.axhline(null_mae, color="#777777", ls="--", lw=1, label="null, validation donors")
        if train_null_mae is not None:
            ax.axhline(train_null_mae, color="#777777", ls=":", lw=1, label="null, training donors")
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=SMALL)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, fontsize=SMALL)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig
