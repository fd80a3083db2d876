"""Tests of methods/: each method against an independent reference."""
