"""The VAE family: likelihoods, KL, architecture, loss, denoising, regressor."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributions as D
from torch import nn

from neuroage_utils.errors import DataValidationError
from neuroage_utils.nn.likelihoods import (
    GaussianLikelihood,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
    kl_standard_normal,
)
from neuroage_utils.nn.networks import AgeVAE, layer_table
from neuroage_utils.models.vae import VAEAgeRegressor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _counts(n_donors=8, cells=25, g=30, seed=0):
    """Counts whose first genes rise with the donor's age (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    donor_age = rng.uniform(20, 90, n_donors)
    donors = np.repeat([f"D{i}" for i in range(n_donors)], cells)
    ages = np.repeat(donor_age, cells)
    base = rng.gamma(1.0, 1.5, size=(1, g))
    rate = base * np.exp(0.02 * (ages[:, None] - 50) * (np.arange(g) < 5))
    X = rng.poisson(rate * rng.uniform(0.5, 2.0, size=(len(ages), 1))).astype(np.float32)
    X[:, -1] += 1  # no empty cells
    return sp.csr_matrix(X), ages, donors


def _fast(**kw):
    base = dict(hidden=(16, 8), latent=4, age_hidden=(8,), epochs=3, batch_size=64, device="cpu", progress=False,
                kl_cycle=dict(zero_epochs=1, rise_epochs=1, hold_epochs=1), T_0=2)
    base.update(kw)
    return VAEAgeRegressor(**base)


# -- likelihoods and KL against torch.distributions ------------------------------------------------


def _decoder_out(n=6, g=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.full((n, g), 3.0), generator=gen)
    out = torch.randn(n, g, generator=gen)
    library = x.sum(1) + 1.0  # an offset that differs from the row sums, to test it is used
    return x, out, library


def test_gaussian_log_prob_matches_normal():
    x, out, _ = _decoder_out()
    lik = GaussianLikelihood(x.shape[1])
    with torch.no_grad():
        lik.log_var.copy_(torch.linspace(-1, 1, x.shape[1]))
    expected = D.Normal(out, torch.exp(0.5 * lik.log_var)).log_prob(x)
    torch.testing.assert_close(lik.log_prob(x, out), expected)
    torch.testing.assert_close(lik.nll(x, out), -expected.sum(1))
    fixed = GaussianLikelihood(x.shape[1], learn_variance=False)
    assert not list(fixed.parameters())
    torch.testing.assert_close(fixed.log_prob(x, out), D.Normal(out, 1.0).log_prob(x))


def test_poisson_log_prob_matches_poisson_with_library_offset():
    x, out, library = _decoder_out()
    lik = PoissonLikelihood()
    rate = library[:, None] * torch.softmax(out, dim=1)
    expected = D.Poisson(rate).log_prob(x)
    torch.testing.assert_close(lik.log_prob(x, out, library), expected)
    torch.testing.assert_close(lik.nll(x, out, library), -expected.sum(1))
    torch.testing.assert_close(lik.mean(out, library).sum(1), library)  # the offset is the expected total
    logfact = torch.lgamma(x + 1).sum(1)
    torch.testing.assert_close(lik.nll(x, out, library, log_factorial=logfact), -expected.sum(1))


def test_poisson_nll_hand_written_gradient_matches_autograd():
    # PoissonLikelihood.nll's fused log-softmax term (one exp pass, gradient formed in place) against
    # autograd of the textbook formula, in float64 and float32.
    gen = torch.Generator().manual_seed(3)
    for dtype, tol in ((torch.float64, {}), (torch.float32, {"rtol": 1e-5, "atol": 1e-4})):
        x = torch.poisson(torch.rand(9, 40, generator=gen, dtype=dtype) * 4)
        x[2] = 0  # an empty cell
        out = (torch.randn(9, 40, generator=gen, dtype=dtype) * 3).requires_grad_()
        library = x.sum(1) * 1.5 + 1
        weights = torch.rand(9, generator=gen, dtype=dtype)
        rate = library[:, None] * torch.softmax(out, dim=1)
        expected = -D.Poisson(rate).log_prob(x).sum(1)
        (grad_expected,) = torch.autograd.grad((expected * weights).sum(), out)
        got = PoissonLikelihood().nll(x, out, library)
        (grad_got,) = torch.autograd.grad((got * weights).sum(), out)
        torch.testing.assert_close(got, expected, **tol)
        torch.testing.assert_close(grad_got, grad_expected, **tol)
        # no library: the row sums, as AgeVAE.loss relies on
        torch.testing.assert_close(PoissonLikelihood().nll(x, out), PoissonLikelihood().nll(x, out, x.sum(1)))
    # the gradient is built in place from a kept tensor: a second backward must fail loudly, not be wrong
    loss = PoissonLikelihood().nll(x, out, library).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
    # counts that need a gradient take plain autograd (d nll / d x = -log(rate) + d log x!/dx)
    xg = x.detach().clone().requires_grad_()
    (grad_x,) = torch.autograd.grad(PoissonLikelihood().nll(xg, out.detach(), library).sum(), xg)
    log_rate = torch.log(library)[:, None] + torch.log_softmax(out.detach(), dim=1)
    torch.testing.assert_close(grad_x, -log_rate + torch.digamma(x + 1), rtol=1e-4, atol=1e-4)


