"""Age models. Import from the submodules (``models.mlp``, ``models.vae``, ``models.linear``, ...):
the torch models are not imported here so that ``import neuroage_utils.models.linear`` does not pay
for ``import torch``."""
