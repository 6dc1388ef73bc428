"""Publishing the serving snapshot to other databases, knowing nothing of Dagster.

:func:`pipelines.publish.postgres.publish` copies the analytics relations to PostgreSQL for
BI tools on other hosts: atomically, incrementally, readers never blocked (see that module).
"""

from pipelines.publish.postgres import PublishReport, TablePublish, publish
from pipelines.publish.target import PostgresTarget, PublishError, parse_postgres_url

__all__ = ["PostgresTarget", "PublishError", "PublishReport", "TablePublish", "parse_postgres_url", "publish"]
