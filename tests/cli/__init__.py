"""Tests of harness/cli.py: the bench command end to end."""
