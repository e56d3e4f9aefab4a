"""Clocks fitted on and applied to .h5ad files of any size, read block by block: memory flat in the cells.

``neuroage fit`` / ``neuroage predict`` take this path above
:data:`~neuroage_utils.data.stream.STREAM_ABOVE_NNZ` stored values or with ``--stream``
(:func:`~neuroage_utils.data.stream.should_stream`).

What is exact and what is sampled:

- **pseudobulk clock, fit**: a donor's profile is the sum of its cells' raw counts, so the clock is
  fitted on one row per donor (per donor and cell type with a cell-type column; control cells only
  with a control column) holding those sums, accumulated in float64 from the file's blocks, and
  handed to the same fitting code (:meth:`Clock._fit_rows`): the same profiles, so the same
  clock, CV error and out-of-fold predictions as the in-memory fit (tested to 1e-9).
- **pseudocell and cell-level clocks, fit**: on a per-donor sample of the cells
  (:func:`~neuroage_utils.data.stream.per_donor_sample`: every donor capped at the same number of
  cells, the smallest cap reaching :func:`sample_size` cells), recorded in ``training.json``
  (``cell_sample``) and stated on the model card.
- **predict, every clock**: exact over every cell, in one pass: pseudobulk and pseudocell profiles
  are per-donor / per-pseudocell sums of the aligned counts (the same pseudocell draws as in
  memory), a cell-level clock's predictions are summed per donor block by block and averaged.

Per cell only small vectors persist: the streamed cohort's own, and 1-2 byte codes of a cell-type
or control column (:mod:`neuroage_utils.data.stream_obs`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from neuroage_utils.clock import models as clock_models
from neuroage_utils.clock.alignment import GeneOverlapWarning, align_genes, feature_rows
from neuroage_utils.clock.clock import POOLED, Clock
from neuroage_utils.clock.columns import check_column, check_control_value, check_filled
from neuroage_utils.data.checks import donor_ages, require_counts
from neuroage_utils.data.cohort import MIN_DONORS, file_sha256, validate_obs
from neuroage_utils.data.features import CHUNK_ROWS, draw_pseudocells
from neuroage_utils.data.stream import load_streamed, per_donor_sample
from neuroage_utils.data.stream_obs import (
    column_codes, column_numbers, count_blocks, gene_names, missing_code, obs_column_names,
)

__all__ = ["PSEUDOCELL_SAMPLE_CELLS", "sample_size", "fit_streamed", "predict_streamed"]

#: Cells a streamed pseudocell clock is fitted on (a per-donor sample; about 400 MB of counts at
#: 2,000 genes and half the values non-zero). The cell-level clock takes ``en_max_cells``.
PSEUDOCELL_SAMPLE_CELLS = 50_000


def sample_size(model: str, settings: dict) -> int | None:
    """Cells a streamed fit of ``model`` reads into memory: None (every cell, summed) for the pseudobulk."""
    if model == "pseudobulk_elastic_net":
        return None
    if model == "pseudocell_elastic_net":
        return PSEUDOCELL_SAMPLE_CELLS
    return int(settings.get("en_max_cells") or clock_models.DEFAULT_SETTINGS["en_max_cells"])


def _label_codes(path, columns, key: str, flag: str, among=None):
    """``(names, codes)`` of a label column, with the in-memory path's checks (over the cells ``among``)."""
    check_column(columns, key, flag)
    names, codes = column_codes(path, key)
    missing = codes == missing_code(codes)
    check_filled(int((missing if among is None else missing & among).sum()), key)
    return names, codes


def _control_mask(path, columns, control_key, control_value):
    """Boolean mask of the control cells (1 byte a cell), or None without a control key."""
    if control_key is None:
        return None
    names, codes = _label_codes(path, columns, control_key, "control-key")
    value = check_control_value(control_key, control_value, names)
    return codes == int(np.flatnonzero(names == value)[0])


