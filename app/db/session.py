"""Engine and session factory, created lazily from settings (never at import time)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.settings import get_settings


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL lets the API read while a worker writes; foreign keys make ON DELETE CASCADE work
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pre_ping survives a Postgres restart: a dead pooled connection is replaced, not handed out
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800)


_factories: dict[str, sessionmaker[Session]] = {}


def session_factory() -> sessionmaker[Session]:
    url = get_settings().database_url
    if url not in _factories:
        _factories[url] = sessionmaker(make_engine(url), expire_on_commit=False)
    return _factories[url]


def reset_engines() -> None:
    """Drop pooled connections: after a fork (children must not share sockets) or a settings change."""
    for maker in _factories.values():
        maker.kw["bind"].dispose(close=False)
    _factories.clear()


@contextmanager
def session_scope() -> Iterator[Session]:
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def relax_commit(session: Session) -> None:
    """Let this transaction's commit return before the WAL reaches the disk (Postgres; elsewhere nothing).

    Only for writes whose loss in a crash of the database server itself costs at most work done again,
    never a result: a chunk's claim, the attempt counted when its batch starts, a heartbeat's renewal (a
    lost claim or renewal lets another worker run the chunk too, and its claim id fences the first one
    off; a lost attempt is one more try). Results, failures and job moves keep the synchronous commit.
    Measured on the transcribe worker's path, 2 loaded cores: the start of a batch took 52 ms (median)
    waiting for its commit's fsync, the accelerator idle meanwhile."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