def test_negative_binomial_log_prob_matches_torch_parameterisation():
    x, out, library = _decoder_out()
    lik = NegativeBinomialLikelihood(x.shape[1])
    with torch.no_grad():
        lik.log_theta.copy_(torch.linspace(-2, 3, x.shape[1]))
    mu = library[:, None] * torch.softmax(out, dim=1)
    theta = torch.exp(lik.log_theta)
    # torch counts successes with probability p before total_count failures: mean = theta * p / (1 - p).
    expected = D.NegativeBinomial(total_count=theta, logits=torch.log(mu) - torch.log(theta)).log_prob(x)
    torch.testing.assert_close(lik.log_prob(x, out, library), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lik.nll(x, out, library), -expected.sum(1), rtol=1e-4, atol=1e-4)
    # Large theta: the Poisson limit.
    # (Not much larger: in float32, lgamma(x + theta) - lgamma(theta) loses digits once theta >> 1e4.)
    with torch.no_grad():
        lik.log_theta.fill_(8.0)
    torch.testing.assert_close(lik.log_prob(x, out, library), PoissonLikelihood().log_prob(x, out, library),
                               rtol=0, atol=2e-2)


def test_kl_matches_torch_kl_divergence():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 4, generator=gen)
    var = torch.rand(5, 4, generator=gen) * 3 + 0.05
    expected = D.kl_divergence(D.Normal(mu, var.sqrt()), D.Normal(0.0, 1.0))
    torch.testing.assert_close(kl_standard_normal(mu, var), expected)
    # The authors' formula (softplus variance used as a log-variance) is a different number.
    authors = -0.5 * (1 + var - mu**2 - var.exp())
    assert not torch.allclose(authors, expected)


# -- architecture ----------------------------------------------------------------------------------


def test_architecture_follows_the_authors_code():
    m = AgeVAE(50, hidden=(30, 15), latent=10, age_hidden=(20, 20), likelihood="poisson")
    enc = [type(l) for l in m.encoder]
    assert enc == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    dec = [(type(l).__name__, getattr(l, "in_features", None), getattr(l, "out_features", None)) for l in m.decoder]
    assert dec == [
        ("Linear", 10, 10), ("ReLU", None, None), ("Linear", 10, 15), ("ReLU", None, None),
        ("Linear", 15, 15), ("BatchNorm1d", None, None), ("ReLU", None, None),
        ("Linear", 15, 30), ("BatchNorm1d", None, None), ("ReLU", None, None),
        ("Linear", 30, 50),
    ]
    assert isinstance(m.var_head[1], nn.Softplus)
    age = [type(l) for l in m.age_head]
    assert age == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert m.age_head[0].in_features == 10 and m.age_head[3].p == 0.4
    with_dropout = AgeVAE(50, hidden=(30, 15), latent=10, dropout=0.2)
    assert sum(isinstance(l, nn.Dropout) for l in with_dropout.encoder) == 2


def test_layer_table_is_read_from_the_module():
    m = AgeVAE(50, hidden=(30, 15), latent=10, likelihood="nb")
    table = layer_table(m)
    assert list(table.columns) == ["block", "name", "type", "in", "out", "params"]
    assert list(dict.fromkeys(table["block"])) == [
        "input_transform", "encoder", "mu_head", "var_head", "decoder", "likelihood", "age_head"]
    linear = table[table["type"] == "Linear"]
    assert linear.iloc[0][["in", "out"]].tolist() == [50, 30]
    assert table["params"].sum() == sum(p.numel() for p in m.parameters())
    nb = table[table["block"] == "likelihood"].iloc[0]
    assert (nb["type"], nb["out"], nb["params"]) == ("NegativeBinomialLikelihood", 50, 50)


# -- loss ------------------------------------------------------------------------------------------


