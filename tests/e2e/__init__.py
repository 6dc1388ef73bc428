"""End-to-end tests: the product as a user runs it, the README's commands and beyond one host (see tests/README.md)."""
