"""Tests of harness/spec: suites, overrides, state budgets, the scale suites."""
