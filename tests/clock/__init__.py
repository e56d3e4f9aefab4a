"""Tests of neuroage_utils.clock (one folder per package, as the package is laid out)."""
