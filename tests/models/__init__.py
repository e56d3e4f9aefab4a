"""Tests of neuroage_utils.models (one folder per package, as the package is laid out)."""
