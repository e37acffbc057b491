"""PostgreSQL of the production profile: an external server, never started or stopped here.

`up` creates the databases the platform needs when they are missing (idempotent);
`down` leaves them, and the server, alone.
"""

from __future__ import annotations

import re
from typing import Any

from dualmedia.settings import Settings
from dualmedia.stack.base import StackError

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def masked(url: str) -> str:
    """A database URL fit for status output and errors: any password replaced."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def platform_databases(settings: Settings) -> list[str]:
    return [settings.postgres_airflow_db, settings.postgres_mlflow_db, settings.postgres_feast_db]


def _connect(settings: Settings, database: str = "postgres") -> Any:
    import psycopg2

    url = settings.postgres_database_url(database)
    try:
        conn = psycopg2.connect(url, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackError(
            f"PostgreSQL at {masked(url)} does not answer ({first}); start it or set "
            f"DUALMEDIA_POSTGRES_URL"
        ) from None
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


def is_reachable(settings: Settings) -> bool:
    try:
        _connect(settings).close()
    except StackError:
        return False
    return True


def ensure_database(settings: Settings, name: str) -> bool:
    """Create database `name` when missing; True when it was created now."""
    if not _NAME.match(name):
        raise StackError(f"invalid PostgreSQL database name {name!r}")
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            try:
                cur.execute(f'CREATE DATABASE "{name}"')
            except Exception as exc:  # a concurrent `up` created it first
                if getattr(exc, "pgcode", None) == "42P04":  # duplicate_database
                    return False
                raise StackError(f"cannot create PostgreSQL database {name!r}: {exc}") from None
            return True
    finally:
        conn.close()


def ensure_databases(settings: Settings) -> list[str]:
    """Every database the platform needs; returns those created now."""
    return [name for name in platform_databases(settings) if ensure_database(settings, name)]


def drop_database(settings: Settings, name: str) -> None:
    """Drop a database (tests clean up with this; the platform never drops one)."""
    if not _NAME.match(name):
        raise StackError(f"invalid PostgreSQL database name {name!r}")
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def query(settings: Settings, database: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one read-only query (status checks and tests read state with this)."""
    conn = _connect(settings, database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()