def fit_streamed(path, model: str = "pseudobulk_elastic_net", donor_key: str = "donor_id", age_key: str = "age",
                 cell_type_key: str | None = None, control_key: str | None = None, control_value=None,
                 device="cpu", settings: dict | None = None, seed: int = 0,
                 block_rows: int = CHUNK_ROWS) -> Clock:
    """:meth:`Clock.fit` on the .h5ad at ``path`` without loading its matrix (see the module docstring)."""
    settings = clock_models.settings_for(settings)
    clock_models.normalisation_for(model, True)  # an unknown model key before any pass over the file
    columns = obs_column_names(path)
    keep = _control_mask(path, columns, control_key, control_value)
    cohort = load_streamed(path, donor_key, age_key, seed=seed, allow_non_counts=True, block_rows=block_rows)
    codes = cohort.donor_codes
    ids = cohort.donor_table["donor_id"].to_numpy().astype(str)
    donor_age = cohort.donor_table["age"].to_numpy(dtype=float)
    n_kept = cohort.n_cells if keep is None else int(keep.sum())
    if keep is not None:  # the in-memory path checks the donors of the control cells
        present = np.flatnonzero(np.bincount(codes[keep], minlength=len(ids)))
        validate_obs(pd.DataFrame({donor_key: ids[present], age_key: donor_age[present]}), donor_key, age_key,
                     min_donors=MIN_DONORS)
    normalisation = clock_models.normalisation_for(model, cohort.is_counts)
    types, type_codes = (None, None)
    if cell_type_key:
        types, type_codes = _label_codes(path, columns, cell_type_key, "cell-type-key", among=keep)
    genes = np.asarray(cohort.gene_names).astype(str)
    keys = {"donor_key": donor_key, "age_key": age_key, "cell_type_key": cell_type_key,
            "control_key": control_key, "control_value": None if control_value is None else str(control_value)}
    common = dict(keys=keys, settings=settings, seed=seed, device=device, data_sha256=file_sha256(path),
                  data_path=path)
    size = sample_size(model, settings)
    if size is None:
        X, row_codes, row_types, cells = _donor_sums(cohort, keep, type_codes)
        row_types = None if types is None else types[row_types]
        return Clock._fit_rows(model, X, ids[row_codes], donor_age[row_codes], row_types, genes, normalisation,
                               cells=cells, training_extra={"streamed": True, "rows": "summed counts of each donor"
                                                            + (" and cell type" if types is not None else "")},
                               **common)
    mask = np.ones(cohort.n_cells, dtype=bool) if keep is None else keep
    chosen = per_donor_sample(mask, codes, size, seed=seed, per_donor=True)
    per_donor = np.bincount(codes[chosen], minlength=len(ids))
    X = cohort.take(chosen)
    sample = {"cells": int(chosen.sum()), "of_cells": int(n_kept), "max_cells": int(size),
              "per_donor_cap": int(per_donor.max()), "seed": int(seed),
              "how": "every donor capped at the same number of cells, the smallest cap that reaches max_cells "
                     "(donors with fewer keep all theirs), drawn uniformly within each donor "
                     "(neuroage_utils.data.stream.per_donor_sample)"}
    row_codes = codes[chosen]
    row_types = None if types is None else types[type_codes[chosen]]
    return Clock._fit_rows(model, X, ids[row_codes], donor_age[row_codes], row_types, genes, normalisation,
                           training_extra={"streamed": True, "n_cells": int(n_kept), "cell_sample": sample}, **common)


def _donor_sums(cohort, keep, type_codes):
    """``(sums CSR float64, donor code, type code, cells)`` per row: one row per donor (and cell type)
    present among the kept cells, raw counts summed over them (float64: exact for counts)."""
    codes = cohort.donor_codes
    if type_codes is None:
        sums, row_ids = cohort.pseudobulk(keep, normalise=None)  # whole donors: the validation pass's sums
        table = cohort.donor_table["donor_id"].to_numpy().astype(str)
        row_codes = np.searchsorted(table, row_ids)
        cells = np.bincount(codes if keep is None else codes[keep], minlength=len(table))[row_codes]
        return sp.csr_matrix(sums), row_codes, None, cells
    n_types = int(type_codes.max()) + 1
    counts = np.zeros(len(cohort.donor_table) * n_types, dtype=np.int64)
    for a in range(0, cohort.n_cells, 1 << 20):  # combos per block: no 8-byte vector per cell
        b = min(a + (1 << 20), cohort.n_cells)
        group = codes[a:b].astype(np.int64) * n_types + type_codes[a:b]
        counts += np.bincount(group if keep is None else group[keep[a:b]], minlength=len(counts))
    present = np.flatnonzero(counts)
    remap = np.full(len(counts), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    sums = np.zeros((len(present), len(cohort.gene_names)))
    for a, block in cohort.blocks(needed=keep):
        b = a + block.shape[0]
        rows = remap[codes[a:b].astype(np.int64) * n_types + type_codes[a:b]]
        if keep is not None:
            block, rows = block[keep[a:b]], rows[keep[a:b]]
        member = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(present), len(rows)))
        sums += (member @ block.astype(np.float64)).toarray()
    return sp.csr_matrix(sums), present // n_types, present % n_types, counts[present]


