"""A submission whose commit outcome is unknown (the database went away as it answered) keeps its upload:
the job row may exist, and a client's retry with the same Idempotency-Key is then answered with that job,
which must still have its audio (real Postgres and S3; the API in-process)."""

from __future__ import annotations

from tests.pg_api import pg_api  # noqa: F401  (fixture)
from tests.services import AUDIO


def test_an_upload_committed_as_the_database_went_away_keeps_its_audio(pg_api, monkeypatch):  # noqa: F811
    """The chaos soak (seed 7, quick) found a job created as Postgres restarted, answered 503, whose row had
    been committed but whose upload the API deleted: the retry with the same Idempotency-Key got that job,
    and its prepare failed it with "the uploaded file is no longer in storage"."""
    from sqlalchemy.exc import OperationalError

    from app.api import routes_jobs

    real = routes_jobs.submit_one

    def committed_then_connection_lost(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kw)  # the row is committed ...
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))  # ... unseen

    data = (AUDIO / "en_sr_one_two_three.wav").read_bytes()
    headers = {**pg_api.auth, "Idempotency-Key": "retry-me"}
    monkeypatch.setattr(routes_jobs, "submit_one", committed_then_connection_lost)
    first = pg_api.c.post("/v1/jobs", headers=headers, files={"file": ("talk.wav", data, "audio/wav")})
    assert first.status_code == 503, first.text
    monkeypatch.setattr(routes_jobs, "submit_one", real)
    again = pg_api.c.post("/v1/jobs", headers=headers, files={"file": ("talk.wav", data, "audio/wav")})
    assert again.status_code == 200, again.text  # the replay: the job the first request committed
    job_id = again.json()["id"]
    assert [k for k in pg_api.keys(job_id) if k.startswith("source")], pg_api.keys(job_id)
