"""Talking to the PostgreSQL server: the connection, and one line for every way a publish fails there.

A failure to connect names what to fix (the password, the database, the role, pg_hba.conf, the
host and port); a failure in the transaction names what the publish was doing (``step``) and,
for a lock that did not come, who holds it. The password never appears: the server is named
``user@host:port/database`` (:attr:`PostgresTarget.display`).
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

from pipelines.publish.state import PublishState
from pipelines.publish.target import URL_VAR, PublishError
from pipelines.redact import redact

if TYPE_CHECKING:
    import psycopg

LOCK_TIMEOUT_VAR = "VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS"
APPLICATION_NAME = "voicejobs publish"


class Connecting(PublishState):
    """The connection part of a publish (see :mod:`pipelines.publish.postgres`)."""

    def _connect(self) -> psycopg.Connection:
        import psycopg

        options: dict[str, Any] = {"autocommit": True, "application_name": APPLICATION_NAME}
        if "connect_timeout" not in self.target.conninfo:
            options["connect_timeout"] = 10
        try:
            return psycopg.connect(self.target.conninfo, **options)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: BaseException) -> PublishError:
        where, user, db = self.target.display, self.target.role, self.target.database
        text = str(exc)
        lower = text.lower()
        detail = reason(text)
        if "password authentication failed" in lower or "authentication failed" in lower:
            return PublishError(f"PostgreSQL at {where} refused the password of user {user}; set the right password "
                                f"in {URL_VAR} (postgresql://user:password@host/db), PGPASSWORD or ~/.pgpass.")
        if "no password supplied" in lower or "password is required" in lower:
            return PublishError(f"PostgreSQL at {where} asks user {user} for a password and none was given; put it "
                                f"in {URL_VAR} (postgresql://user:password@host/db), PGPASSWORD or ~/.pgpass.")
        if "does not exist" in lower and "database" in lower:
            return PublishError(f"database {db} does not exist at {where}; create it (CREATE DATABASE {db} OWNER "
                                f"{user}) or correct the database name in {URL_VAR}.")
        if "does not exist" in lower and "role" in lower:
            return PublishError(f"user {user} does not exist at {where}; create it (CREATE ROLE {user} LOGIN "
                                f"PASSWORD '...') or correct the user in {URL_VAR}.")
        if "pg_hba.conf" in lower:
            return PublishError(f"PostgreSQL at {where} does not accept connections from this machine for user "
                                f"{user} (pg_hba.conf); ask its administrator to allow them.")
        if "connect privilege" in lower or "permission denied for database" in lower:
            return PublishError(f"user {user} may not connect to database {db} at {where}; as its owner run: "
                                f"GRANT CONNECT ON DATABASE {db} TO {user}.")
        if any(s in lower for s in ("connection refused", "could not translate host name", "timeout expired",
                                     "no route to host", "network is unreachable", "name or service not known",
                                     "could not connect", "connection timed out", "no such file or directory")):
            return PublishError(f"cannot reach PostgreSQL at {where} ({detail}); check the host and port in "
                                f"{URL_VAR} and that the server runs and accepts TCP connections from this machine.")
        return PublishError(f"cannot connect to PostgreSQL at {where} ({detail}); check {URL_VAR}.")

    def _explain(self, conn: psycopg.Connection, exc: BaseException) -> PublishError:
        import psycopg
        from psycopg import errors

        where, user, db = self.target.display, self.target.role, self.target.database
        detail = reason(str(exc))
        unchanged = "nothing was changed"
        if isinstance(exc, errors.LockNotAvailable):
            holders = self._lock_holders(conn)
            return PublishError(
                f"the publish waited {self.lock_timeout:g} s ({LOCK_TIMEOUT_VAR}) while {self.step}, for "
                f"{holders}; {unchanged}; publish again once it is free, or raise {LOCK_TIMEOUT_VAR}.")
        if isinstance(exc, errors.InsufficientPrivilege):
            if self.step.startswith("creating schema"):
                return PublishError(
                    f"user {user} may not create schemas in database {db} at {where} ({detail}); as an owner of the "
                    f"database run: GRANT CREATE ON DATABASE {db} TO {user}; or create the schemas {self.schema} "
                    f"and {self.meta} owned by {user}.")
            return PublishError(
                f"user {user} lacks a privilege while {self.step} at {where} ({detail}); the publisher must own "
                f"the schemas {self.schema} and {self.meta} and their tables: ALTER SCHEMA {self.schema} OWNER TO "
                f"{user} (likewise {self.meta}); {unchanged}.")
        if isinstance(exc, errors.DiskFull | errors.OutOfMemory):
            return PublishError(f"PostgreSQL at {where} ran out of space while {self.step} ({detail}); {unchanged}; "
                                "free space on the server and publish again.")
        if isinstance(exc, psycopg.OperationalError) and conn.closed:
            return PublishError(f"the connection to PostgreSQL at {where} was lost while {self.step} ({detail}); "
                                f"{unchanged} (a publish is one transaction); publish again.")
        return PublishError(f"publishing to PostgreSQL at {where} failed while {self.step} ({detail}); {unchanged}.")

    def _lock_holders(self, conn: psycopg.Connection) -> str:
        """Who holds what the publish waited for (a table, or another publish's lock), from pg_locks."""
        if self.lock_relation is not None:
            what = f"table {self.lock_relation}"
            where, param = "l.relation = to_regclass(%s)", _qualified_text(self.lock_relation)
        elif self.step.startswith("waiting for another publish"):
            what = f"the publish lock of schema {self.schema}"
            where = ("l.locktype = 'advisory' AND l.objsubid = 1"
                     " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%s, 0)")
            param = self._lock_key
        else:
            return "a lock another session holds"
        rows = []
        if not conn.closed:
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, a.xact_start FROM pg_locks l"
                        f" JOIN pg_stat_activity a ON a.pid = l.pid WHERE {where} AND l.granted"
                        " AND a.pid <> pg_backend_pid() ORDER BY a.pid", [param])
                    rows = cur.fetchall()
            except Exception:  # the explanation must not fail on its own
                rows = []
        if not rows:
            return f"{what}, held by another session"
        who = "; ".join(
            f"pid {pid} (user {usename}{', ' + app if app else ''}, {state}"
            f"{' since ' + started.astimezone(UTC).strftime('%H:%M:%S UTC') if started else ''})"
            for pid, usename, app, state, started in rows[:3])
        return f"{what}, held by {who}"


def _qualified_text(relation: str) -> str:
    schema, _, name = relation.partition(".")
    return f'"{schema}"."{name}"'


def reason(text: str) -> str:
    """The useful part of a libpq/PostgreSQL message, on one line, redacted."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    for prefix in ("connection failed:",):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
    if "failed:" in line:
        line = line.split("failed:", 1)[1].strip() or line
    line = line.replace("FATAL:", "").strip()
    return redact(line)[:300]
