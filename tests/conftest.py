"""Shared test configuration: hypothesis runs derandomized, so every run (and CI) draws the
same examples and a failure is reproducible; there are no deadlines (shared, noisy machines)."""

from hypothesis import settings

settings.register_profile("dlmath", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("dlmath")