# -- predicting ---------------------------------------------------------------------------------------


def _donor_age_table(path, age_key, codes, names):
    """Each donor's age (NaN where unknown), with the in-memory path's one-age-per-donor check."""
    pairs = []
    for a, ages in column_numbers(path, age_key):
        known = np.isfinite(ages)
        pairs.append(pd.DataFrame({"donor": codes[a : a + len(ages)][known], "age": ages[known]}).drop_duplicates())
    pairs = pd.concat(pairs, ignore_index=True).drop_duplicates() if pairs else pd.DataFrame({"donor": [], "age": []})
    out = np.full(len(names), np.nan)
    if len(pairs):
        per = donor_ages(pairs["age"].to_numpy(), names[pairs["donor"].to_numpy(dtype=np.int64)],
                         where=f" in obs['{age_key}']")
        out[np.searchsorted(names, per.index.to_numpy().astype(str))] = per.to_numpy()
    return out


class _Member:
    """One member's running sums over the blocks of a streamed prediction."""

    def __init__(self, clock, name, member, mask_of):
        self.clock, self.name, self.member = clock, name, member
        self.mask_of = mask_of  # (a, b) -> boolean mask of the member's cells among cells a:b
        self.missing = None
        self.warned = False
        self.level = ("pseudobulk" if clock.model == "pseudobulk_elastic_net" else
                      "pseudocell" if clock.model == "pseudocell_elastic_net" else "cell")

    def start(self, donor_codes, names):
        """Present donors and, for pseudocells, the drawn cells (the in-memory draw over these cells)."""
        mask_of, n_donors = self.mask_of, len(names)
        counts = np.zeros(n_donors, dtype=np.int64)
        for a in range(0, len(donor_codes), 1 << 20):
            m = mask_of(a, min(a + (1 << 20), len(donor_codes)))
            counts += np.bincount(donor_codes[a : a + len(m)][m], minlength=n_donors)
        self.counts = counts
        self.present = np.flatnonzero(counts)
        self.remap = np.full(n_donors, -1, dtype=np.int64)
        self.remap[self.present] = np.arange(len(self.present))
        genes = len(self.clock.genes) + (self.member.count_share is not None)
        if self.level == "pseudobulk":
            self.sums = np.zeros((len(self.present), genes))
        elif self.level == "pseudocell":
            extra = self.clock.extra
            cells = np.flatnonzero(np.concatenate([mask_of(a, min(a + (1 << 20), len(donor_codes)))
                                                   for a in range(0, len(donor_codes), 1 << 20)]))
            drawn = draw_pseudocells(names[self.present], self.remap[donor_codes[cells]],
                                     int(extra["cells_per_pseudocell"]), int(extra["n_per_donor"]),
                                     bool(extra["replace"]), int(extra["seed"]), "log_cpm")
            out_rows = np.repeat(np.arange(len(drawn)), drawn.shape[1])
            file_rows = cells[drawn.ravel()]
            order = np.argsort(file_rows, kind="stable")
            self.draw_rows, self.draw_cells, self.n_pseudocells = out_rows[order], file_rows[order], len(drawn)
            self.sums = np.zeros((len(drawn), genes))
        else:
            self.pred_sum = np.zeros(len(self.present))

    def _align(self, block, gene_names_):
        if self.warned:  # the overlap warning once per member, as in memory
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GeneOverlapWarning)
                return align_genes(block, gene_names_, self.clock.genes, self.member.count_share, "the data")
        self.warned = True
        return align_genes(block, gene_names_, self.clock.genes, self.member.count_share, "the data")

    def add(self, a, block, donor_codes, gene_names_):
        mask = self.mask_of(a, a + block.shape[0])
        if self.level == "pseudocell":
            lo, hi = np.searchsorted(self.draw_cells, [a, a + block.shape[0]])
            if hi == lo:
                return
            aligned, self.missing = self._align(block, gene_names_)
            member = sp.csr_matrix((np.ones(hi - lo), (self.draw_rows[lo:hi], self.draw_cells[lo:hi] - a)),
                                   shape=(self.n_pseudocells, block.shape[0]))
            self.sums += (member @ aligned.astype(np.float64)).toarray()
            return
        if not mask.any():
            return
        part = block[mask]
        rows = self.remap[donor_codes[a : a + block.shape[0]][mask]]
        aligned, self.missing = self._align(part, gene_names_)
        if self.level == "pseudobulk":
            member = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))),
                                   shape=(len(self.present), len(rows)))
            self.sums += (member @ aligned.astype(np.float64)).toarray()
        else:
            features, _ = feature_rows(aligned, rows.astype(str), self.clock.normalisation, self.clock.model,
                                       self.clock.extra, self.member.count_share is not None)
            self.pred_sum += np.bincount(rows, weights=self.member.predict_rows(features, self.missing),
                                         minlength=len(self.present))

    def predictions(self, names) -> pd.Series:
        """Per-donor predicted age, indexed by donor id (sorted), as the in-memory path computes it."""
        ids = names[self.present]
        has_rest = self.member.count_share is not None
        if self.level == "cell":
            return pd.Series(self.pred_sum / self.counts[self.present], index=pd.Index(ids))
        labels = np.char.zfill(np.arange(len(self.sums)).astype(str), 12)  # sorted in row order
        rows, _ = feature_rows(sp.csr_matrix(self.sums), labels, self.clock.normalisation, "pseudobulk_elastic_net",
                               {}, has_rest)
        pred = self.member.predict_rows(rows, self.missing)
        owners = ids if self.level == "pseudobulk" else np.repeat(ids, int(self.clock.extra["n_per_donor"]))
        return pd.Series(pred).groupby(owners, sort=True).mean()


