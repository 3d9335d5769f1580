"""Database engine, sessions, and the schema version check.

``engine_for(url)`` returns one engine per URL *per process*: after a fork
(RQ's work horse, gunicorn workers) the child gets a fresh pool instead of
sharing the parent's sockets. SQLite runs in WAL mode with a busy timeout so
web, scheduler and workers can share the file. ``upgrade()`` runs the Alembic
migrations; ``require_current_schema()`` refuses to run on an older schema.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from .errors import ConfigError, NotMigratedError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_engines: dict[tuple[int, str], Engine] = {}


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def engine_for(url: str) -> Engine:
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _create_engine(normalise_url(url))
        _engines[key] = engine
    return engine


def _create_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            return engine
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"NURTURE_DATABASE_URL: {url!r} is not usable: {exc}") from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Python's sqlite3 opens transactions lazily and only for DML; we issue BEGIN
    # IMMEDIATE ourselves (the "begin" listener) so a claim takes the write lock
    # up front instead of failing on upgrade from a read lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def is_postgresql(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine_for(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _alembic_config(url: str):
    from alembic.config import Config

    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = normalise_url(url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current_schema(url: str) -> None:
    """Raise ``NotMigratedError`` naming the command to run unless the schema is at head."""
    try:
        current = current_revision(url)
    except sa.exc.OperationalError as exc:
        raise NotMigratedError(f"cannot open the database {url!r}: {exc.orig}") from None
    head = head_revision()
    if current != head:
        state = "has no nurture schema" if current is None else f"is at revision {current}, the code needs {head}"
        raise NotMigratedError(f"the database {state}: run `nurture db upgrade` first")
