"""The age MLP and its regressor."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.features import SparseStandardScaler
from neuroage_utils.models.mlp import MLPRegressor
from neuroage_utils.nn.networks import AgeMLP


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cohort(n_donors=12, cells=30, g=20, seed=0):
    """Log-normalised-like features whose first genes rise with the donor's age."""
    rng = np.random.default_rng(seed)
    donor_age = rng.uniform(20, 90, n_donors)
    donors = np.repeat([f"D{i}" for i in range(n_donors)], cells)
    ages = np.repeat(donor_age, cells)
    X = rng.gamma(2.0, 1.0, size=(len(ages), g))
    X[:, :3] += 0.05 * (ages[:, None] - 50)
    X = np.clip(X, 0, None) * (rng.random(X.shape) < 0.7)  # sparse-ish and non-negative, like expression
    return sp.csr_matrix(X.astype(np.float32)), ages, donors


def test_architecture_is_linear_batchnorm_relu_dropout_blocks():
    m = AgeMLP(7, hidden=(5, 3), dropout=0.4)
    types = [type(layer) for layer in m.layers]
    assert types == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert (m.layers[0].in_features, m.layers[4].in_features, m.layers[-1].out_features) == (7, 5, 1)
    assert m.layers[3].p == 0.4


def test_regressor_training_loss_falls_and_predictions_track_age():
    X, ages, donors = _cohort()
    reg = MLPRegressor(hidden=(32, 32), dropout=0.1, epochs=20, lr=3e-3, batch_size=64, device="cpu",
                       progress=False)
    reg.fit(X, ages, donors=donors)
    loss = reg.history_["loss"].to_numpy()
    assert loss[-3:].mean() < 0.7 * loss[:3].mean()
    pred = reg.predict(X)
    assert pred.shape == (X.shape[0],)
    assert np.corrcoef(pred, ages)[0, 1] > 0.8  # years, not z-scores
    assert abs(pred.mean() - ages.mean()) < 10


def test_inputs_are_z_scored_with_training_statistics():
    X, ages, _ = _cohort()
    reg = MLPRegressor(hidden=(4,), epochs=1, batch_size=64, device="cpu", progress=False).fit(X, ages)
    scaler = SparseStandardScaler().fit(X)
    t = reg.module_.input_transform
    np.testing.assert_allclose(t.mean.numpy(), scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(1 / t.inv_scale.numpy(), scaler.scale_, rtol=1e-5)
    raw = MLPRegressor(hidden=(4,), epochs=1, batch_size=64, scale_inputs=False, device="cpu", progress=False)
    assert not bool(raw.fit(X, ages).module_.input_transform.scaled)


def test_validation_history_and_same_seed_same_model():
    X, ages, donors = _cohort()
    val = _cohort(n_donors=4, seed=1)
    kw = dict(hidden=(16,), epochs=3, batch_size=64, device="cpu", progress=False, seed=3)
    a = MLPRegressor(**kw).fit(X, ages, validation=val)
    b = MLPRegressor(**kw).fit(X, ages, validation=val)
    assert {"loss", "mse", "val_loss", "val_mae", "lr"} <= set(a.history_.columns)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.history_["val_mae"].equals(b.history_["val_mae"])
    # Dense input gives the same model up to float rounding of the scaling statistics.
    c = MLPRegressor(**kw).fit(X.toarray(), ages, validation=val)
    np.testing.assert_allclose(a.predict(X), c.predict(X), atol=0.5)


def test_input_errors_name_the_fix():
    X, ages, donors = _cohort()
    reg = MLPRegressor(hidden=(4,), epochs=1, batch_size=64, device="cpu", progress=False)
    with pytest.raises(DataValidationError, match="one age per cell"):
        reg.fit(X, ages[:-1])
    bad = ages.copy()
    bad[0] = np.nan
    with pytest.raises(DataValidationError, match="NaN"):
        reg.fit(X, bad)
    two_ages = ages.copy()
    two_ages[0] += 1
    with pytest.raises(DataValidationError, match="more than one age"):
        reg.fit(X, two_ages, donors=donors)
    reg.fit(X, ages)
    with pytest.raises(DataValidationError, match="same genes"):
        reg.predict(X[:, :-1])
    with pytest.raises(RuntimeError, match="not fitted"):
        MLPRegressor().predict(X)


def test_cuda_request_without_cuda_fails_before_training():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    X, ages, _ = _cohort()
    with pytest.raises(DataValidationError, match="device='cpu'"):
        MLPRegressor(device="cuda", progress=False).fit(X, ages)
