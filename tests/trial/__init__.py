"""Tests of harness/trial: models, data, the loop, evaluation, the worker."""
