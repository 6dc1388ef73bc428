"""Integration tests: a real simulator, PostgreSQL or S3 server, Dagster, or the CLI in a subprocess (see tests/README.md)."""
