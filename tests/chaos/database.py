"""The campaign's own view of Postgres: a connection that rides out restarts, the audit triggers that record
every job state change and every chunk reaching DONE (with the database clock), and the queries over them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

from tests.fault_services import PrivatePostgres

IN_FLIGHT = ("QUEUED", "PREPARING", "TRANSCRIBING", "FINALIZING")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


class Db:
    """The campaign's own view of Postgres (psycopg2, one connection per thread, reconnects)."""

    def __init__(self, sa_url: str) -> None:
        self.dsn = sa_url.replace("postgresql+psycopg2://", "postgresql://")
        self._local = threading.local()

    def q(self, sql: str, args: tuple = (), tries: int = 3) -> list[tuple]:
        import psycopg2

        for attempt in range(tries):
            conn = getattr(self._local, "conn", None)
            try:
                if conn is None or conn.closed:
                    conn = self._local.conn = psycopg2.connect(self.dsn, connect_timeout=5)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql, args)
                    return cur.fetchall() if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                with contextlib.suppress(Exception):
                    conn.close()
                self._local.conn = None
                if attempt == tries - 1:
                    raise
                time.sleep(0.5)
        return []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._local.conn.close()


AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS chaos_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text NOT NULL,  -- job | chunk_done | chunk_redone | chunk_undone | chunk_deleted_done
    job_id uuid, chunk_id uuid, old_state text, new_state text, info text);
CREATE INDEX IF NOT EXISTS chaos_audit_job ON chaos_audit (job_id, at);
CREATE OR REPLACE FUNCTION chaos_jobs_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO chaos_audit (kind, job_id, new_state) VALUES ('job', NEW.id, NEW.state);
  ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
    INSERT INTO chaos_audit (kind, job_id, old_state, new_state) VALUES ('job', NEW.id, OLD.state, NEW.state);
  END IF;
  RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_jobs_audit ON jobs;
CREATE TRIGGER chaos_jobs_audit AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION chaos_jobs_audit();
CREATE OR REPLACE FUNCTION chaos_chunks_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.state = 'DONE' THEN
      INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state) VALUES ('chunk_deleted_done', OLD.job_id, OLD.id, 'DONE');
    END IF;
    RETURN OLD;
  ELSIF TG_OP = 'INSERT' THEN
    IF NEW.state = 'DONE' THEN
      INSERT INTO chaos_audit (kind, job_id, chunk_id, new_state) VALUES ('chunk_done', NEW.job_id, NEW.id, 'DONE');
    END IF;
  ELSIF NEW.state = 'DONE' AND OLD.state IS DISTINCT FROM 'DONE' THEN
    INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state, new_state, info)
    VALUES ('chunk_done', NEW.job_id, NEW.id, OLD.state, 'DONE', NEW.batch_id::text);
  ELSIF NEW.state = 'DONE' AND OLD.state = 'DONE'
        AND (NEW.text IS DISTINCT FROM OLD.text OR NEW.batch_id IS DISTINCT FROM OLD.batch_id) THEN
    INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state, new_state, info)
    VALUES ('chunk_redone', NEW.job_id, NEW.id, 'DONE', 'DONE', NEW.batch_id::text);
  ELSIF OLD.state = 'DONE' AND NEW.state IS DISTINCT FROM 'DONE' THEN
    INSERT INTO chaos_audit (kind, job_id, chunk_id, old_state, new_state) VALUES ('chunk_undone', NEW.job_id, NEW.id, 'DONE', NEW.state);
  END IF;
  RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_chunks_audit ON chunks;
CREATE TRIGGER chaos_chunks_audit AFTER INSERT OR UPDATE OR DELETE ON chunks
  FOR EACH ROW EXECUTE FUNCTION chaos_chunks_audit();
"""


def create_database(pg: PrivatePostgres, name: str) -> str:
    db = Db(pg.url)
    db.q(f'DROP DATABASE IF EXISTS "{name}"')
    db.q(f'CREATE DATABASE "{name}"')
    db.close()
    url = pg.url.rsplit("/", 1)[0] + f"/{name}"
    from app.db.migrate import upgrade

    upgrade(url)
    Db(url).q(AUDIT_SQL)
    return url


def job_states(db: Db, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(db.q("SELECT id::text, state FROM jobs WHERE id = ANY(%s::uuid[])", (ids,)))


def progress_times(db: Db, ids: list[str]) -> dict[str, list[float]]:
    """Each job's progress events (a state change, or one of its chunks reaching DONE), oldest first."""
    moves: dict[str, list[float]] = defaultdict(list)
    for jid, at in db.q("SELECT job_id::text, extract(epoch from at) FROM chaos_audit WHERE job_id = ANY(%s::uuid[]) "
                        "AND kind IN ('job', 'chunk_done') ORDER BY at", (ids,)):
        moves[jid].append(float(at))
    return moves


def longest_gap(db: Db, ids: list[str]) -> float:
    """Longest wait between two progress events of one job (from its creation) in a run."""
    return max((b - a for times in progress_times(db, ids).values() for a, b in zip(times, times[1:])), default=0.0)
