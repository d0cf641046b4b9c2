"""hypothesis for the property tests, or, where it is not installed, skips.

The test extra installs hypothesis. The GPU image runs the suite with its
own packages (``benchmarks/gpu_check.sh``): without hypothesis there, only
the property tests skip, saying why, instead of their whole modules failing
to import.
"""

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:
    import pytest

    class _Absent:
        """Stands for any strategy: every attribute and call gives itself."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

    st = _Absent()

    def given(*args, **kwargs):
        return pytest.mark.skip(reason="needs hypothesis (pip install '.[test]')")

    def settings(*args, **kwargs):
        return lambda test: test


__all__ = ["given", "settings", "st"]
