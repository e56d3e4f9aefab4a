"""The clock in users' hands: fit, save and apply an age clock (``Clock``), and the ``neuroage`` command."""

from neuroage_utils.clock.alignment import GeneOverlapWarning
from neuroage_utils.clock.clock import Clock

__all__ = ["Clock", "GeneOverlapWarning"]
