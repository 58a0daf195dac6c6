"""Job-end webhooks on the whole stack: signed per Standard Webhooks with the tenant's secret, sent for
COMPLETED, FAILED and CANCELLED from rows written with the job's last state, retried by the beat with
backoff, kept across a worker killed with SIGKILL, and every try visible on the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from tests.conftest import REDIS_TEST_DB
from tests.services import AUDIO, Receiver, json_body, observed_stack, wait_job, wait_until

pytestmark = pytest.mark.slow

CLIP = AUDIO / "en_sr_one_two_three.wav"
MAX_TRIES = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3):
    env = {"ASRQ_WEBHOOK_RETRY_SCHEDULE_S": "0.3,0.6", "ASRQ_WEBHOOK_SWEEP_INTERVAL_S": "0.5",
           "ASRQ_WEBHOOK_MAX_TRIES": str(MAX_TRIES), "ASRQ_WEBHOOK_TIMEOUT_S": "2"}
    with observed_stack(tmp_path_factory.mktemp("hooks"), s3[0], REDIS_TEST_DB, env) as st:
        yield st


@pytest.fixture(scope="module")
def secret(stack):
    out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "webhook-secret", "--tenant", "acme"],
                         env=stack.env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert out.startswith("whsec_")
    again = subprocess.run([sys.executable, "-m", "app.cli", "keys", "webhook-secret", "--tenant", "acme"],
                           env=stack.env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert again == out  # made once, then the same one
    return out


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    """SQLite and the filesystem broker in tmp_path (the embedded mode: no SKIP LOCKED there)."""
    from app import storage
    from app.db import session
    from app.db.migrate import upgrade
    from app.settings import get_settings
    from tests.services import fresh_celery_app

    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASRQ_DATABASE_URL", f"sqlite:///{tmp_path / 'asrq.db'}")
    monkeypatch.setenv("ASRQ_BROKER_URL", f"filesystem://{tmp_path / 'broker'}")
    monkeypatch.setenv("ASRQ_STORAGE_URL", f"file://{tmp_path / 'objects'}")
    monkeypatch.setenv("ASRQ_ALLOW_PRIVATE_SOURCES", "true")

    def reset() -> None:
        get_settings.cache_clear()
        session.reset_engines()
        storage._store.cache_clear()

    reset()
    upgrade(get_settings().database_url)
    try:
        with fresh_celery_app():
            yield tmp_path
    finally:
        monkeypatch.undo()
        reset()


def test_a_lost_message_or_a_duplicate_try_neither_loses_nor_doubles_a_delivery(embedded):
    from datetime import timedelta

    from sqlalchemy import update

    from app.db.models import JobState, WebhookDelivery, utcnow
    from app.db.session import session_scope
    from app.jobs import NewJob, create_job
    from app.lifecycle import note_job_end
    from app.schemas import JobOptions
    from app.settings import get_settings
    from app.webhooks import dispatch_due
    from workers.webhooks import deliver

    settings = get_settings()
    rx = Receiver()
    try:
        with session_scope() as s:
            job, _ = create_job(s, "acme", NewJob("s3://b/a.wav", "a.wav", JobOptions(), rx.url("/h")), settings)
            jid = job.id
            note_job_end(s, jid, JobState.COMPLETED)
        with session_scope() as s:
            due = dispatch_due(s, settings)
            assert [n for _, n in due] == [1]
            assert dispatch_due(s, settings) == []  # sent: held for its claim period, not sent again
            # the message was lost: once the claim period is over the row is due again, same try number
            s.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            s.commit()
            assert dispatch_due(s, settings) == due
            delivery_id = uuid.UUID(due[0][0])
            assert deliver(s, delivery_id, 1, settings).outcome == "delivered"
            assert deliver(s, delivery_id, 1, settings) is None  # the duplicate message makes no POST
            assert deliver(s, delivery_id, 2, settings) is None  # nor does any later one
        assert len(rx.on("/h")) == 1
    finally:
        rx.close()


def _hooks(c, job_id: str) -> list[dict]:  # noqa: ANN001
    r = c.http.get(f"/v1/jobs/{job_id}/webhooks")
    assert r.status_code == 200, r.text
    return r.json()["webhooks"]


def test_completed_webhook_is_signed_and_retried_until_accepted(stack, secret):
    rx = Receiver(secret, refuse=lambda path, n: n <= 2)
    try:
        with stack.client() as c:
            jid = c.submit_file(CLIP, {"webhook_url": rx.url("/done")})["id"]
            assert wait_job(c, jid)["state"] == "COMPLETED", stack.logs()
            wait_until(lambda: len(rx.on("/done")) >= 3, 60, what=f"3 tries\n{stack.logs()}")
            tries = rx.on("/done")
            assert [t["status"] for t in tries] == [500, 500, 204]
            assert all(t["verified"] for t in tries), [t["headers"] for t in tries]
            assert len({t["headers"]["webhook-id"] for t in tries}) == 1  # one message, retried
            doc = json_body(tries[0])
            assert doc["type"] == "job.completed" and doc["data"] == {**doc["data"], "job_id": jid,
                                                                      "state": "COMPLETED"}
            # a body changed in transit, or signed with another secret, does not verify
            from tests.services import verify_standard_webhook

            assert not verify_standard_webhook(secret, tries[0]["headers"], tries[0]["body"] + b" ")
            assert not verify_standard_webhook("whsec_" + "QUFBQQ==", tries[0]["headers"], tries[0]["body"])
            # retried with backoff: each try is scheduled, once the answer to the one before came back, its
            # delay later (0.3 s, then 0.6 s, -20% at most): a floor that holds however slow the machine is
            gaps = [b["at"] - a["at"] for a, b in zip(tries, tries[1:])]
            assert all(g >= 0.8 * d for g, d in zip(gaps, (0.3, 0.6))), gaps
            # the receiver answered the third try before the worker wrote its outcome: wait for the row
            wait_until(lambda: [h["state"] for h in _hooks(c, jid)] != ["pending"], 30, what="the outcome stored")
            hooks = _hooks(c, jid)
            assert len(hooks) == 1
            h = hooks[0]
            # delivered is final: the sweep sends pending rows only, so no fourth try comes (no sleep to wait for one)
            assert (h["event"], h["state"], h["attempts"]) == ("job.completed", "delivered", 3)
            assert len(rx.on("/done")) == 3
            assert [t["status_code"] for t in h["tries"]] == [500, 500, 204]
            assert all(t["duration_ms"] >= 0 and t["at"] for t in h["tries"])
            assert h["tries"][0]["error"] == "webhook receiver answered 500" and h["tries"][2]["error"] is None
    finally:
        rx.close()


def test_failed_job_webhook_gives_up_after_the_last_try(stack, secret):
    rx = Receiver(secret, refuse=lambda path, n: True)
    try:
        with stack.client() as c:
            jid = c.submit_uri("s3://asrq-test/inbox/missing.wav", {"webhook_url": rx.url("/failed")})["id"]
            assert wait_job(c, jid)["state"] == "FAILED"
            wait_until(lambda: _hooks(c, jid) and _hooks(c, jid)[0]["state"] == "failed", 60,
                       what=f"the delivery to fail\n{stack.logs()}")
            tries = rx.on("/failed")
            assert len(tries) == MAX_TRIES and all(t["verified"] for t in tries)
            doc = json_body(tries[0])
            assert doc["type"] == "job.failed" and "not found" in doc["data"]["error"]
            assert _hooks(c, jid)[0]["attempts"] == MAX_TRIES
    finally:
        rx.close()


def test_cancelled_job_webhook_is_kept_while_no_worker_runs(stack, secret):
    """The CPU worker (beat and maintenance queue) is killed with SIGKILL mid-prepare; the job is then
    cancelled, so its delivery row is written while no worker could send anything; a worker started
    later delivers it, retrying the receiver's refusals."""
    rx = Receiver(secret, refuse=lambda path, n: n <= 2)
    try:
        with stack.client() as c:
            # the source never finishes downloading: the job is still in flight when the worker dies
            jid = c.submit_uri(rx.url("/stall.wav"), {"webhook_url": rx.url("/cancelled")})["id"]
            wait_until(lambda: c.job(jid)["state"] == "PREPARING", 60, what="prepare to start")
            stack.procs["cpu-worker"].signal_group(signal.SIGKILL)
            stack.procs["cpu-worker"].popen.wait(10)
            assert c.delete(jid)["state"] == "CANCELLED"
            rx.release.set()
            # no worker runs, so nothing can send: the delivery row alone holds what is owed
            assert rx.on("/cancelled") == []
            h = _hooks(c, jid)[0]
            assert (h["state"], h["event"], h["attempts"]) == ("pending", "job.cancelled", 0)
            stack.start_cpu_worker(name="cpu-worker-2")
            wait_until(lambda: _hooks(c, jid)[0]["state"] == "delivered", 120, what=f"delivery\n{stack.logs()}")
            tries = rx.on("/cancelled")
            assert [t["status"] for t in tries] == [500, 500, 204] and all(t["verified"] for t in tries)
            assert json_body(tries[-1])["type"] == "job.cancelled"
            assert json_body(tries[-1])["data"]["state"] == "CANCELLED"
    finally:
        rx.close()
