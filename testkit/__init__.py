"""Helpers shared by the test suite and the benchmarks; the application never imports them."""
