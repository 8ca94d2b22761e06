"""Benchmarks: each script runs radfusion and the peer it is compared with in one run and prints ratios."""
