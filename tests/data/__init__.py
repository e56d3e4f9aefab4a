"""Tests of neuroage_utils.data (one folder per package, as the package is laid out)."""
