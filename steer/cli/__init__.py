"""The ``steer`` command line: the only place that loads pipelines from disk (`steer.cli.loading`)."""
