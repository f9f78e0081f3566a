"""A real PostgreSQL server for the tests: started once per test session on 127.0.0.1.

It runs PostgreSQL 15's own ``initdb`` and ``pg_ctl`` in a temporary directory, on a free
port, with trust authentication (nothing else can reach 127.0.0.1 here). PostgreSQL refuses
to run as root, so as root the server runs as the ``postgres`` system user. Tests that use
it are skipped, with the reason, where the binaries or the driver are missing.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("CHARBOT_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER = "postgres"  # the unprivileged account the server runs as when we are root
_databases = itertools.count(1)


@dataclass(frozen=True)
class PgServer:
    """A running server: ``url(name)`` is a SQLAlchemy URL for database ``name`` on it."""

    port: int
    user: str = "charbot"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(_databases)}"
        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def skip_reason() -> str | None:
    """Why no server can be started here, or None."""
    if not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL is not installed ({PG_BIN / 'initdb'} is missing)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is missing: pip install 'charbot[postgres]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start PostgreSQL once for the whole session; stopped and deleted at the end."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="charbot-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVER_USER)
        os.chown(root, account.pw_uid, account.pw_gid)
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "charbot"]
        subprocess.run(_as_server_user([*initdb, "--auth=trust", "-E", "UTF8"]), **run)  # type: ignore[call-overload]
        # The socket goes in the temp dir: /var/run/postgresql may not exist or be writable.
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
        start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
        subprocess.run(_as_server_user([*start, "-o", options, "start"]), **run)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}")
    try:
        yield PgServer(port)
    finally:
        stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(_as_server_user(stop), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return pg_server.create_database()
