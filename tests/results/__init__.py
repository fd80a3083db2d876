"""Tests of harness/results: rows, results.jsonl and damaged files."""
