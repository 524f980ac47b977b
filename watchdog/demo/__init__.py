"""A small sample ERP backend with switchable faults, for tests, the demo and benchmarks."""
