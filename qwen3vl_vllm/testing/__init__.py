"""What the tests and benchmarks measure against: tiny random checkpoints (``checkpoint``) and
the independent reference (``reference``, which imports nothing of the package)."""
