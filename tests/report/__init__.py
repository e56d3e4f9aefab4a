"""Tests of neuroage_utils.report (one folder per package, as the package is laid out)."""
