"""Benchmarks, run by hand (never as timing asserts in tests). See bench/README.md for the commands."""
