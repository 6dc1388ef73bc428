"""Where a publish goes: the PostgreSQL connection string, parsed once, and the publish's error.

The connection string is a libpq URL (``postgresql://user[:password]@host[:port]/database``,
query parameters such as ``sslmode=require`` allowed) or a ``key=value`` string. Its password
is a secret: it is registered with :mod:`pipelines.redact` the moment the string is parsed,
and every text this package produces names the server as :attr:`PostgresTarget.display`
(``user@host:port/database``), never the string itself. A password may also come from
``PGPASSWORD`` or ``~/.pgpass``, which libpq reads on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pipelines.redact import redact, register_secret

URL_VAR = "VOICEJOBS_POSTGRES_URL"
URL_SHAPE = "postgresql://user@host:5432/database (password in the URL, PGPASSWORD or ~/.pgpass)"


class PublishError(Exception):
    """A publish that cannot be done: one line naming the cause and the fix, secrets redacted.

    Nothing was changed in PostgreSQL (the publish is one transaction) nor in the warehouse
    (a publish only reads the serving snapshot)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(" ".join(str(message).split())))


@dataclass(frozen=True)
class PostgresTarget:
    """The parsed connection string; ``conninfo`` keeps it whole for libpq (hidden from repr)."""

    conninfo: str = field(repr=False)
    user: str | None
    host: str | None
    port: int | None
    dbname: str | None
    has_password: bool = False

    @property
    def display(self) -> str:
        """``user@host:port/database`` with libpq's defaults filled in: safe for any message."""
        user = self.user or os.environ.get("PGUSER") or "(default user)"
        host = self.host or os.environ.get("PGHOST") or "localhost"
        if host.startswith("/"):
            host = f"socket {host}"
        port = self.port or os.environ.get("PGPORT") or 5432
        dbname = self.dbname or os.environ.get("PGDATABASE") or self.user or "(default database)"
        return f"{user}@{host}:{port}/{dbname}"

    @property
    def role(self) -> str:
        return self.user or os.environ.get("PGUSER") or "(the default user)"

    @property
    def database(self) -> str:
        return self.dbname or os.environ.get("PGDATABASE") or self.user or "(the default database)"


def parse_postgres_url(url: str) -> PostgresTarget:
    """Parse ``url`` and register its password (and the whole string) as secrets.

    A malformed string raises PublishError, whose text never repeats the string."""
    from psycopg.conninfo import conninfo_to_dict

    text = (url or "").strip()
    register_secret(text)
    register_secret(os.environ.get("PGPASSWORD"))
    if not text:
        raise PublishError(f"{URL_VAR} is not set; set it to {URL_SHAPE}.")
    try:
        params = conninfo_to_dict(text)
    except Exception:  # psycopg.ProgrammingError, whose message may quote the string
        raise PublishError(f"{URL_VAR} is not a PostgreSQL connection URL; write it as {URL_SHAPE}.") from None
    password = params.get("password")
    register_secret(str(password) if password else None)
    port = params.get("port")
    if port is not None and not str(port).isdigit():
        raise PublishError(f"{URL_VAR} has a port that is not a number; write it as {URL_SHAPE}.")
    host = params.get("host") or params.get("hostaddr")
    return PostgresTarget(
        conninfo=text,
        user=params.get("user") or None,
        host=str(host) if host else None,
        port=int(port) if port else None,
        dbname=params.get("dbname") or None,
        has_password=bool(password),
    )
