"""Tests of neuroage_utils.chapters (one folder per package, as the package is laid out)."""
