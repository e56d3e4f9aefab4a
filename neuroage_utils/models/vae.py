r"""The VAE family of the paper: likelihoods, encoder, decoder, age head, input noise.

One model, :class:`AgeVAE`, covers the paper's standard VAE (``likelihood="gaussian"``), its Poisson
VAE (``"poisson"``), the negative-binomial VAE it proposes as the next step (``"nb"``) and the
denoising VAE (``input_noise > 0``). The architecture follows the authors' code (see
``REPRODUCTION_NOTES.md``); the loss follows the paper, computed correctly:

.. math::

    \mathcal{L} = \frac{1}{n}\Big(\sum_{i=1}^{n}\sum_{g=1}^{G} -\log p(x_{ig} \mid z_i)
      \;+\; \beta \sum_{i=1}^{n} \mathrm{KL}\big(q(z_i \mid x_i)\,\|\,N(0, I)\big)\Big)
      \;+\; \alpha\,\frac{1}{n}\sum_{i=1}^{n} (\hat y_i - y_i)^2

for a batch of :math:`n` cells, :math:`\beta` the KL weight of the epoch (cyclical annealing),
:math:`\alpha` = ``age_weight`` (1 in the paper), :math:`y` the z-scored age and :math:`\hat y` the
age head's output. :math:`q(z \mid x) = N(\mu(x), \mathrm{diag}\,\sigma^2(x))` with
:math:`\sigma^2 = \mathrm{softplus}(\cdot) + \epsilon`, and

.. math:: \mathrm{KL} = \tfrac12 \sum_k \big(\sigma_k^2 + \mu_k^2 - 1 - \log \sigma_k^2\big).

(The authors' code feeds the softplus *variance* to the log-variance formula,
:math:`-\tfrac12\sum(1 + v - \mu^2 - e^{v})`; the book uses the variance as a variance.)

Departures from the authors' code, all following the paper's text: Adam for every parameter
(their Poisson/standard scripts use SGD for the autoencoder), a Poisson likelihood for the Poisson
VAE (their script uses an MSE), the KL computed from the variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataValidationError, is_count_matrix
from ..train import (
    DEFAULT_MAX_DENSE_BYTES,
    CellBatches,
    InputTransform,
    TorchAgeRegressor,
    cyclical_kl_schedule,
    predict_batches,
    transformed_stats,
)
from .mlp import mlp_blocks

__all__ = [
    "GaussianLikelihood",
    "PoissonLikelihood",
    "NegativeBinomialLikelihood",
    "make_likelihood",
    "kl_standard_normal",
    "AgeVAE",
    "VAEAgeRegressor",
    "layer_table",
    "LIKELIHOODS",
]

LIKELIHOODS = ("gaussian", "poisson", "nb")
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------
# Likelihoods p(x | z): decoder output -> distribution over a cell's genes
# --------------------------------------------------------------------------------------------------


def _per_cell_log_factorial(x: torch.Tensor, log_factorial: torch.Tensor | None) -> torch.Tensor:
    """:math:`\\sum_g \\log x_g!` per cell; precomputed from the sparse matrix when given (lgamma on a
    dense batch costs more than a matmul on this CPU)."""
    if log_factorial is not None:
        return log_factorial
    return torch.lgamma(x + 1.0).sum(dim=1)


class GaussianLikelihood(nn.Module):
    r"""Gaussian likelihood on z-scored log-normalised expression: :math:`x_g \sim N(m_g, s_g^2)`.

    The decoder output is the mean :math:`m`. ``learn_variance=True`` learns one log-variance per
    gene (a parameter, initialised at 0: unit variance, the variance of z-scored data);
    ``False`` fixes :math:`s_g^2 = 1`, so the NLL is half the squared error plus a constant
    (the authors' code uses the summed squared error itself).

    .. math:: -\log p(x_g) = \tfrac12\big(\log 2\pi + \log s_g^2 + (x_g - m_g)^2 / s_g^2\big)
    """

    is_count = False

    def __init__(self, n_genes: int, learn_variance: bool = True):
        super().__init__()
        self.n_genes = int(n_genes)
        self.learn_variance = bool(learn_variance)
        log_var = torch.zeros(self.n_genes)
        if self.learn_variance:
            self.log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("log_var", log_var)

    def mean(self, output: torch.Tensor, library: torch.Tensor | None = None) -> torch.Tensor:
        return output

    def log_prob(self, x: torch.Tensor, output: torch.Tensor, library: torch.Tensor | None = None) -> torch.Tensor:
        """Element-wise :math:`\\log p(x_{ig})` (cells x genes)."""
        return -0.5 * (_LOG_2PI + self.log_var + (x - output) ** 2 * torch.exp(-self.log_var))

    def nll(self, x, output, library=None, log_factorial=None) -> torch.Tensor:
        """Per-cell :math:`-\\sum_g \\log p(x_{ig})`."""
        sq = ((x - output) ** 2 * torch.exp(-self.log_var)).sum(dim=1)
        return 0.5 * (sq + self.log_var.sum() + self.n_genes * _LOG_2PI)

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}, learn_variance={self.learn_variance}"


class PoissonLikelihood(nn.Module):
    r"""Poisson likelihood of raw counts with the library size as an offset (as scVI).

    The decoder output :math:`o` (one value per gene) becomes expression proportions
    :math:`\rho = \mathrm{softmax}(o)` and the rate is :math:`\lambda_g = l\,\rho_g` with :math:`l`
    the cell's library size (by default its total count over the modelled genes), so the decoder
    models composition and sequencing depth is not something it has to learn:

    .. math:: \log p(x_g) = x_g \log\lambda_g - \lambda_g - \log x_g!

    Because :math:`\sum_g \lambda_g = l`, the per-cell NLL is computed as
    :math:`-\sum_g x_g \log\rho_g - (\sum_g x_g)\log l + l + \sum_g \log x_g!`, one log-softmax and
    one product per batch.
    """

    is_count = True

    def __init__(self, n_genes: int | None = None):
        super().__init__()
        self.n_genes = None if n_genes is None else int(n_genes)  # for display only: no parameters

    def mean(self, output: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        return library.unsqueeze(-1) * torch.softmax(output, dim=-1)

    @staticmethod
    def _log_library(library: torch.Tensor) -> torch.Tensor:
        # An empty cell (l = 0) has x = 0 everywhere, so its log-rate only ever multiplies 0.
        return torch.log(library.clamp_min(torch.finfo(library.dtype).tiny))

    def log_prob(self, x: torch.Tensor, output: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Element-wise :math:`\\log p(x_{ig})` (cells x genes)."""
        log_rate = self._log_library(library).unsqueeze(-1) + torch.log_softmax(output, dim=-1)
        return x * log_rate - torch.exp(log_rate) - torch.lgamma(x + 1.0)

    def nll(self, x, output, library, log_factorial=None) -> torch.Tensor:
        """Per-cell :math:`-\\sum_g \\log p(x_{ig})` (see the class docstring)."""
        fit = (x * torch.log_softmax(output, dim=-1)).sum(dim=1)
        total = x.sum(dim=1)
        return -fit - total * self._log_library(library) + library + _per_cell_log_factorial(x, log_factorial)


class NegativeBinomialLikelihood(nn.Module):
    r"""Negative binomial (gamma-Poisson) likelihood of raw counts, mean :math:`\mu_g = l\,\mathrm{softmax}(o)_g`
    as in :class:`PoissonLikelihood`, and a learned inverse dispersion :math:`\theta_g` per gene
    (``log_theta`` parameter, initialised at 0; variance :math:`\mu + \mu^2/\theta`):

    .. math::

        \log p(x_g) = \theta_g \log\frac{\theta_g}{\theta_g + \mu_g} + x_g \log\frac{\mu_g}{\theta_g + \mu_g}
          + \log\Gamma(x_g + \theta_g) - \log\Gamma(\theta_g) - \log x_g!

    This is ``torch.distributions.NegativeBinomial(total_count=theta, logits=log(mu / theta))``;
    :math:`\theta \to \infty` recovers the Poisson. The paper names it as the next step.
    """

    is_count = True

    def __init__(self, n_genes: int):
        super().__init__()
        self.n_genes = int(n_genes)
        self.log_theta = nn.Parameter(torch.zeros(self.n_genes))

    def mean(self, output: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        return library.unsqueeze(-1) * torch.softmax(output, dim=-1)

    def _log_prob_no_factorial(self, x, output, library):
        log_mu = PoissonLikelihood._log_library(library).unsqueeze(-1) + torch.log_softmax(output, dim=-1)
        log_theta = self.log_theta
        theta = torch.exp(log_theta)
        log_theta_mu = torch.logaddexp(log_theta, log_mu)  # log(theta + mu), stable
        return (
            theta * (log_theta - log_theta_mu)
            + x * (log_mu - log_theta_mu)
            + torch.lgamma(x + theta)
            - torch.lgamma(theta)
        )

    def log_prob(self, x: torch.Tensor, output: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Element-wise :math:`\\log p(x_{ig})` (cells x genes)."""
        return self._log_prob_no_factorial(x, output, library) - torch.lgamma(x + 1.0)

    def nll(self, x, output, library, log_factorial=None) -> torch.Tensor:
        """Per-cell :math:`-\\sum_g \\log p(x_{ig})`."""
        return -self._log_prob_no_factorial(x, output, library).sum(dim=1) + _per_cell_log_factorial(x, log_factorial)

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}"


def make_likelihood(name: str, n_genes: int, gaussian_variance: str = "gene") -> nn.Module:
    """``"gaussian"`` | ``"poisson"`` | ``"nb"`` -> likelihood module."""
    if name == "gaussian":
        if gaussian_variance not in ("gene", "unit"):
            raise ValueError(f"gaussian_variance must be 'gene' or 'unit', got {gaussian_variance!r}")
        return GaussianLikelihood(n_genes, learn_variance=gaussian_variance == "gene")
    if name == "poisson":
        return PoissonLikelihood(n_genes)
    if name == "nb":
        return NegativeBinomialLikelihood(n_genes)
    raise ValueError(f"unknown likelihood {name!r}: use one of {', '.join(LIKELIHOODS)}")


def kl_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    r"""Element-wise KL divergence of the posterior from the prior,

    .. math:: \mathrm{KL}(N(\mu, \sigma^2) \,\|\, N(0, 1)) = \tfrac12(\sigma^2 + \mu^2 - 1 - \log\sigma^2).
    """
    return 0.5 * (var + mu**2 - 1.0 - torch.log(var))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class AgeVAE(nn.Module):
    r"""VAE with a jointly trained age head (the paper's Fig. 2), for one likelihood.

    Architecture (authors' code, REPRODUCTION_NOTES):

    - **input transform**: ``gaussian`` - log-normalise (counts per ``target_sum``, log1p) then
      z-score with training statistics (the reconstruction target is this z-scored expression);
      ``poisson``/``nb`` - :math:`\log(1 + x)` of the raw counts (the target is the counts);
    - **encoder**: per width of ``hidden``: Linear -> BatchNorm1d -> ReLU (-> Dropout if
      ``dropout``), then Linear(latent) -> BatchNorm1d(latent): its output :math:`h` is the
      "latent layer";
    - **heads**: :math:`\mu = \mathrm{Linear}(h)`, :math:`\sigma^2 = \mathrm{softplus}(\mathrm{Linear}(h)) + \epsilon`;
      :math:`z = \mu + \sigma\varepsilon` in training, :math:`z = \mu` in eval mode;
    - **decoder**: Linear(latent, latent) -> ReLU -> Linear(latent, h_last) -> ReLU, then the
      encoder widths reversed (Linear -> BatchNorm1d -> ReLU (-> Dropout)), then Linear(h_first, G);
    - **age head** on :math:`h` (not :math:`z`, as the authors' code; deterministic at prediction):
      per width of ``age_hidden`` Linear -> BatchNorm1d -> ReLU -> Dropout(``age_dropout``),
      then Linear(1).

    Denoising (``input_noise`` = level): in training only, Gaussian noise of standard deviation
    ``input_noise * reference`` is added to the encoder input and the *clean* input is
    reconstructed (Im et al. 2017). ``noise_reference="max"`` takes the reference from the data
    (:meth:`set_noise_reference`, the maximum of the encoder input over the training cells: the
    paper's "scaled relative to the maximum count"); ``"unit"`` uses 1, i.e. the level is the
    standard deviation in encoder-input units - what the authors' code does
    (``x + Normal(0, 5)`` on unit-variance-scaled features, also at prediction time, which the book
    does not copy).

    The loss is in the module docstring of :mod:`neuroage_utils.models.vae`.
    """

    def __init__(
        self,
        n_genes: int,
        hidden: Sequence[int] = (300, 150),
        latent: int = 100,
        age_hidden: Sequence[int] = (20, 20),
        likelihood: str = "gaussian",
        dropout: float = 0.0,
        input_noise: float = 0.0,
        noise_reference: str = "max",
        age_dropout: float = 0.4,
        age_weight: float = 1.0,
        gaussian_variance: str = "gene",
        log_normalize: bool = True,
        target_sum: float = 1e4,
        var_eps: float = 1e-4,
    ):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden:
            raise ValueError("AgeVAE needs at least one hidden width (e.g. hidden=(300, 150))")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}: use one of {', '.join(LIKELIHOODS)}")
        if noise_reference not in ("max", "unit"):
            raise ValueError(f"noise_reference must be 'max' or 'unit', got {noise_reference!r}")
        if input_noise < 0 or not math.isfinite(input_noise):
            raise ValueError(f"input_noise must be a finite level >= 0, got {input_noise}")
        for name, p in (("dropout", dropout), ("age_dropout", age_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.n_genes, self.hidden, self.n_latent = int(n_genes), hidden, int(latent)
        self.age_hidden = tuple(int(h) for h in age_hidden)
        self.likelihood_name = likelihood
        self.input_noise, self.noise_reference = float(input_noise), noise_reference
        self.age_weight, self.var_eps = float(age_weight), float(var_eps)

        if likelihood == "gaussian":
            self.input_transform = InputTransform(
                n_genes, target_sum=target_sum if log_normalize else None, log1p=log_normalize
            )
        else:
            self.input_transform = InputTransform(n_genes, log1p=True)
        self.input_transform.set_noise_std(self.input_noise)  # reference 1 until set_noise_reference

        self.encoder = nn.Sequential(
            *mlp_blocks(n_genes, hidden, dropout), nn.Linear(hidden[-1], latent), nn.BatchNorm1d(latent)
        )
        self.mu_head = nn.Linear(latent, latent)
        self.var_head = nn.Sequential(nn.Linear(latent, latent), nn.Softplus())
        reversed_hidden = hidden[::-1]
        self.decoder = nn.Sequential(
            nn.Linear(latent, latent), nn.ReLU(), nn.Linear(latent, reversed_hidden[0]), nn.ReLU(),
            *mlp_blocks(reversed_hidden[0], reversed_hidden, dropout), nn.Linear(hidden[0], n_genes),
        )
        self.likelihood = make_likelihood(likelihood, n_genes, gaussian_variance)
        last = self.age_hidden[-1] if self.age_hidden else latent
        self.age_head = nn.Sequential(*mlp_blocks(latent, self.age_hidden, age_dropout), nn.Linear(last, 1))

    # -- set-up from training data -----------------------------------------------------------------
    def set_noise_reference(self, reference: float) -> None:
        """Noise std = ``input_noise * reference`` (``reference`` ignored when ``noise_reference='unit'``)."""
        if self.noise_reference == "unit":
            reference = 1.0
        if not (math.isfinite(reference) and reference >= 0):
            raise ValueError(f"noise reference must be finite and >= 0, got {reference}")
        self.input_transform.set_noise_std(self.input_noise * float(reference))

    # -- the generative and inference paths --------------------------------------------------------
    def encode(self, x_encoder: torch.Tensor):
        """Latent-layer output ``h``, posterior mean ``mu`` and variance ``var`` for encoder input."""
        h = self.encoder(x_encoder)
        return h, self.mu_head(h), self.var_head(h) + self.var_eps

    def loss(self, batch: dict, kl_weight: float = 1.0) -> dict:
        """Batch loss and its parts (module docstring); ``reconstruction`` and ``kl`` are per cell."""
        x = batch["x"]
        n = x.shape[0]
        clean = self.input_transform(x)
        h, mu, var = self.encode(self.input_transform.add_noise(clean))
        z = mu + torch.sqrt(var) * torch.randn_like(mu) if self.training else mu
        output = self.decoder(z)
        if self.likelihood.is_count:
            library = batch.get("library")
            if library is None:
                library = x.sum(dim=1)
            nll = self.likelihood.nll(x, output, library, batch.get("log_factorial"))
        else:
            nll = self.likelihood.nll(clean, output)
        kl = kl_standard_normal(mu, var).sum(dim=1)
        loss = (nll.sum() + kl_weight * kl.sum()) / n
        parts = {"reconstruction": nll.detach().mean(), "kl": kl.detach().mean()}
        if "y" in batch:
            mse = F.mse_loss(self.age_head(h).squeeze(-1), batch["y"])
            loss = loss + self.age_weight * mse
            parts["age_mse"] = mse.detach()
        parts["loss"] = loss
        return parts

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled age from the latent layer (call in eval mode for the deterministic prediction)."""
        return self.age_head(self.encoder(self.input_transform(x))).squeeze(-1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means :math:`\\mu(x)`."""
        return self.encode(self.input_transform(x))[1]


# --------------------------------------------------------------------------------------------------
# Architecture table (the book's Fig. 2 is drawn from the module itself)
# --------------------------------------------------------------------------------------------------


def layer_table(module: nn.Module) -> pd.DataFrame:
    """One row per leaf layer in registration (= forward) order: ``block``, ``name``, ``type``,
    ``in``, ``out``, ``params``.

    Linear layers report their features, BatchNorm its width, likelihoods and input transforms
    their gene count; activations and dropout inherit the width of the layer before them in the same
    block. Read from the module, so a figure built on it cannot drift from the code.
    """
    rows = []
    width_in_block: dict[str, int | None] = {}
    for name, layer in module.named_modules():
        if name == "" or any(True for _ in layer.children()):
            continue
        block = name.split(".")[0]
        prev = width_in_block.get(block)
        if isinstance(layer, nn.Linear):
            n_in, n_out = layer.in_features, layer.out_features
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            n_in = n_out = layer.num_features
        elif getattr(layer, "n_genes", None) is not None:
            n_in = n_out = layer.n_genes
        elif getattr(layer, "n_features", None) is not None:
            n_in = n_out = layer.n_features
        else:
            n_in = n_out = prev
        width_in_block[block] = n_out
        rows.append({
            "block": block,
            "name": name,
            "type": type(layer).__name__,
            "in": n_in,
            "out": n_out,
            "params": int(sum(p.numel() for p in layer.parameters(recurse=False))),
        })
    table = pd.DataFrame(rows, columns=["block", "name", "type", "in", "out", "params"])
    return table.astype({"in": "Int64", "out": "Int64"})


# --------------------------------------------------------------------------------------------------
# The sklearn-like regressor
# --------------------------------------------------------------------------------------------------


class VAEAgeRegressor(TorchAgeRegressor):
    """Fit :class:`AgeVAE` on a raw count matrix; predict ages in years; expose the latent space.

    Parameters
    ----------
    likelihood, hidden, latent, age_hidden, dropout, age_dropout, age_weight, gaussian_variance
        See :class:`AgeVAE` (paper's Poisson VAE: ``"poisson"``, (300, 150), 100, (20, 20)).
    input_noise, noise_reference
        Denoising level and what it is relative to (paper: levels 0.5 and 5); see :class:`AgeVAE`.
    log_normalize, target_sum
        Gaussian model only: log-normalise counts per ``target_sum`` before z-scoring
        (``log_normalize=False``: X is already normalised; it is only z-scored).
    epochs, lr, batch_size
        Adam (paper: lr 1e-3, batch 4096, 1000 epochs for the final Poisson VAE).
    kl_schedule, kl_cycle
        ``"cyclical"`` (the paper's schedule; ``kl_cycle`` = dict of
        :func:`~neuroage_utils.train.cyclical_kl_weight` arguments), a constant weight, a callable
        ``epoch -> weight``, or ``None`` (weight 1).
    lr_schedule, T_0
        ``"cosine_warm_restarts"`` with period ``T_0`` epochs (paper: 20), or ``None``.
    early_stopping_patience, device, seed, checkpoint_path, checkpoint_every, progress
        See :func:`neuroage_utils.train.fit`. With a ``checkpoint_path`` a re-run resumes, and a
        run can be extended by raising ``epochs``.

    The count likelihoods need raw UMI counts; ``fit`` raises ``DataValidationError`` otherwise.
    """

    def __init__(
        self,
        likelihood: str = "poisson",
        hidden: Sequence[int] = (300, 150),
        latent: int = 100,
        age_hidden: Sequence[int] = (20, 20),
        dropout: float = 0.0,
        age_dropout: float = 0.4,
        input_noise: float = 0.0,
        noise_reference: str = "max",
        age_weight: float = 1.0,
        gaussian_variance: str = "gene",
        log_normalize: bool = True,
        target_sum: float = 1e4,
        epochs: int = 100,
        lr: float = 1e-3,
        batch_size: int = 4096,
        kl_schedule="cyclical",
        kl_cycle: dict | None = None,
        lr_schedule: str | None = "cosine_warm_restarts",
        T_0: int = 20,
        early_stopping_patience: int | None = None,
        device: str = "auto",
        seed: int = 0,
        checkpoint_path=None,
        checkpoint_every: int = 10,
        progress: bool = True,
        weight_decay: float = 0.0,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
    ):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}: use one of {', '.join(LIKELIHOODS)}")
        self.likelihood = likelihood
        self.hidden = tuple(int(h) for h in hidden)
        self.latent_dim = int(latent)
        self.age_hidden = tuple(int(h) for h in age_hidden)
        self.dropout = float(dropout)
        self.age_dropout = float(age_dropout)
        self.input_noise = float(input_noise)
        self.noise_reference = noise_reference
        self.age_weight = float(age_weight)
        self.gaussian_variance = gaussian_variance
        self.log_normalize = bool(log_normalize)
        self.target_sum = float(target_sum)
        self.kl_schedule = kl_schedule
        self.kl_cycle = dict(kl_cycle) if kl_cycle else None
        self.lr_schedule = lr_schedule
        self.T_0 = int(T_0)
        self._set_training_options(epochs, lr, batch_size, early_stopping_patience, device, seed,
                                   checkpoint_path, checkpoint_every, progress, weight_decay, max_dense_bytes)

    # -- hooks of TorchAgeRegressor ----------------------------------------------------------------
    def _make_module(self, n_genes: int) -> AgeVAE:
        return AgeVAE(
            n_genes, hidden=self.hidden, latent=self.latent_dim, age_hidden=self.age_hidden,
            likelihood=self.likelihood, dropout=self.dropout, input_noise=self.input_noise,
            noise_reference=self.noise_reference, age_dropout=self.age_dropout, age_weight=self.age_weight,
            gaussian_variance=self.gaussian_variance, log_normalize=self.log_normalize, target_sum=self.target_sum,
        )

    def _check_X(self, X, fitting: bool) -> None:
        if not fitting:
            super()._check_X(X, fitting)
        values = X.data if sp.issparse(X) else X
        if self.likelihood in ("poisson", "nb"):
            if values.size and (values < 0).any():
                raise DataValidationError(
                    f"the {self.likelihood} VAE needs raw UMI counts but X has negative values (min {values.min():g}): "
                    "pass raw UMI counts, or use likelihood='gaussian'"
                )
            if not is_count_matrix(X):
                example = values[values != np.round(values)].ravel()[0]
                raise DataValidationError(
                    f"the {self.likelihood} VAE needs raw UMI counts but X has non-integer values (e.g. {example:g}): "
                    "pass raw UMI counts, or use likelihood='gaussian'"
                )
        elif self.log_normalize and values.size and (values < 0).any():
            raise DataValidationError(
                f"log-normalisation needs non-negative values but X has negatives (min {values.min():g}): "
                "pass raw counts, or set log_normalize=False for already-normalised input"
            )

    def _extras(self, X) -> dict:
        """Per-cell :math:`\\sum_g \\log x_g!` of the count models, from the non-zeros only."""
        if self.likelihood == "gaussian":
            return {}
        from scipy.special import gammaln

        if sp.issparse(X):
            per_entry = sp.csr_matrix((gammaln(X.data.astype(np.float64) + 1.0), X.indices, X.indptr), shape=X.shape)
            return {"log_factorial": np.asarray(per_entry.sum(axis=1)).ravel()}
        rows = range(0, X.shape[0], 4096)  # blocks of rows: no full-size float64 temporary
        return {"log_factorial": np.concatenate(
            [gammaln(np.asarray(X[i : i + 4096], dtype=np.float64) + 1.0).sum(axis=1) for i in rows])}

    def _build_module(self, X, batches: CellBatches) -> AgeVAE:
        module = self._make_module(X.shape[1]).to(batches.device)
        needs_max = self.input_noise > 0 and self.noise_reference == "max"
        if self.likelihood == "gaussian" or needs_max:
            stats = transformed_stats(batches, module.input_transform.unscaled)
            if self.likelihood == "gaussian":
                scale = np.where(stats["std"] > 0, stats["std"], 1.0)  # constant genes map to 0, not NaN
                module.input_transform.set_scaling(stats["mean"], scale)
                encoder_max = float(np.max((stats["max"] - stats["mean"]) / scale))
            else:
                encoder_max = float(np.max(stats["max"]))
            self.encoder_input_max_ = encoder_max
            module.set_noise_reference(encoder_max)
        return module

    def _kl_schedule(self):
        if isinstance(self.kl_schedule, str):
            if self.kl_schedule != "cyclical":
                raise ValueError(
                    f"unknown kl_schedule {self.kl_schedule!r}: use 'cyclical', a number, a callable or None"
                )
            return cyclical_kl_schedule(**(self.kl_cycle or {}))
        return self.kl_schedule

    # -- API ---------------------------------------------------------------------------------------
    def fit(self, X, ages, donors=None, validation=None, library_size=None):
        """Fit on ``X`` (cells x genes; raw counts for the count likelihoods) and per-cell ages (years).

        ``library_size`` (count likelihoods): per-cell offset; default the row sums of ``X`` (the
        genes modelled), as scVI. See :meth:`neuroage_utils.train.TorchAgeRegressor.fit` for
        ``donors`` and ``validation``.
        """
        if library_size is not None and self.likelihood == "gaussian":
            raise ValueError("library_size is used by the count likelihoods only (likelihood='poisson' or 'nb')")
        return super().fit(X, ages, donors=donors, validation=validation, library_size=library_size)

    def predict(self, X) -> np.ndarray:
        """Predicted age (years) per cell, from the deterministic latent layer."""
        return super().predict(X)

    def latent(self, X) -> np.ndarray:
        """Posterior means (cells x latent) for the latent-space figure."""
        batches = self._predict_batches(X)  # checks fitted and X first
        return predict_batches(self.module_, batches, fn=lambda m, x: m.latent(x))

    def architecture_table(self, n_genes: int | None = None) -> pd.DataFrame:
        """:func:`layer_table` of the fitted model, or of a fresh one with ``n_genes`` inputs."""
        if hasattr(self, "module_"):
            return layer_table(self.module_)
        if n_genes is None:
            raise ValueError("architecture_table: fit the model first or pass n_genes")
        return layer_table(self._make_module(int(n_genes)))
