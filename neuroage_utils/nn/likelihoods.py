"""Likelihoods p(x | z) of the VAE decoders (Gaussian, Poisson, negative binomial), the authors' coded
squared-error reconstruction, and the latent KL."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["GaussianLikelihood", "PoissonLikelihood", "NegativeBinomialLikelihood", "MSEReconstruction",
           "make_likelihood", "kl_standard_normal", "LIKELIHOODS"]

LIKELIHOODS = ("gaussian", "poisson", "nb", "mse")
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


class _PoissonFit(torch.autograd.Function):
    r"""Per cell :math:`f = \sum_g x_g \log\mathrm{softmax}(o)_g = \sum_g x_g (o_g - m) - (\sum_g x_g)\log\sum_g e^{o_g - m}`
    (:math:`m = \max_g o_g`, as log-softmax shifts), with a hand-written backward
    :math:`\partial f / \partial o_g = x_g - (\sum_h x_h)\,\mathrm{softmax}(o)_g`.

    Why: autograd of ``(x * log_softmax(o)).sum(1)`` passes over the cells x genes matrix about eight
    times (log-softmax and its backward each exponentiate every entry; two products with ``x``; sums),
    and on a CPU these passes are, after the matmuls, the largest cost of a Poisson VAE step
    (thread start-ups per pass weigh more still on a loaded machine). Here the forward makes one exp
    pass and keeps its output, the unnormalised softmax, which the backward turns into the gradient in
    place (two passes). ``x`` and ``total`` get no gradient (:meth:`PoissonLikelihood.nll` uses plain
    autograd when they need one); a second backward through the same graph raises (the kept tensor was
    modified), as torch does for any in-place change of a saved tensor.
    """

    @staticmethod
    def forward(ctx, output, x, total):
        shifted = output - output.amax(dim=1, keepdim=True)
        dot = torch.linalg.vecdot(x, shifted)
        expo = shifted.exp_()  # in place: the shifted logits are not needed again
        norm = expo.sum(dim=1)
        ctx.save_for_backward(expo, norm, x, total)
        return dot - total * torch.log(norm)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        expo, norm, x, total = ctx.saved_tensors
        grad_output = expo.mul_((-grad * total / norm).unsqueeze(1))  # -g * total * softmax, in place
        grad_output.addcmul_(x, grad.unsqueeze(1))
        return grad_output, None, None


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

    def nll(self, x, output, library=None, log_factorial=None) -> torch.Tensor:
        """Per-cell :math:`-\\sum_g \\log p(x_{ig})` (see the class docstring); ``library`` None: the
        row sums of ``x`` (computed once, shared with the :math:`\\sum_g x_g` term)."""
        total = x.sum(dim=1)
        if library is None:
            library = total
        if x.requires_grad or total.requires_grad:  # gradients w.r.t. the counts: plain autograd
            fit = (x * torch.log_softmax(output, dim=-1)).sum(dim=1)
        else:
            fit = _PoissonFit.apply(output, x, total)
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

    def nll(self, x, output, library=None, log_factorial=None) -> torch.Tensor:
        """Per-cell :math:`-\\sum_g \\log p(x_{ig})`; ``library`` None: the row sums of ``x``."""
        if library is None:
            library = x.sum(dim=1)
        return -self._log_prob_no_factorial(x, output, library).sum(dim=1) + _per_cell_log_factorial(x, log_factorial)

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}"


class MSEReconstruction(nn.Module):
    r"""The reconstruction the authors' code computes in its "Poisson" VAE: the squared error between
    the decoder output :math:`o` and the encoder's clean input :math:`t`, summed over genes
    (``nn.MSELoss(reduction="sum")`` per cell):

    .. math:: \ell(x) = \sum_g (t_g - o_g)^2

    What it reconstructs is whatever the encoder reads: in :class:`~neuroage_utils.nn.networks.AgeVAE`
    with ``likelihood="mse"`` that is :math:`t = \log(1 + x)` of the counts (the same input as the
    Poisson model, so the Poisson and the coded variant differ only in this term and the optimiser).
    It is not a normalised likelihood: it equals a unit-variance Gaussian NLL times 2 without its
    constant, so it weighs the reconstruction twice as much against the KL and the age terms as that
    Gaussian would. No parameters; the counts are not modelled as counts (``is_count`` False).
    """

    is_count = False

    def __init__(self, n_genes: int):
        super().__init__()
        self.n_genes = int(n_genes)  # for display only: no parameters

    def mean(self, output: torch.Tensor, library: torch.Tensor | None = None) -> torch.Tensor:
        return output

    def nll(self, x, output, library=None, log_factorial=None) -> torch.Tensor:
        """Per-cell :math:`\\sum_g (x_g - o_g)^2` (``x`` is the encoder's clean input)."""
        return ((x - output) ** 2).sum(dim=1)

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}"


def make_likelihood(name: str, n_genes: int, gaussian_variance: str = "gene") -> nn.Module:
    """``"gaussian"`` | ``"poisson"`` | ``"nb"`` | ``"mse"`` -> likelihood module."""
    if name == "gaussian":
        if gaussian_variance not in ("gene", "unit"):
            raise ValueError(f"gaussian_variance must be 'gene' or 'unit', got {gaussian_variance!r}")
        return GaussianLikelihood(n_genes, learn_variance=gaussian_variance == "gene")
    if name == "poisson":
        return PoissonLikelihood(n_genes)
    if name == "nb":
        return NegativeBinomialLikelihood(n_genes)
    if name == "mse":
        return MSEReconstruction(n_genes)
    raise ValueError(f"unknown likelihood {name!r}: use one of {', '.join(LIKELIHOODS)}")


def kl_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    r"""Element-wise KL divergence of the posterior from the prior,

    .. math:: \mathrm{KL}(N(\mu, \sigma^2) \,\|\, N(0, 1)) = \tfrac12(\sigma^2 + \mu^2 - 1 - \log\sigma^2).
    """
    return 0.5 * (var + mu**2 - 1.0 - torch.log(var))
