"""A throwaway PostgreSQL server for tests and benchmarks: a test tool, not part of the product.

Debian's ``postgresql`` package provides the binaries (``bash scripts/install-postgres.sh``);
this module runs ``initdb`` into a temporary directory and starts the server on a free
loopback port with its socket in that directory, so it never touches the system cluster::

    with TemporaryPostgres() as pg:
        pg.url()                    # postgresql://postgres:<password>@127.0.0.1:<port>/postgres
        pg.url(user="bi", password="x", dbname="analytics")
        pg.execute("CREATE ROLE bi LOGIN PASSWORD 'x'")

The server refuses to run as root, so as root every server command runs as the ``postgres``
user (``runuser``) and the directory is handed to it. Authentication: the Unix socket trusts
(setup only), TCP on 127.0.0.1 asks for a password (scram-sha-256), so a wrong password is
refused as it would be on a real server. The superuser ``postgres`` gets a random password.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

INSTALL_HINT = "run `bash scripts/install-postgres.sh` (as root) to install the PostgreSQL server"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed here."""


def server_bin_dir() -> Path:
    """The newest installed server's bin directory (Debian's layout), or PostgresUnavailable."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if not found:
        on_path = shutil.which("initdb")
        if on_path:
            return Path(on_path).parent
        raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) found; {INSTALL_HINT}")
    return found[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    """One PostgreSQL server in a temporary directory, stopped and removed by :meth:`stop`."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bin_dir = server_bin_dir()
        # Tests trade durability for speed (fsync off); a benchmark keeps PostgreSQL's defaults.
        self.durable = durable
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.root: Path | None = None
        self._as_root = os.geteuid() == 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TemporaryPostgres:
        self.root = Path(tempfile.mkdtemp(prefix="voicejobs-pg-"))
        data, sock, log = self.root / "data", self.root / "sock", self.root / "server.log"
        sock.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, sock, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._run("initdb", "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "-E", "UTF8",
                      "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256")
            pwfile.unlink()
            (data / "pg_hba.conf").write_text(
                "local all all trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            self.port = free_port()
            options = f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=50"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            self._run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
        except BaseException:
            self.stop()
            raise
        self.socket_dir = sock
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(self._command("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"),
                           capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ use

    def url(self, *, user: str = "postgres", password: str | None = None, dbname: str = "postgres",
            port: int | None = None) -> str:
        """A libpq URL for TCP on 127.0.0.1 (the superuser's password unless told otherwise)."""
        secret = self.password if password is None and user == "postgres" else password
        auth = quote(user, safe="") + (f":{quote(secret, safe='')}" if secret else "")
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs):
        """A psycopg connection as the superuser (autocommit unless told otherwise)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url(dbname=dbname), **kwargs)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        """A new empty database owned by the superuser; returns its name."""
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    # ------------------------------------------------------------------ helpers

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *command] if self._as_root else command

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(self._command(tool, *args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.root / "server.log" if self.root else None
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}{tail}")


# ---------------------------------------------------------------------- pytest fixtures


def running_server():
    """A started server, stopped when the generator closes. Missing binaries fail the tests
    that need them (never a skip: a skipped test would hide that PostgreSQL serving went untested)."""
    try:
        server = TemporaryPostgres()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole test session, stopped at its end."""
    yield from running_server()
