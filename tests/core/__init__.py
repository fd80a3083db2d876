"""Tests of harness/core: options, precision, fingerprints."""
