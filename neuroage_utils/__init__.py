"""NeuroAge: the code behind the executable report on single-cell aging clocks of human neurons.

One module per concern (see CONTRIBUTING.md): ``data``, ``simulate``, ``evaluate``, ``results``,
``profiles``, ``paper``, ``models``, ``train``, ``plots``, ``notebook``, ``run``.
"""

__version__ = "0.1.0"
