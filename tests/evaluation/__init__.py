"""Tests of neuroage_utils.evaluation (one folder per package, as the package is laid out)."""
