"""Unit tests: one module or function each, no server and no subprocess (see tests/README.md)."""
