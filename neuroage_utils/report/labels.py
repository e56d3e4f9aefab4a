"""Display names of model keys, for tables and figures (one place to rename a model for readers)."""

__all__ = ["MODEL_NAMES", "MODEL_LABELS"]

#: Names on the simulated-cohort pages.
MODEL_NAMES = {
    "null": "null (training mean)",
    "elastic_net": "elastic net (cells)",
    "pseudobulk_elastic_net": "pseudobulk elastic net",
    "pseudocell_elastic_net": "pseudocell elastic net",
    "svd_ridge": "SVD + ridge (donor means)",
    "mlp": "MLP (cells)",
    "nmf_mlp": "NMF + MLP",
    "vae_latent_pseudobulk": "VAE clock (latent means + elastic net)",
    "vae_poisson": "Poisson VAE (paper's model)",
    "vae_gaussian": "Gaussian VAE",
    "vae_nb": "negative-binomial VAE",
    "dae": "denoising VAE",
    "dae_poisson": "denoising Poisson VAE",
}

#: Names on the real-donor page (donor-level profiles: no cell-level models).
MODEL_LABELS = {
    "null": "null (training mean)",
    "elastic_net": "elastic net",
    "mlp": "MLP",
    "svd_ridge": "SVD + ridge",
    "nmf_mlp": "NMF + MLP",
    "vae_gaussian": "Gaussian VAE (age head)",
    "published_clock": "published clock (grnimmuneclock)",
}
