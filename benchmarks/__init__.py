"""The angela-queue benchmark suite: ``python -m benchmarks [--quick]``.

Not part of the unit suite: it measures and reports, and never asserts a
timing. See benchmarks/README.md.
"""
