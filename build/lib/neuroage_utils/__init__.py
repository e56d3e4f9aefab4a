"""NeuroAge: the code behind the executable report on single-cell aging clocks of human neurons.

One module per concern, layers that run one way (see CONTRIBUTING.md): ``errors``, ``paper``,
``results``; ``checks``, ``evaluate``; ``features``, ``profiles``; ``data``, ``simulate``; ``models``
(torch blocks, likelihoods, networks; linear and factorisation models); ``train``; the estimators
``models.mlp`` and ``models.vae``; ``plots``, ``notebook``, ``run``.
"""

import os

# torch's OpenMP threads spin-wait by default; on a small shared CPU (2 cores, a notebook kernel
# beside Sphinx or tests) that made training 10-20x slower. Passive waiting costs nothing when the
# machine is idle. It must be set before torch is first imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
