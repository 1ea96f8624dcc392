"""Helpers for tests and benchmarks: throwaway real servers on 127.0.0.1."""
