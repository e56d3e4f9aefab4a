"""The GPU path, checked on a CPU: device-resident CSR batches, mixed precision off by default,
the factorisation backend chosen per device, and what results files record.

The device-resident path is forced on the CPU (``device_csr=True``) so the same code that runs on a
GPU is compared, bit for bit, with the host path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from neuroage_utils.models import device_linalg
from neuroage_utils.nn.blocks import InputTransform
from neuroage_utils.models.mlp import MLPRegressor
from neuroage_utils.nn.networks import AgeVAE
from neuroage_utils.models.nmf import fit_nmf
from neuroage_utils.models.svd import fit_svd
from neuroage_utils.models.vae import VAEAgeRegressor
from neuroage_utils.chapters.chapter import Chapter
from neuroage_utils.train import CellBatches
from neuroage_utils.train.batches import densify_rows, device_csr_fits
from neuroage_utils.train.device import amp_active, autocast, native_bf16

from .conftest import make_adata

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent


def _counts(n=203, g=37, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(0.3, 2.0, size=(n, g))).astype(np.float32)
    X[7] = 0  # an empty cell
    X[11, :] = rng.poisson(5.0, size=g)  # a full row: the longest row sets the padding
    return sp.csr_matrix(X)


def test_densify_rows_equals_scipy_rows():
    X = _counts()
    crow = torch.from_numpy(X.indptr.astype(np.int64))
    col = torch.from_numpy(X.indices.astype(np.int32))
    val = torch.from_numpy(X.data)
    idx = torch.tensor([0, 7, 11, 11, 50, 202])
    dense = densify_rows(crow, col, val, idx, X.shape[1], int(np.diff(X.indptr).max()))
    assert np.array_equal(dense.numpy(), X[idx.numpy()].toarray())


@pytest.mark.parametrize("shuffle", [True, False])
def test_device_csr_batches_equal_host_and_dense_batches(shuffle):
    X = _counts()
    rng = np.random.default_rng(1)
    y, lib, extra = rng.normal(size=203), rng.uniform(1, 9, 203), rng.normal(size=203)
    common = dict(targets=y, library_size=lib, extras={"log_factorial": extra}, batch_size=50, shuffle=shuffle)
    host = CellBatches(X, max_dense_bytes=0, device_csr=False, **common)
    dev = CellBatches(X, max_dense_bytes=0, device_csr=True, **common)
    dense = CellBatches(X, **common)
    assert (host.storage, dev.storage, dense.storage) == ("host", "device_csr", "dense")
    gens = [torch.Generator().manual_seed(5) for _ in range(3)]
    for _epoch in range(3):  # several epochs: the generators must stay in step too
        batches = list(zip(host.iterate(gens[0]), dev.iterate(gens[1]), dense.iterate(gens[2]), strict=True))
        assert batches
        for a, b, c in batches:
            assert a.keys() == b.keys() == c.keys()
            for key in a:
                assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key
    assert torch.equal(gens[0].get_state(), gens[1].get_state())


def test_device_csr_is_chosen_only_for_a_gpu_with_room():
    X = _counts()
    assert not device_csr_fits(X, torch.device("cpu"), 64)
    assert not device_csr_fits(X.toarray(), torch.device("cuda"), 64)  # dense input: never
    assert CellBatches(X, max_dense_bytes=0).storage == "host"  # default on a CPU: today's path


def test_mlp_trained_on_device_csr_equals_the_host_path():
    X = _counts(n=160, g=25, seed=2)
    ages = np.repeat(np.linspace(20, 80, 16), 10)
    donors = np.repeat([f"D{i}" for i in range(16)], 10)
    preds = []
    for device_csr in (False, True):
        model = MLPRegressor(hidden=(8,), epochs=3, batch_size=32, device="cpu", progress=False,
                             max_dense_bytes=0)
        model.device_csr = device_csr
        model.fit(X, ages, donors=donors, validation=(X[:40], ages[:40], donors[:40]))
        preds.append((model.predict(X), model.history_["val_mae"].to_numpy()))
    assert np.array_equal(preds[0][0], preds[1][0]) and np.array_equal(preds[0][1], preds[1][1])


def _amp_runs(X, ages):
    runs = []
    for amp in (False, True):
        model = VAEAgeRegressor(likelihood="poisson", hidden=(8,), latent=3, age_hidden=(4,), epochs=2,
                                batch_size=32, device="cpu", progress=False, amp=amp)
        model.fit(X, ages)
        runs.append((model.amp_, model.predict(X)))
    return runs


def test_amp_stays_off_without_native_bf16_and_changes_nothing_there(monkeypatch):
    import neuroage_utils.train.device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    X, ages = _counts(n=120, g=20, seed=3), np.repeat(np.linspace(20, 80, 12), 10)
    (amp_off, off), (amp_on, on) = _amp_runs(X, ages)
    assert amp_off is False and amp_on is False  # asked for or not, autocast never runs
    assert np.array_equal(off, on)
    assert not amp_active(True, torch.device("cpu"))
    with autocast(True, torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_amp_runs_bf16_autocast_where_the_cpu_has_it(monkeypatch):
    import neuroage_utils.train.device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    assert amp_active(True, torch.device("cpu")) and not amp_active(False, torch.device("cpu"))
    with autocast(True, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    X, ages = _counts(n=120, g=20, seed=3), np.repeat(np.linspace(20, 80, 12), 10)
    (amp_off, off), (amp_on, on) = _amp_runs(X, ages)
    assert amp_off is False and amp_on is True
    assert np.isfinite(on).all() and not np.array_equal(off, on)  # bf16 products: close, not identical
    assert np.abs(on - off).max() < 0.5 * np.abs(off).max() + 1.0


def test_native_bf16_reads_the_hardware():
    assert isinstance(native_bf16(torch.device("cpu")), bool)
    if not torch.cuda.is_available():
        assert native_bf16(torch.device("meta")) is False


def test_vae_likelihood_and_kl_stay_float32_under_autocast():
    torch.manual_seed(0)
    module = AgeVAE(20, hidden=(16,), latent=4, age_hidden=(4,), likelihood="poisson").eval()
    x = torch.from_numpy(_counts(n=32, g=20).toarray())
    batch = {"x": x, "y": torch.zeros(32)}
    with torch.no_grad():
        reference = module.loss(batch, 1.0)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # bf16 matmuls, as on a GPU
            mixed = module.loss(batch, 1.0)
    for key in ("reconstruction", "kl", "loss"):
        assert mixed[key].dtype == torch.float32
        assert torch.isfinite(mixed[key])
        assert float(mixed[key]) == pytest.approx(float(reference[key]), rel=0.05, abs=1e-3)


def test_input_transform_flags_follow_a_loaded_state():
    noisy = InputTransform(3, noise_std=0.5)
    noisy.set_scaling([1.0, 2.0, 3.0], [1.0, 1.0, 2.0])
    fresh = InputTransform(3)
    assert not fresh._noise_on and not fresh._is_scaled
    fresh.load_state_dict(noisy.state_dict())  # a checkpoint resumed: the Python mirrors follow
    assert fresh._noise_on and fresh._is_scaled
    x = torch.ones(4, 3)
    assert torch.equal(fresh(x), noisy(x))
    fresh.train()
    assert not torch.equal(fresh.add_noise(x), x)
    fresh.eval()
    assert torch.equal(fresh.add_noise(x), x)


def test_linalg_backend_auto_is_the_reference_on_a_cpu_except_where_torch_is_faster():
    assert device_linalg.choose_backend("auto", torch.device("cpu")) == "sklearn"
    assert device_linalg.choose_backend("auto", torch.device("cpu"), "svd") == "sklearn"
    assert device_linalg.choose_backend("auto", torch.device("cpu"), "nmf") == "torch"  # HALS: faster on a CPU too
    assert device_linalg.choose_backend("auto", torch.device("cuda")) == "torch"
    assert device_linalg.choose_backend("sklearn", torch.device("cuda")) == "sklearn"
    with pytest.raises(Exception, match="linalg_backend"):
        device_linalg.choose_backend("magic", "cpu")
    X = _counts(n=80, g=30, seed=4)
    auto = fit_nmf(X, 4, max_iter=50, backend="auto", device="cpu")
    hals = fit_nmf(X, 4, max_iter=50, backend="torch", device="cpu")
    assert auto.backend == hals.backend == "torch"  # NMF: HALS on a CPU too (faster, objective as low)
    assert np.array_equal(auto.components_, hals.components_)
    assert fit_nmf(X, 4, max_iter=50).backend == "sklearn"  # the function's own default stays the reference
    Xn = np.log1p(X.toarray())
    svd_auto, svd_ref = fit_svd(Xn, 5, backend="auto", device="cpu"), fit_svd(Xn, 5)
    assert svd_auto.backend == svd_ref.backend == "arpack"
    assert np.array_equal(svd_auto.components_, svd_ref.components_)
    assert fit_svd(Xn, 5, backend="sklearn").backend == "arpack"


def test_results_record_device_amp_and_backend(tmp_path, h5ad_path):
    path = h5ad_path(make_adata(n_donors=12, cells_per_donor=6, n_genes=10))
    chapter = Chapter("nmf", data_path=str(path), profile="paper", device="cpu", out_dir=str(tmp_path))
    runs_amp = native_bf16(torch.device("cpu"))  # the paper profile asks; a CPU runs it with AMX or a fast AVX512-BF16
    assert chapter.amp_requested is True and chapter.amp is runs_amp
    assert chapter.linalg("svd") == {"backend": "sklearn", "device": torch.device("cpu")}
    assert chapter.linalg() == {"backend": "torch", "device": torch.device("cpu")}  # the chapter's own step: NMF
    chapter.add_null("test")
    params = json.loads(chapter.finish().read_text())["params"]
    assert params["device"] == "cpu" and params["amp"] is runs_amp and params["amp_requested"] is True
    assert params["linalg_backend_used"] == {"svd": "sklearn", "nmf": "torch"}
    off = Chapter("nmf", data_path=str(path), profile="paper", device="cpu", out_dir=str(tmp_path), amp=False)
    assert off.amp_requested is False and off.params["amp"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_chapter_run_with_device_cuda_fails_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "neuroage_utils.run", "--profile", "smoke", "--only", "svd",
                           "--device", "cuda", "--no-book", "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device 'cuda' was requested")
    assert not (tmp_path / "out" / "results").exists()


def test_torch_nmf_transforms_on_its_device_as_well_as_sklearn():
    from sklearn.decomposition import NMF

    X = _counts(n=150, g=30, seed=6)
    model = fit_nmf(X, 4, max_iter=300, backend="torch", device="cpu")
    assert model.backend == "torch" and model.device == "cpu"
    new = _counts(n=40, g=30, seed=7)
    W = model.transform(new)
    reference = NMF(4, init="custom", max_iter=300)
    reference.fit(X.toarray(), W=np.full((150, 4), 0.1, np.float32), H=model.components_.astype(np.float32))
    reference.components_ = model.components_  # scikit-learn's transform with the same programmes
    W_ref = reference.transform(new.toarray())
    err = np.linalg.norm(new.toarray() - W @ model.components_)
    err_ref = np.linalg.norm(new.toarray() - W_ref @ model.components_)
    assert W.shape == (40, 4) and W.min() >= 0 and err <= err_ref * 1.01



def test_an_empty_cell_is_log_normalised_to_zeros_not_nan():
    transform = InputTransform(3, target_sum=1e4, log1p=True)
    out = transform(torch.tensor([[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]))
    assert torch.equal(out[0], torch.zeros(3)) and torch.isfinite(out).all()
    assert out[1, 0] == pytest.approx(np.log1p(2500.0)) and out[1, 2] == 0


def test_cpu_bf16_is_decided_from_the_flags_and_one_measured_product(monkeypatch):
    """AMX: bf16. AVX512-BF16: bf16 only where a bf16 product measured beats float32 by BF16_MIN_SPEEDUP. Neither:
    float32 without measuring. The decision is written to the environment (workers and ranks inherit it), and
    the variable decides by hand."""
    import neuroage_utils.train.device as device_module

    cpu = torch.device("cpu")

    def decide(flags, speedup):
        monkeypatch.delenv(device_module.BF16_ENV, raising=False)
        monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda: flags)
        calls = []
        monkeypatch.setattr(device_module, "measured_bf16_speedup", lambda: calls.append(1) or speedup)
        decided = native_bf16(cpu)
        assert os.environ[device_module.BF16_ENV] == ("1" if decided else "0")
        assert native_bf16(cpu) is decided and len(calls) <= 1  # measured once, then read back
        return decided, len(calls)

    assert decide({"amx": True, "avx512_bf16": True}, 0.5) == (True, 0)
    assert decide({"amx": False, "avx512_bf16": True}, 2.4) == (True, 1)
    assert decide({"amx": False, "avx512_bf16": True}, 1.1) == (False, 1)
    assert decide({"amx": False, "avx512_bf16": False}, 9.0) == (False, 0)
    monkeypatch.setenv(device_module.BF16_ENV, "0")
    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda: {"amx": True, "avx512_bf16": True})
    assert native_bf16(cpu) is False
    monkeypatch.setenv(device_module.BF16_ENV, "1")
    assert native_bf16(cpu) is True and amp_active(True, cpu) and not amp_active(False, cpu)


def test_the_float32_path_measures_nothing(monkeypatch):
    import neuroage_utils.train.device as device_module

    monkeypatch.delenv(device_module.BF16_ENV, raising=False)
    monkeypatch.setattr(device_module, "measured_bf16_speedup", lambda: pytest.fail("measured without amp"))
    assert amp_active(False, torch.device("cpu")) is False


def test_measured_bf16_speedup_is_a_positive_ratio():
    from neuroage_utils.train.device import measured_bf16_speedup

    assert measured_bf16_speedup(size=64, repeats=2) > 0
