"""Tests of harness/sources: the commonsense files and their fetch."""
