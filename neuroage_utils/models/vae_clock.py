"""A VAE-based age clock that learns age from donors, not from cells (beyond the paper).

The paper's VAEs predict age from each cell's latent layer with a head trained jointly on the
training donors' cells. With a few dozen training donors, every cell of a donor carries the same
label, so such a head can learn who a cell came from instead of how old that person is. This clock
applies what the clock literature settled on instead:

1. the VAE is trained **without** the age head's loss (``age_weight=0``): an unsupervised model of
   expression, so its latent space cannot encode donor identity in order to fit ages;
2. each donor's cells are **aggregated**: the mean of their posterior means, one vector per donor;
3. a **donor-level elastic net** (:class:`neuroage_utils.models.probe.LinearProbe`) maps that vector to
   age, its penalty chosen by cross-validation over the training donors.

The likelihood follows the data: Poisson on raw counts, Gaussian (on z-scored values as given)
otherwise. Nothing of a held-out donor is used in fitting: the encoder, the scaling and the elastic
net all see training donors only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from neuroage_utils.data.checks import is_count_matrix
from neuroage_utils.errors import DataValidationError
from neuroage_utils.models.probe import LinearProbe, donor_means
from neuroage_utils.models.vae import VAEAgeRegressor

__all__ = ["VAELatentClock"]


class VAELatentClock:
    """Unsupervised VAE -> donor-mean latent vector -> donor-level elastic net.

    Parameters
    ----------
    likelihood
        ``"auto"`` (Poisson on raw counts, Gaussian otherwise), or a likelihood of
        :class:`~neuroage_utils.models.vae.VAEAgeRegressor`.
    hidden, latent, epochs, lr, batch_size, kl_cycle, T_0
        The VAE (see :class:`~neuroage_utils.models.vae.VAEAgeRegressor`).
    max_cells
        Train the VAE on at most this many training cells (drawn uniformly; the donor means then use
        every training cell).
    probe, probe_alphas, probe_splits
        The donor-level model: ``"elastic_net"`` or ``"ridge"``, its penalty grid and folds.
    """

    def __init__(self, likelihood: str = "auto", hidden=(128, 64), latent: int = 16, epochs: int = 20,
                 lr: float = 1e-3, batch_size: int = 512, kl_cycle: dict | None = None, T_0: int = 10,
                 max_cells: int | None = None, probe: str = "elastic_net", probe_alphas: int = 20,
                 probe_splits: int = 5, device: str = "auto", seed: int = 0, progress: bool = False,
                 amp: bool = False):
        self.likelihood = likelihood
        self.hidden, self.latent_dim, self.epochs = tuple(hidden), int(latent), int(epochs)
        self.lr, self.batch_size, self.kl_cycle, self.T_0 = float(lr), int(batch_size), kl_cycle, int(T_0)
        self.max_cells, self.probe, self.probe_alphas, self.probe_splits = max_cells, probe, probe_alphas, probe_splits
        self.device, self.seed, self.progress = device, int(seed), progress
        self.amp = bool(amp)  # bf16 autocast of the VAE where the device has native bf16

    def _likelihood_for(self, X) -> str:
        if self.likelihood != "auto":
            return self.likelihood
        return "poisson" if is_count_matrix(X) else "gaussian"

    def fit(self, X, ages, donors) -> "VAELatentClock":
        """Fit on the training cells ``X`` (raw counts, or values as given), one age and donor per cell."""
        donors = np.asarray(donors).astype(str)
        ages = np.asarray(ages, dtype=float)
        if X.shape[0] != len(donors) or len(ages) != len(donors):
            raise DataValidationError("VAELatentClock.fit needs one age and one donor per cell")
        self.likelihood_ = self._likelihood_for(X)
        counts = self.likelihood_ != "gaussian"
        rows = np.arange(X.shape[0])
        if self.max_cells is not None and X.shape[0] > self.max_cells:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_cells, replace=False))
        # age_weight=0: the age head's loss is multiplied by 0, so no gradient carries age into the
        # encoder; the VAE is a plain unsupervised model of expression.
        self.vae_ = VAEAgeRegressor(
            likelihood=self.likelihood_, hidden=self.hidden, latent=self.latent_dim, age_weight=0.0,
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, kl_schedule="cyclical",
            kl_cycle=self.kl_cycle, T_0=self.T_0, log_normalize=counts, device=self.device, seed=self.seed,
            progress=self.progress, checkpoint_path=None, amp=self.amp,
        )
        self.vae_.fit(X[rows], ages[rows], donors=donors[rows])
        Z = self.vae_.latent(X)
        F, ids = donor_means(Z, donors)
        donor_age = pd.Series(ages, index=donors).groupby(level=0).first().loc[ids].to_numpy()
        self.probe_ = LinearProbe(kind=self.probe, n_alphas=self.probe_alphas,
                                  n_splits=self.probe_splits, seed=self.seed).fit(F, donor_age)
        self.latent_mean_ = Z.mean(axis=0)
        self.train_donors_ = ids
        self.n_cells_vae_ = int(len(rows))
        return self

    def predict_donors(self, X, donors) -> pd.Series:
        """Predicted age per donor from the mean latent vector of the donor's cells."""
        if not hasattr(self, "probe_"):
            raise RuntimeError("VAELatentClock is not fitted yet: call fit(X, ages, donors) first")
        F, ids = donor_means(self.vae_.latent(X), np.asarray(donors).astype(str))
        return pd.Series(self.probe_.predict(F), index=pd.Index(ids, name="donor_id"), name="predicted")

    def gene_age_scores(self, years: float = 10.0) -> np.ndarray:
        """How much each gene's decoded expression moves along the latent age direction.

        The elastic net's weights ``w`` define a direction in latent space; moving the mean latent
        vector by ``±years / |w|^2 * w`` changes the predicted age by ``±years``. The score of a gene
        is the absolute change of its decoder output between the two points (log-proportion for the
        count likelihoods, z-scored expression for the Gaussian). All zeros when the elastic net kept
        no latent dimension.
        """
        w = self.probe_.direction_
        norm2 = float(w @ w)
        if norm2 == 0:
            return np.zeros(self.vae_.n_features_)
        module = self.vae_.module_
        step = torch.as_tensor(w * (years / norm2), dtype=torch.float32, device=self.vae_.device_)
        z0 = torch.as_tensor(self.latent_mean_, dtype=torch.float32, device=self.vae_.device_)
        module.eval()
        with torch.no_grad():
            out = module.decoder(torch.stack([z0 + step, z0 - step]))
            if module.likelihood.is_count:
                out = torch.log_softmax(out, dim=-1)
        return (out[0] - out[1]).abs().cpu().numpy().astype(float)
