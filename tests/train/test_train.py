"""The training loop: device, batches, transforms, schedules, checkpoints and resume."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import SparseStandardScaler, log_normalize
from neuroage_utils.nn.blocks import InputTransform
from neuroage_utils.nn.networks import AgeMLP
from neuroage_utils.train import (
    CellBatches,
    Validation,
    cosine_warm_restarts_lr,
    cyclical_kl_schedule,
    cyclical_kl_weight,
    fit,
    predict_batches,
    resolve_device,
    transformed_stats,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _counts(n=90, g=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(1.0, 2.0, size=(1, g)), size=(n, g)).astype(np.float32)
    X[:, 0] += 1  # no empty cells
    return sp.csr_matrix(X)


def _regression(n=120, g=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, g)).astype(np.float32)
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, (y - y.mean()) / y.std()


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- device ----------------------------------------------------------------------------------------


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DataValidationError, match="no CUDA.*device='cpu'"):
        resolve_device("cuda")


def test_resolve_device_rejects_unknown_names():
    with pytest.raises(DataValidationError, match="unknown device"):
        resolve_device("tpu")


# -- batches ---------------------------------------------------------------------------------------


def test_batches_cover_every_cell_once_and_dense_equals_csr():
    X = _counts(n=103)
    y = np.arange(103, dtype=np.float32)
    dense = CellBatches(X, y, batch_size=25, max_dense_bytes=10**9)
    csr = CellBatches(X, y, batch_size=25, max_dense_bytes=0)
    assert dense.dense and not csr.dense
    seen = []
    for a, b in zip(dense.iterate(torch.Generator().manual_seed(3)), csr.iterate(torch.Generator().manual_seed(3))):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
        rows = a["y"].long().numpy()
        np.testing.assert_array_equal(a["x"].numpy(), X[rows].toarray())  # targets travel with their rows
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(103))  # 103 = 4 * 25 + 3: the 3-cell tail is kept


def test_single_cell_tail_is_skipped_when_shuffling_but_not_in_order():
    X = _counts(n=51)
    b = CellBatches(X, np.zeros(51), batch_size=25)
    assert [len(t["x"]) for t in b.iterate(torch.Generator().manual_seed(0))] == [25, 25]
    assert [len(t["x"]) for t in b.with_options(shuffle=False).iterate()] == [25, 25, 1]


def test_batches_reject_bad_inputs():
    with pytest.raises(DataValidationError, match="NaN"):
        CellBatches(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(DataValidationError, match="one value per cell"):
        CellBatches(np.ones((3, 2)), targets=np.ones(2))


# -- input transform -------------------------------------------------------------------------------


def test_input_transform_matches_log_normalize_and_scaler():
    X = _counts()
    ref_ln = log_normalize(X)
    scaler = SparseStandardScaler().fit(ref_ln)
    t = InputTransform(X.shape[1], target_sum=1e4, log1p=True)
    t.set_scaling(scaler.mean_, scaler.scale_)
    got = t(torch.from_numpy(X.toarray())).numpy()
    np.testing.assert_allclose(got, scaler.transform(ref_ln), rtol=1e-4, atol=1e-4)


def test_streamed_stats_equal_numpy_and_do_not_depend_on_batch_size():
    X = _counts(n=77)
    t = InputTransform(X.shape[1], target_sum=1e4, log1p=True)
    ref = log_normalize(X).toarray().astype(np.float64)
    for bs in (7, 77, 500):
        s = transformed_stats(CellBatches(X, batch_size=bs), t.unscaled)
        np.testing.assert_allclose(s["mean"], ref.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["std"], ref.std(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["max"], ref.max(0), rtol=1e-6)


def test_noise_only_in_training_mode():
    t = InputTransform(5, noise_std=0.5)
    x = torch.zeros(2000, 5)
    t.train()
    noisy = t.add_noise(x)
    assert abs(float(noisy.std()) - 0.5) < 0.02
    t.eval()
    assert torch.equal(t.add_noise(x), x)


# -- schedules -------------------------------------------------------------------------------------


def test_cyclical_kl_weight_values():
    w = cyclical_kl_weight
    assert [w(e) for e in (0, 10, 19)] == [0.0, 0.0, 0.0]
    assert w(20) == pytest.approx(math.expm1(0.5) / math.expm1(5.0))  # (e^{k/10}-1)/(e^k-1), k=5
    assert w(24) == pytest.approx(math.expm1(2.5) / math.expm1(5.0))  # 0.0611: exponential, not linear
    assert w(29) == pytest.approx(1.0)
    assert [w(e) for e in (30, 35, 39)] == [1.0, 1.0, 1.0]
    assert w(40) == 0.0 and w(59) == 0.0  # reset: a 40-epoch cycle
    assert w(64) == w(24)
    rise = [w(e) for e in range(19, 31)]
    assert all(b > a for a, b in zip(rise[:-2], rise[1:-1]))  # strictly rising through the ramp
    assert cyclical_kl_weight(3, 2, 4, 1, rate=0.0) == pytest.approx(0.5)  # k -> 0: linear ramp
    schedule = cyclical_kl_schedule(zero_epochs=1, rise_epochs=1, hold_epochs=1)
    assert [schedule(e) for e in range(4)] == [0.0, 1.0, 1.0, 0.0]


def test_cosine_warm_restart_lr_per_epoch():
    X, y = _regression()
    torch.manual_seed(0)
    module = AgeMLP(X.shape[1], hidden=(8,), dropout=0.0)
    hist = fit(module, CellBatches(X, y, batch_size=40), epochs=9, lr=0.01,
               lr_schedule="cosine_warm_restarts", T_0=4, progress=False)
    lr = hist["lr"].to_numpy()
    assert lr[0] == pytest.approx(0.01)
    assert lr[2] == pytest.approx(0.005)  # half-way through the first period
    assert lr[4] == pytest.approx(0.01) and lr[8] == pytest.approx(0.01)  # warm restarts
    expected = [cosine_warm_restarts_lr(e, 0.01, 4) for e in range(9)]
    np.testing.assert_allclose(lr, expected, rtol=1e-9)


# -- the loop --------------------------------------------------------------------------------------


def test_fit_lowers_the_loss_and_dense_equals_csr_path():
    X, y = _regression()
    runs = []
    for cap in (10**9, 0):
        torch.manual_seed(1)
        module = AgeMLP(X.shape[1], hidden=(16,), dropout=0.0)
        hist = fit(module, CellBatches(sp.csr_matrix(X), y, batch_size=32, max_dense_bytes=cap), epochs=15,
                   lr=0.01, seed=5, progress=False)
        runs.append((hist, _params(module)))
    hist = runs[0][0]
    assert hist["loss"].iloc[-1] < 0.5 * hist["loss"].iloc[0]
    for k, v in runs[0][1].items():
        torch.testing.assert_close(v, runs[1][1][k])


def test_validation_reports_donor_level_mae_in_years():
    X, y = _regression(n=60)
    donors = np.repeat(np.arange(6), 10).astype(str)
    age = np.repeat(np.linspace(-1, 1, 6), 10).astype(np.float32)
    val = Validation(CellBatches(X, age, batch_size=16, shuffle=False), donors, target_mean=50.0, target_std=10.0)
    torch.manual_seed(0)
    module = AgeMLP(X.shape[1], hidden=(4,), dropout=0.0)
    hist = fit(module, CellBatches(X, y, batch_size=20), epochs=2, progress=False, validation=val)
    pred = predict_batches(module, val.batches) * 10 + 50
    per_donor = [abs(pred[donors == d].mean() - (50 + 10 * age[donors == d][0])) for d in np.unique(donors)]
    assert hist["val_mae"].iloc[-1] == pytest.approx(np.mean(per_donor), rel=1e-5)
    assert {"val_loss", "val_mse", "kl_weight", "lr"} <= set(hist.columns)


def test_early_stopping_stops_and_restores_the_best_epoch():
    X, y = _regression(n=80)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(40, X.shape[1])).astype(np.float32)
    val = Validation(CellBatches(noise, rng.normal(size=40), batch_size=40, shuffle=False))
    torch.manual_seed(0)
    module = AgeMLP(X.shape[1], hidden=(32,), dropout=0.0)
    hist = fit(module, CellBatches(X, y, batch_size=16), epochs=200, lr=0.05, validation=val,
               early_stopping_patience=3, progress=False)
    assert len(hist) < 200 and hist.attrs["stopped_early"]
    best = hist.attrs["best_epoch"]
    assert hist["val_mae"].iloc[best] == hist["val_mae"].min()
    assert val.evaluate(module, 1.0)["val_mae"] == pytest.approx(hist["val_mae"].min(), rel=1e-5)


def test_diverging_loss_raises():
    X, y = _regression()
    module = AgeMLP(X.shape[1], hidden=(4,), dropout=0.0)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(module, CellBatches(X, y * 1e30, batch_size=40), epochs=3, lr=1e3, progress=False)


# -- checkpoints -----------------------------------------------------------------------------------


def _train(path, epochs, crash_at_call=None, **kw):
    X, y = _regression()
    torch.manual_seed(0)
    module = AgeMLP(X.shape[1], hidden=(16,), dropout=0.3)  # dropout: the RNG state must be restored too
    if crash_at_call is not None:
        calls = {"n": 0}
        original = module.loss

        def crashing_loss(batch, kl_weight):
            calls["n"] += 1
            if calls["n"] == crash_at_call:
                raise KeyboardInterrupt("simulated crash")
            return original(batch, kl_weight)

        module.loss = crashing_loss
    hist = fit(module, CellBatches(X, y, batch_size=32), epochs=epochs, lr=0.01,
               lr_schedule="cosine_warm_restarts", T_0=4, kl_schedule=cyclical_kl_schedule(1, 2, 1),
               checkpoint_path=path, seed=7, progress=False, **kw)
    return module, hist


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    straight, hist_straight = _train(None, 6)
    path = tmp_path / "run.pt"
    # 4 batches per epoch: the crash hits epoch 4 (0-based 3), after the checkpoint of epoch 3.
    with pytest.raises(KeyboardInterrupt):
        _train(path, 6, crash_at_call=4 * 3 + 2, checkpoint_every=3)
    assert torch.load(path, weights_only=True)["epochs_done"] == 3
    resumed, hist_resumed = _train(path, 6, checkpoint_every=3)
    for k, v in _params(straight).items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    cols = ["epoch", "loss", "lr", "kl_weight"]
    assert hist_resumed[cols].equals(hist_straight[cols])


def test_finished_run_can_be_extended(tmp_path):
    straight, _ = _train(None, 6)
    path = tmp_path / "run.pt"
    _train(path, 3, checkpoint_every=100)  # the final epoch is always saved
    extended, hist = _train(path, 6)
    assert list(hist["epoch"]) == list(range(6))
    for k, v in _params(straight).items():
        torch.testing.assert_close(extended.state_dict()[k], v, rtol=0, atol=0)


def test_checkpoint_of_another_configuration_is_ignored(tmp_path):
    path = tmp_path / "run.pt"
    _train(path, 2)
    X, y = _regression()
    module = AgeMLP(X.shape[1], hidden=(16,), dropout=0.3)
    with pytest.warns(UserWarning, match="different configuration"):
        hist = fit(module, CellBatches(X, y, batch_size=32), epochs=2, lr=0.02, checkpoint_path=path,
                   progress=False)  # lr changed
    assert len(hist) == 2 and hist["lr"].iloc[0] == 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and now the new one is resumed silently
        fit(module, CellBatches(X, y, batch_size=32), epochs=2, lr=0.02, checkpoint_path=path, progress=False)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    _train(path, 2)
    before = path.read_bytes()

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _train(path, 4, checkpoint_every=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


def test_unreadable_checkpoint_is_ignored(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        _, hist = _train(path, 2)
    assert len(hist) == 2


def test_checkpoint_of_a_longer_run_is_not_resumed_into_a_shorter_one(tmp_path):
    """Re-running the 2-epoch row after the 4-epoch row must not return the 4-epoch model."""
    import warnings as _w

    from neuroage_utils.models.mlp import MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    ages = rng.uniform(20, 90, 64)
    ckpt = tmp_path / "m.pt"
    kw = dict(hidden=(8,), batch_size=16, device="cpu", seed=0, progress=False, checkpoint_every=1)
    short = MLPRegressor(epochs=2, **kw).fit(X, ages)
    MLPRegressor(epochs=4, checkpoint_path=ckpt, **kw).fit(X, ages)
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        again = MLPRegressor(epochs=2, checkpoint_path=ckpt, **kw).fit(X, ages)
    assert any("training from scratch" in str(w.message) for w in caught)
    assert len(again.history_) == 2
    np.testing.assert_allclose(again.predict(X), short.predict(X), rtol=1e-5)


def test_cells_per_epoch_draws_a_fresh_subset_each_epoch_and_sets_the_steps():
    from neuroage_utils.train.batches import CellBatches

    X = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    b = CellBatches(X, np.zeros(200), batch_size=8, shuffle=True, cells_per_epoch=32)
    assert len(b) == 4 and "cells_per_epoch" in b.fingerprint()
    g = torch.Generator().manual_seed(0)
    first = torch.cat([x["x"][:, 0] for x in b.iterate(g)])
    second = torch.cat([x["x"][:, 0] for x in b.iterate(g)])
    assert len(first) == len(second) == 32 and set(first.tolist()) != set(second.tolist())
    # without it every cell, and the identity of other runs is unchanged
    assert "cells_per_epoch" not in CellBatches(X, np.zeros(200), batch_size=8).fingerprint()


def test_monitor_every_reads_the_curves_every_k_epochs_and_at_the_end():
    from neuroage_utils.models.vae import VAEAgeRegressor

    rng = np.random.default_rng(0)
    X = rng.poisson(2, (60, 20)).astype(np.float32)
    donors = np.repeat([f"d{i}" for i in range(6)], 10)
    ages = np.repeat(np.linspace(30, 80, 6), 10)
    m = VAEAgeRegressor("poisson", hidden=(8,), latent=3, age_hidden=(4,), epochs=5, batch_size=8, seed=0,
                        progress=False, cells_per_epoch=16, monitor_every=2)
    m.fit(X, ages, donors=donors, monitors={"train": (X, ages, donors)})
    read = m.history_["train_mae"].notna().tolist()
    assert read == [False, True, False, True, True]


def test_heap_reuse_serves_large_tensors_from_the_heap_and_restores_glibc():
    from neuroage_utils.data.heap import glibc as _glibc
    from neuroage_utils.train.device import heap_reuse

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc with mallinfo2")
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def mmapped_while_alive() -> int:  # mmapped chunks while a 64 MiB tensor (above any mmap threshold) lives
        t = torch.empty(16 * 1024 * 1024)
        n = libc.mallinfo2().hblks
        del t
        return n

    before = libc.mallinfo2().hblks
    with heap_reuse(torch.device("cpu")):
        assert mmapped_while_alive() == before  # from the heap, not a fresh mmap
    assert mmapped_while_alive() == before + 1  # glibc's mmap is back after the block
    with heap_reuse(torch.device("meta")):  # not a CPU: nothing changes
        assert mmapped_while_alive() == before + 1
