"""Opening a database from ``[storage] url``, with failures explained as one line each.

Every way a URL can fail to give a usable database — malformed, a driver not installed, a
path that cannot be written, a file that is not a database, a server that refuses — becomes
a :class:`StorageError` naming ``[storage] url`` and the fix, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError

from storage.errors import StorageError

_DRIVER_EXTRAS = {"postgresql": "postgres", "psycopg": "postgres", "psycopg2": "postgres"}


def _safe(url: str) -> str:
    """The URL with any password hidden (it may carry one; errors are printed)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # malformed: say nothing of what is after the scheme's user part
        return url.split("@")[-1] if "@" in url else url


def open_engine(
    url: str, parsed: URL | None, *, lock_timeout_s: float | None = None
) -> tuple[Engine, bool]:
    """An engine for ``parsed`` (the store's blocking driver); whether it is SQLite.
    ``lock_timeout_s``: on PostgreSQL, how long a statement waits for a lock before it
    fails (and the store retries it); without it a lock held elsewhere blocks forever.
    Raises StorageError for a malformed URL, a missing driver or an unusable path."""
    if parsed is None:
        raise StorageError(
            f"[storage] url: {_safe(url)!r} is not a database URL; write e.g. "
            "'sqlite:///data/charbot.db' or 'postgresql://user@host/charbot'"
        )
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        _check_sqlite_path(Path(parsed.database))
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and lock_timeout_s is not None:
        # libpq's options (both psycopg drivers): a session setting from the first
        # statement on, which no rollback undoes; added to any the URL already gives.
        given = parsed.query.get("options", "")
        given = given if isinstance(given, str) else " ".join(given)
        timeout = f"-c lock_timeout={max(1, round(lock_timeout_s * 1000))}"
        connect_args["options"] = f"{given} {timeout}".strip()
    try:
        return create_engine(parsed, connect_args=connect_args), sqlite
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise _missing_driver(url, parsed, exc) from None
    except ArgumentError as exc:
        raise StorageError(f"[storage] url: {_safe(url)!r} is not usable: {exc}") from None


def _check_sqlite_path(path: Path) -> None:
    where = path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"[storage] url: cannot create the directory {where} ({exc.strerror}); "
            "point the url at a writable path"
        ) from None
    if path.is_dir():
        raise StorageError(f"[storage] url: {path} is a directory; name a database file in it")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(where, os.W_OK)
    if not writable:
        raise StorageError(
            f"[storage] url: {path} is not writable by this user; fix its permissions "
            "or point the url at a writable path"
        )


def _missing_driver(url: str, parsed: URL, exc: BaseException) -> StorageError:
    backend, _, driver = parsed.drivername.partition("+")  # not get_driver_name(): it loads
    extra = _DRIVER_EXTRAS.get(backend) or _DRIVER_EXTRAS.get(driver)
    fix = (
        f"pip install 'charbot[{extra}]'"
        if extra
        else f"install the database driver for {parsed.drivername!r}"
    )
    return StorageError(f"[storage] url: no driver for {parsed.drivername!r} ({exc}); {fix}")


def explain(url: str, exc: BaseException) -> StorageError:
    """A one-line StorageError for a failure while first connecting and migrating."""
    if isinstance(exc, ModuleNotFoundError | ImportError):
        from sqlalchemy.engine import make_url

        return _missing_driver(url, make_url(url), exc)
    detail = _first_line(exc)
    if isinstance(exc, DatabaseError):
        lowered = detail.lower()
        if "file is not a database" in lowered or "file is encrypted" in lowered:
            return StorageError(
                f"[storage] url: {_safe(url)} is not a SQLite database (file is not a "
                "database); point the url at another file or move that one away"
            )
        if "unable to open database file" in lowered or "readonly" in lowered:
            return StorageError(
                f"[storage] url: cannot open {_safe(url)} for writing ({detail}); "
                "point the url at a writable path"
            )
        if "connection refused" in lowered or "could not connect" in lowered:
            return StorageError(
                f"[storage] url: the database server refused the connection ({detail}); "
                "start the server or fix the host and port in the url"
            )
        return StorageError(f"[storage] url: cannot use {_safe(url)}: {detail}")
    return StorageError(f"[storage] url: cannot open {_safe(url)}: {type(exc).__name__}: {detail}")


def _first_line(exc: BaseException) -> str:
    orig: Any = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
