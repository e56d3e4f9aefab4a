r"""The torch networks: the age MLP and the VAE family (encoder, decoder, age head, input noise).

The age MLP (:class:`AgeMLP`): (Linear -> BatchNorm1d -> ReLU -> Dropout) blocks, then Linear(1), trained
on the mean squared error of the z-scored age.


One model, :class:`AgeVAE`, covers the paper's standard VAE (``likelihood="gaussian"``), its Poisson
VAE (``"poisson"``), the negative-binomial VAE it proposes as the next step (``"nb"``), the
denoising VAE (``input_noise > 0``) and the reconstruction the authors' code runs for its "Poisson"
VAE (``"mse"``: summed squared error on :math:`\log(1+x)`; with ``optimizer="authors"`` in the
training loop, SGD for the autoencoder and Adam for the age head). The architecture follows the authors' code (see
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

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from neuroage_utils.nn.blocks import InputTransform, mlp_blocks
from neuroage_utils.nn.likelihoods import LIKELIHOODS, kl_standard_normal, make_likelihood

__all__ = ["AgeMLP", "AgeVAE", "layer_table"]


class AgeMLP(nn.Module):
    r"""Age regressor :math:`\hat y = f(T(x))`: ``input_transform`` T, MLP blocks, then Linear(1).

    ``loss`` is :math:`\frac1n \sum_i (\hat y_i - y_i)^2` on the scaled age :math:`y`; ``kl_weight``
    is accepted for the training-loop interface and ignored.
    """

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (500, 500), dropout: float = 0.4):
        super().__init__()
        if n_inputs < 1:
            raise ValueError(f"AgeMLP needs at least one input feature, got {n_inputs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_inputs = int(n_inputs)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.input_transform = InputTransform(n_inputs)  # identity until set_scaling
        last = self.hidden[-1] if self.hidden else self.n_inputs
        self.layers = nn.Sequential(*mlp_blocks(n_inputs, self.hidden, dropout), nn.Linear(last, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.input_transform(x)).squeeze(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def loss(self, batch: dict, kl_weight: float = 0.0) -> dict:
        mse = F.mse_loss(self.forward(batch["x"]), batch["y"])
        return {"loss": mse, "mse": mse}


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
        else:  # the count models and the authors' coded MSE variant read log(1 + x)
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

    def optimiser_groups(self) -> dict:
        """``{"autoencoder": [...], "age_head": [...]}``: the age head's parameters and all others
        (encoder, posterior heads, decoder, likelihood), for the authors' SGD + Adam optimisers."""
        head = list(self.age_head.parameters())
        ids = {id(p) for p in head}
        return {"autoencoder": [p for p in self.parameters() if id(p) not in ids], "age_head": head}

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
        # The likelihood and the KL in float32 even under mixed precision (bf16 autocast): sums over
        # thousands of genes and log-softmaxes lose too much in bf16. Without autocast the casts are
        # no-ops and nothing changes.
        with torch.autocast(device_type=x.device.type, enabled=False):
            output, mu, var = output.float(), mu.float(), var.float()
            if self.likelihood.is_count:
                # no library given: the likelihood takes the row sums, once (the Poisson reuses them)
                nll = self.likelihood.nll(x, output, batch.get("library"), batch.get("log_factorial"))
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
