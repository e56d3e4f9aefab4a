"""Tests of neuroage_utils.train (one folder per package, as the package is laid out)."""
