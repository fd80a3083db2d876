"""Built-in suite definitions (`*.yaml`), read as data by `harness.config.load_suite`."""
