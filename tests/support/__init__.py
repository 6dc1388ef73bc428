"""Tools for tests (servers that misbehave on purpose); not part of the product."""