def test_loss_is_the_documented_formula():
    X, _, _ = _counts(n_donors=2, cells=10, g=12)
    x = torch.from_numpy(X.toarray())
    y = torch.linspace(-1, 1, x.shape[0])
    torch.manual_seed(0)
    m = AgeVAE(12, hidden=(8,), latent=3, age_hidden=(4,), likelihood="poisson", age_weight=0.7).eval()
    parts = m.loss({"x": x, "y": y}, kl_weight=0.3)
    h = m.encoder(torch.log1p(x))
    mu, var = m.mu_head(h), torch.nn.functional.softplus(m.var_head[0](h)) + m.var_eps
    rate = x.sum(1, keepdim=True) * torch.softmax(m.decoder(mu), dim=1)  # eval: z = mu
    recon = -D.Poisson(rate).log_prob(x).sum()
    kl = D.kl_divergence(D.Normal(mu, var.sqrt()), D.Normal(0.0, 1.0)).sum()
    mse = ((m.age_head(h).squeeze(1) - y) ** 2).mean()
    expected = (recon + 0.3 * kl) / x.shape[0] + 0.7 * mse
    torch.testing.assert_close(parts["loss"], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(parts["kl"], kl / x.shape[0])


@pytest.mark.parametrize("likelihood", ["gaussian", "poisson", "nb"])
def test_tiny_vae_drives_its_loss_down(likelihood):
    X, ages, _ = _counts(n_donors=4, cells=16, g=20)
    x = torch.from_numpy(X.toarray())
    y = torch.from_numpy(((ages - ages.mean()) / ages.std()).astype(np.float32))
    torch.manual_seed(0)
    m = AgeVAE(20, hidden=(16,), latent=4, age_hidden=(8,), likelihood=likelihood)
    if likelihood == "gaussian":
        ln = m.input_transform.unscaled(x)
        m.input_transform.set_scaling(ln.mean(0), ln.std(0, unbiased=False).clamp_min(1e-3))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    batch = {"x": x, "y": y}
    first = float(m.loss(batch, 1.0)["loss"].detach())
    for _ in range(150):
        loss = m.loss(batch, 1.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert float(m.loss(batch, 1.0)["loss"].detach()) < 0.8 * first


# -- denoising -------------------------------------------------------------------------------------


def test_input_noise_is_relative_to_the_training_maximum_and_training_only():
    X, ages, _ = _counts()
    reg = _fast(likelihood="poisson", input_noise=0.5, epochs=1).fit(X, ages)
    expected_max = float(np.log1p(X.max()))  # encoder input of count models: log1p(counts)
    assert reg.encoder_input_max_ == pytest.approx(expected_max, rel=1e-6)
    assert float(reg.module_.input_transform.noise_std) == pytest.approx(0.5 * expected_max, rel=1e-6)
    unit = _fast(likelihood="gaussian", input_noise=0.5, noise_reference="unit", epochs=1).fit(X, ages)
    assert float(unit.module_.input_transform.noise_std) == pytest.approx(0.5)
    # Prediction is deterministic: the noise is off in eval mode.
    np.testing.assert_array_equal(reg.predict(X), reg.predict(X))


def test_gaussian_encoder_input_is_z_scored_log_normalised_expression():
    X, ages, _ = _counts()
    reg = _fast(likelihood="gaussian", epochs=1).fit(X, ages)
    z = reg.module_.input_transform(torch.from_numpy(X.toarray())).numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    sd = z.std(0)
    np.testing.assert_allclose(sd[sd > 0], 1, rtol=1e-3)


# -- regressor -------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["poisson", "nb", "gaussian"])
def test_regressor_fits_predicts_years_and_latents(likelihood):
    X, ages, donors = _counts()
    val = _counts(n_donors=3, seed=1)
    reg = _fast(likelihood=likelihood).fit(X, ages, donors=donors, validation=val)
    pred = reg.predict(X)
    assert pred.shape == (X.shape[0],) and np.isfinite(pred).all()
    assert 0 < pred.mean() < 120  # years, not z-scores
    assert reg.latent(X).shape == (X.shape[0], 4)
    hist = reg.history_
    assert {"loss", "reconstruction", "kl", "age_mse", "kl_weight", "lr", "val_loss", "val_mae"} <= set(hist.columns)
    assert hist["kl_weight"].tolist() == [0.0, 1.0, 1.0]  # the (1, 1, 1) cycle of _fast
    assert reg.architecture_table()["in"].iloc[0] == X.shape[1]


def test_count_models_refuse_non_counts():
    X, ages, _ = _counts()
    scaled = X.copy()
    scaled.data = scaled.data * 0.5
    negative = X.copy()
    negative.data[0] = -1.0
    for likelihood in ("poisson", "nb"):
        with pytest.raises(DataValidationError, match="non-integer.*likelihood='gaussian'"):
            _fast(likelihood=likelihood).fit(scaled, ages)
        with pytest.raises(DataValidationError, match="negative.*likelihood='gaussian'"):
            _fast(likelihood=likelihood).fit(negative, ages)
    _fast(likelihood="gaussian", epochs=1).fit(scaled, ages)  # the Gaussian model takes any non-negative values
    with pytest.raises(DataValidationError, match="log_normalize=False"):
        _fast(likelihood="gaussian").fit(negative, ages)


def test_checkpointed_vae_resumes_to_the_same_model(tmp_path):
    X, ages, _ = _counts(n_donors=4, cells=20)
    straight = _fast(epochs=4).fit(X, ages)
    path = tmp_path / "vae.pt"
    _fast(epochs=2, checkpoint_path=path, checkpoint_every=1).fit(X, ages)
    resumed = _fast(epochs=4, checkpoint_path=path, checkpoint_every=1).fit(X, ages)
    np.testing.assert_array_equal(resumed.predict(X), straight.predict(X))
    assert resumed.history_["loss"].equals(straight.history_["loss"])