def predict_streamed(clock: Clock, path, donor_key: str | None = None, age_key: str | None = None,
                     cell_type_key: str | None = None, control_key: str | None = None, control_value=None,
                     block_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """:meth:`Clock.predict` on the .h5ad at ``path``, streamed: the same table, from every cell."""
    donor_key = donor_key or clock.keys["donor_key"]
    age_key = age_key or clock.keys["age_key"]
    columns = obs_column_names(path)
    names, codes = _label_codes(path, columns, donor_key, "donor-key")
    ages = _donor_age_table(path, age_key, codes, names) if age_key in columns else np.full(len(names), np.nan)
    controls = _control_mask(path, columns, control_key, control_value)
    types, type_codes = (None, None)
    if cell_type_key:
        types, type_codes = _label_codes(path, columns, cell_type_key, "cell-type-key")
    file_genes = gene_names(path)
    states = []
    for name, member in clock.members.items():
        if name == POOLED:
            index = None
        elif types is None or name not in set(types):
            continue
        else:
            index = int(np.flatnonzero(types == name)[0])

        def mask_of(a, b, index=index):
            return np.ones(b - a, dtype=bool) if index is None else type_codes[a:b] == index

        state = _Member(clock, name, member, mask_of)
        state.start(codes, names)
        states.append(state)
    who = f"this clock ({clock.model}, fitted on raw counts)"
    for a, block in count_blocks(path, block_rows):
        if clock.normalisation != "as_given":
            require_counts(block, who)
        for state in states:
            state.add(a, block, codes, file_genes)
    frames = []
    for state in states:
        pred = state.predictions(names)
        ids = names[state.present]
        per_donor = pd.DataFrame({"age": ages[state.present], "n_cells": state.counts[state.present]},
                                 index=pd.Index(ids))
        control_donors = None
        if controls is not None:
            hit = np.zeros(len(names), dtype=bool)
            for a in range(0, len(codes), 1 << 20):
                b = min(a + (1 << 20), len(codes))
                hit[codes[a:b][controls[a:b] & state.mask_of(a, b)]] = True
            control_donors = set(names[hit])
        frames.append(clock._member_table(state.name, state.member, pred, per_donor, control_donors, state.missing))
    table = pd.concat(frames, ignore_index=True)
    return table.drop(columns="cell_type") if cell_type_key is None else table
