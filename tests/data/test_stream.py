"""The streamed cohort (neuroage_utils.data.stream) against the in-memory path: same checks, same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from neuroage_utils.data import features
from neuroage_utils.data.cohort import load_cohort
from neuroage_utils.data.simulate import write_simulated_h5ad
from neuroage_utils.data.stream import (
    load_streamed,
    matrix_size,
    per_donor_sample,
    should_stream,
    streamed_pseudobulk,
)
from neuroage_utils.errors import DataValidationError

from tests.conftest import make_adata

BLOCK = 256  # several blocks on a ~1,900-cell cohort, unaligned with donors


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "sim.h5ad"
    return write_simulated_h5ad(path, cell_fraction=0.01, n_genes=120, seed=2, min_cells_per_donor=10)


@pytest.fixture(scope="module")
def both(sim_path):
    return load_cohort(sim_path), load_streamed(sim_path, block_rows=BLOCK)


def _int64_copy(src, dst):
    """The same file with int64 indptr and indices (as anndata writes once the non-zeros pass 2^31)."""
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for name in ("indptr", "indices"):
            values = f["X"][name][:].astype(np.int64)
            del f["X"][name]
            f["X"].create_dataset(name, data=values)
    return dst


def test_cohort_tables_and_library_sizes_match(both):
    memory, streamed = both
    assert streamed.n_cells == memory.n_cells and streamed.n_genes == memory.n_genes
    np.testing.assert_array_equal(streamed.donors, memory.donors)
    np.testing.assert_array_equal(streamed.split, memory.split)
    np.testing.assert_array_equal(streamed.ages, memory.ages)
    table = memory.donor_table
    assert list(streamed.donor_table.columns) == list(table.columns)
    for column in table.columns:
        np.testing.assert_array_equal(streamed.donor_table[column].to_numpy(), table[column].to_numpy())
    assert streamed.split_source == memory.split_source and streamed.is_counts
    np.testing.assert_array_equal(streamed.umis, np.asarray(memory.X.sum(axis=1, dtype=np.float64)).ravel())
    np.testing.assert_array_equal(streamed.genes_detected, np.diff(memory.X.indptr))
    np.testing.assert_array_equal(streamed.gene_names, memory.gene_names)
    assert streamed.nnz == memory.X.nnz


def test_normalised_blocks_are_log_normalize_bit_for_bit(both):
    memory, streamed = both
    blocks = sp.vstack([b for _, b in streamed.blocks(normalise=True)], format="csr")
    expected = memory.normalized()
    assert blocks.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(blocks.indptr, expected.indptr)
    np.testing.assert_array_equal(blocks.data, expected.data)


def test_moments_on_training_donors(both, sim_path):
    memory, streamed = both
    train = memory.mask("train")
    expected = features.column_moments(memory.normalized(), rows=train)
    got = streamed.column_moments(rows=train)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # in the in-memory path's own blocks (8,192 rows) the sums are the same sums: bit for bit
    aligned = load_streamed(sim_path).column_moments(rows=train)
    for a, b in zip(aligned, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("normalise", [None, "log_cpm", "cpm"])
@pytest.mark.parametrize("donor_sums_gb", [0.5, 0.0])  # sums kept from the validation pass, or summed again
def test_pseudobulk_equals_the_in_memory_sums(both, sim_path, normalise, donor_sums_gb):
    memory, _ = both
    streamed = load_streamed(sim_path, block_rows=BLOCK, donor_sums_gb=donor_sums_gb)
    assert (streamed._donor_sums is not None) == (donor_sums_gb > 0)
    rows = memory.mask("train", "val")
    expected, ids = features.pseudobulk(memory.X[rows], memory.donors[rows], normalise)
    got, got_ids = streamed.pseudobulk(rows, normalise)
    np.testing.assert_array_equal(got_ids, ids)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got.toarray(), expected.toarray())  # bit for bit
    # part of a donor's cells: summed from the file
    part = rows & (np.arange(memory.n_cells) % 3 == 0)
    expected, ids = features.pseudobulk(memory.X[part], memory.donors[part], normalise)
    got, got_ids = streamed.pseudobulk(part, normalise)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got.toarray(), expected.toarray())


def test_pseudocells_draw_the_same_cells(both):
    memory, streamed = both
    rows = memory.mask("train")
    kwargs = dict(cells_per_pseudocell=7, n_per_donor=4, seed=3, normalise=None)
    expected, owners = features.pseudocells(memory.X[rows], memory.donors[rows], **kwargs)
    got, got_owners = streamed.pseudocells(rows, **kwargs)
    np.testing.assert_array_equal(got_owners, owners)
    np.testing.assert_array_equal(got.toarray(), expected.toarray())


def test_cell_sample_is_gathered_in_one_pass(both):
    memory, streamed = both
    rows = memory.mask("train")
    sample = per_donor_sample(rows, streamed.donor_codes, 500, seed=1)
    assert sample.sum() == 500 and not (sample & ~rows).any()
    got = streamed.take(sample, normalise=True)
    np.testing.assert_array_equal(got.toarray(), memory.normalized()[sample].toarray())
    # per donor: every donor capped, none dominating
    capped = per_donor_sample(rows, streamed.donor_codes, 300, seed=1, per_donor=True)
    per = np.bincount(streamed.donor_codes[capped])
    sizes = np.bincount(streamed.donor_codes[rows])
    cap = per.max()  # the one cap: donors below it keep every cell
    assert np.array_equal(per[sizes > 0], np.minimum(sizes[sizes > 0], cap)) and not (capped & ~rows).any()
    assert 300 <= capped.sum() < 300 + len(sizes)


def test_int64_indices_stream_the_same(both, sim_path, tmp_path):
    memory, _ = both
    path = _int64_copy(sim_path, tmp_path / "int64.h5ad")
    import h5py

    with h5py.File(path) as f:
        assert f["X"]["indptr"].dtype == np.int64
    streamed = load_streamed(path, block_rows=BLOCK)
    profiles, ids = streamed.pseudobulk(normalise=None)
    expected, expected_ids = features.pseudobulk(memory.X, memory.donors, None)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(profiles.toarray(), expected.toarray())
    block = next(streamed.blocks())[1]  # a block's own offsets fit int32
    assert block.indptr.dtype == np.int32


def test_streamed_pseudobulk_function(both, sim_path):
    memory, _ = both
    profiles, ids, ages = streamed_pseudobulk(sim_path, splits=("train", "val"), block_rows=BLOCK)
    rows = memory.mask("train", "val")
    expected, expected_ids = features.pseudobulk(memory.X[rows], memory.donors[rows])
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(profiles.toarray(), expected.toarray())
    table = memory.donor_table.set_index("donor_id")
    np.testing.assert_array_equal(ages, table.loc[ids, "age"].to_numpy(dtype=float))


def test_should_stream_by_size_and_flag(sim_path):
    size = matrix_size(sim_path)
    assert size["nnz"] > 0 and size["n_genes"] == 120
    assert should_stream(sim_path) is False  # small: in memory
    assert should_stream(sim_path, stream=True) is True


# -- validation: the same one-line messages as the in-memory path ------------------------------------


def _both_raise(path, **kwargs):
    messages = []
    for load, extra in ((load_cohort, {}), (load_streamed, {"block_rows": 16})):  # the bad values in other blocks
        with pytest.raises(DataValidationError) as info:
            load(path, **kwargs, **extra)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    return messages[0]


def _edited(adata, values):
    X = adata.X.toarray()
    for (i, j), v in values.items():
        X[i, j] = v
    adata.X = sp.csr_matrix(X)
    return adata


@pytest.mark.parametrize(
    "edit, fragment",
    [
        ({(40, 3): np.nan}, "NaN or infinite"),
        ({(100, 2): -3.0, (5, 1): -1.0}, "negative values (min -3)"),
        ({(150, 4): 2.5}, "non-integer values (e.g. 2.5)"),
    ],
)
def test_bad_values_give_the_in_memory_message(h5ad_path, edit, fragment):
    adata = _edited(make_adata(n_donors=12, cells_per_donor=15, n_genes=10), edit)
    path = h5ad_path(adata)
    assert fragment in _both_raise(path)


def test_bad_donors_and_ages_give_the_in_memory_message(h5ad_path):
    adata = make_adata(n_donors=12, cells_per_donor=5, n_genes=6)
    ages = adata.obs["age"].to_numpy().copy()
    ages[7] += 1.0
    adata.obs["age"] = ages
    assert "has more than one age" in _both_raise(h5ad_path(adata, "ages.h5ad"))
    adata = make_adata(n_donors=5, cells_per_donor=5, n_genes=6)
    assert "only 5 donors" in _both_raise(h5ad_path(adata, "few.h5ad"))
    for name, value, fragment in (("neg", -4.0, "negative age (-4)"), ("nan", np.nan, "missing age")):
        adata = make_adata(n_donors=12, cells_per_donor=5, n_genes=6)
        adata.obs.loc[adata.obs["donor_id"] == "D03", "age"] = value
        assert fragment in _both_raise(h5ad_path(adata, f"{name}.h5ad"))
    adata = make_adata(n_donors=12, cells_per_donor=5, n_genes=6)
    assert "no age column 'years'" in _both_raise(h5ad_path(adata, "key.h5ad"), age_key="years")


def test_non_counts_allowed_when_asked(h5ad_path):
    path = h5ad_path(make_adata(n_donors=12, cells_per_donor=5, n_genes=6, counts=False))
    assert load_streamed(path, allow_non_counts=True).is_counts is False
    assert load_cohort(path, allow_non_counts=True).is_counts is False


# -- the clocks and the chapter on a streamed cohort -------------------------------------------------


def test_streamed_clocks_equal_the_in_memory_clocks(both):
    from neuroage_utils.models.linear import (fit_pseudobulk_elastic_net, fit_pseudocell_elastic_net,
                                              fit_streamed_pseudobulk_elastic_net,
                                              fit_streamed_pseudocell_elastic_net, predict_streamed_donors)

    memory, streamed = both
    rows, test = memory.mask("train", "val"), memory.mask("test")
    grid = dict(l1_ratios=(0.5,), n_alphas=5, n_splits=3, seed=0)
    pb = fit_pseudobulk_elastic_net(memory.X[rows], memory.ages[rows], memory.donors[rows], **grid)
    spb = fit_streamed_pseudobulk_elastic_net(streamed, ("train", "val"), **grid)
    np.testing.assert_array_equal(spb.coef_, pb.coef_)
    assert spb.alpha_ == pb.alpha_
    expected = pb.predict_donors(memory.X[test], memory.donors[test])
    got = predict_streamed_donors(spb, streamed, "test")
    assert got.index.equals(expected.index) and np.array_equal(got.to_numpy(), expected.to_numpy())
    cells = dict(cells_per_pseudocell=5, n_per_donor=3)
    pc = fit_pseudocell_elastic_net(memory.X[rows], memory.ages[rows], memory.donors[rows], **cells, **grid)
    spc = fit_streamed_pseudocell_elastic_net(streamed, ("train", "val"), **cells, **grid)
    np.testing.assert_array_equal(spc.coef_, pc.coef_)
    expected = pc.predict_donors(memory.X[test], memory.donors[test])
    np.testing.assert_array_equal(predict_streamed_donors(spc, streamed, "test").to_numpy(), expected.to_numpy())


def test_chapter_streams_when_asked_and_records_it(sim_path, tmp_path):
    import json

    from neuroage_utils.chapters.chapter import Chapter
    from neuroage_utils.data.cohort import library_stats

    chapter = Chapter("data", data_path=str(sim_path), profile="smoke", device="cpu", out_dir=str(tmp_path),
                      stream=True)
    full = chapter.stream.n_cells
    assert chapter.stream is not None and chapter.data["n_cells"] == full
    # the cell-level models get a per-donor sample (smoke: 3,000 cells; this cohort is smaller: all)
    assert chapter.cohort.n_cells == min(full, 3000) and chapter.cohort.X.shape[0] == chapter.cohort.n_cells
    assert "streamed from the file" in chapter.data_summary()
    assert chapter.simulated  # uns read from the file without its matrix
    qc = library_stats(chapter.stream)
    assert len(qc["umis"]) == full
    chapter.add_null("test")
    params = json.loads(chapter.finish().read_text())["params"]
    assert params["streamed"] is True and params["stream_requested"] is True
    small = Chapter("data", data_path=str(sim_path), profile="smoke", device="cpu", out_dir=str(tmp_path))
    assert small.stream is None and small.stream_params["streamed"] is False  # small files load by default


def test_sample_cohort_caps_cells_per_donor(both):
    _, streamed = both
    sample = streamed.sample_cohort(400, seed=0)
    assert 400 <= sample.n_cells < 400 + streamed.n_donors and sample.X.shape == (sample.n_cells, streamed.n_genes)
    per = sample.adata.obs.groupby(streamed.donor_key, observed=True).size()
    assert len(per) == streamed.n_donors
    assert "simulation" in sample.adata.uns


# -- memory: what a streamed cohort holds per cell ---------------------------------------------------


def test_per_cell_state_is_a_code_and_a_float32(both):
    """Held per cell: the donor code (1-2 bytes) and the library size (4 bytes); everything else per
    cell (ages, splits, offsets, detected genes) is read or computed when asked."""
    _, streamed = both
    per_cell = {name: value for name, value in vars(streamed).items()
                if isinstance(value, np.ndarray) and len(value) == streamed.n_cells}
    assert set(per_cell) == {"donor_codes", "umis"}
    assert streamed.donor_codes.dtype == np.uint8 and streamed.umis.dtype == np.float32
    assert sum(v.nbytes for v in per_cell.values()) <= 5 * streamed.n_cells


def _rewrite_donor_column(path, encode):
    """Store obs['donor_id'] another way anndata can (a string array, integers) with h5py."""
    import h5py

    with h5py.File(path, "r+") as f:
        node = f["obs"]["donor_id"]
        names = node["categories"][:].astype(str)[node["codes"][:]]
        del f["obs"]["donor_id"]
        if encode == "string":
            data = f["obs"].create_dataset("donor_id", data=names.astype(object), dtype=h5py.string_dtype())
            data.attrs["encoding-type"], data.attrs["encoding-version"] = "string-array", "0.2.0"
        else:
            data = f["obs"].create_dataset("donor_id", data=np.array([int(n[1:]) for n in names]))
            data.attrs["encoding-type"], data.attrs["encoding-version"] = "array", "0.2.0"
    return path


@pytest.mark.parametrize("encode", ["string", "integer"])
def test_donor_columns_stored_as_strings_or_numbers(h5ad_path, encode):
    adata = make_adata(n_donors=12, cells_per_donor=7, n_genes=6)
    path = _rewrite_donor_column(h5ad_path(adata, f"{encode}.h5ad"), encode)
    memory, streamed = load_cohort(path), load_streamed(path, block_rows=10)
    np.testing.assert_array_equal(streamed.donors, memory.donors)
    for column in memory.donor_table.columns:
        np.testing.assert_array_equal(streamed.donor_table[column].to_numpy(), memory.donor_table[column].to_numpy())


def _per_donor_sample_reference(mask, codes, max_cells, seed):
    """The per-donor cap written plainly (index arrays per cell): what the streamed one must equal."""
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(mask)
    own = codes[chosen]
    sizes = np.bincount(own)
    present = np.flatnonzero(sizes)
    caps = np.arange(1, sizes.max() + 1)
    cap = int(caps[np.searchsorted(np.minimum(sizes[present][None, :], caps[:, None]).sum(axis=1), max_cells)])
    out = np.zeros_like(mask)
    for cells in np.split(chosen[np.argsort(own, kind="stable")], np.cumsum(sizes[present])[:-1]):
        out[cells if len(cells) <= cap else rng.choice(cells, cap, replace=False)] = True
    return out


@pytest.mark.parametrize("max_cells", [50, 4_000, 20_000])
def test_per_donor_sample_equals_the_plain_draw(max_cells):
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 40, 30_000).astype(np.uint8)  # donors interleaved, not in blocks
    mask = rng.random(30_000) < 0.7
    got = per_donor_sample(mask, codes, max_cells, seed=3, per_donor=True)
    np.testing.assert_array_equal(got, _per_donor_sample_reference(mask, codes, max_cells, seed=3))
