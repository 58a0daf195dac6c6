"""The chaos soak's own arithmetic and tools, without a campaign: the coverage cells and matrix, the backlog's
duplicate count, the atomic read-and-flush of Redis, the blackholed webhook receiver."""

from __future__ import annotations

import json
import socket
import uuid

import httpx
import pytest

from tests.chaos.broker import PublishWatcher, per_target_duplicates, read_and_flush
from tests.chaos.coverage import FAULT_KINDS, Coverage, all_cells, required_cells, targets
from tests.chaos.faults import plan_faults
from tests.chaos.modes import FULL, QUICK
from tests.chaos.report import Report
from tests.chaos.timing import engine_audio_once
from tests.chaos.workload import Blackhole
from tests.fault_services import PrivateRedis
from tests.services import wait_until


def test_quick_mode_requires_every_kind_once_and_full_mode_every_cell() -> None:
    for seed in (7, 23):
        quick = required_cells(seed, QUICK.every_cell)
        assert sorted(k for k, _ in quick) == sorted(FAULT_KINDS)
        assert all(p in targets(k) for k, p in quick)
        planned = {(p.kind, p.target) for p in plan_faults(seed, QUICK) if p.required}
        assert planned == set(quick)
    full = {(p.kind, p.target) for p in plan_faults(7, FULL) if p.required}
    assert full == set(all_cells())
    assert len(all_cells()) > len(FAULT_KINDS)  # services target all four phases, processes their own


def test_coverage_matrix_marks_missed_cells() -> None:
    cov = Coverage([("kill9:gpu", "TRANSCRIBING"), ("redis:flush", "QUEUED")])
    cov.hit("kill9:gpu", "TRANSCRIBING")
    cov.miss("redis:flush", "QUEUED", "no job QUEUED within 12 s")
    assert cov.missing() == [("redis:flush", "QUEUED")]
    text = "\n".join(cov.matrix())
    assert "0!*" in text and "1*" in text
    assert "missed redis:flush @QUEUED: 1 waits saw no job there (no job QUEUED within 12 s)" in text
    cov.hit("redis:flush", "QUEUED")
    assert cov.missing() == []


class _Events(PublishWatcher):
    def __init__(self, events: list[tuple[str, str]]) -> None:  # (task, arg); no broker needed
        self.events = [(0.0, task, arg, "w") for task, arg in events]


def test_backlog_duplicates_count_targets_not_messages() -> None:
    """A flush loses two copies of one job's prepare, a delivered finalize whose work still ends, and a
    maintenance message: 4 messages, 2 targets needing a re-send. The reconciler re-sends those 2. The
    figure printed before (re-sent - lost messages) said -2; per target there is no duplicate."""
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    lost = {("asrq.prepare", a), ("asrq.finalize", b)}
    lost_messages, resent = 4, 2
    assert resent - lost_messages < 0  # the old arithmetic
    w = _Events([("asrq.prepare", a), ("asrq.prepare", a), ("asrq.finalize", b), ("asrq.prepare", c)])
    assert per_target_duplicates(w, lost) == 0
    # a re-send of a job whose message was not lost is a duplicate; so is a second re-send of a lost one
    w.events += [(0.0, "asrq.prepare", c, "w"), (0.0, "asrq.prepare", a, "w")]
    assert per_target_duplicates(w, lost) == 2


def _message(task: str, arg: str) -> bytes:
    return json.dumps({"body": "", "headers": {"task": task, "argsrepr": f"['{arg}']", "id": str(uuid.uuid4())},
                       "properties": {}}).encode()


@pytest.fixture
def private_redis():  # noqa: ANN201 - FLUSHALL: never on the suite's shared Redis
    red = PrivateRedis()
    red.start()
    yield red
    red.stop()


def test_read_and_flush_reads_what_the_flush_loses(private_redis) -> None:  # noqa: ANN001
    import redis

    from app.messaging import redis_queue_keys

    r, port = redis.Redis(port=private_redis.port), private_redis.port
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    r.rpush("prepare", _message("asrq.prepare", a), _message("asrq.prepare", a))
    r.rpush(redis_queue_keys("transcribe")[-1], _message("asrq.transcribe", b))
    r.rpush("maintenance", _message("asrq.reconcile", str(uuid.uuid4())))
    r.hset("unacked", "tag1", json.dumps([json.loads(_message("asrq.prepare", a)), "", "prepare"]))
    depths, lost = read_and_flush(port)
    assert depths["prepare"] == 2 and depths["transcribe"] == 1 and depths["maintenance"] == 1
    assert depths["unacked"] == 1
    assert lost == {("asrq.prepare", a), ("asrq.transcribe", b)}  # maintenance messages are never re-sent
    assert r.dbsize() == 0


def test_blackhole_accepts_and_never_answers() -> None:
    hole = Blackhole()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(hole.url, json={"type": "job.completed"}, timeout=httpx.Timeout(0.5))
        wait_until(lambda: hole.accepted == 1, 5, what="the blackhole accepted the connection")
        s = socket.create_connection(("127.0.0.1", int(hole.url.split(":")[2].split("/")[0])), timeout=1)
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(1)  # held open, never answered
        s.close()
    finally:
        hole.close()


def test_engine_audio_counts_killed_batches_apart_and_catches_a_second_run() -> None:
    """The timing part's arithmetic: a batch begun and never ended (its worker killed mid-way) is counted
    apart, so its chunks' second run is no excess; a chunk run twice to its end is."""
    b1 = {"start": 1.0, "audio_s": 40.0, "chunks": 3, "pid": 11}
    b2 = {"start": 2.0, "audio_s": 20.0, "chunks": 2, "pid": 12}  # killed mid-way
    b3 = {"start": 9.0, "audio_s": 20.0, "chunks": 2, "pid": 11}  # b2's chunks again
    ends = [{**b1, "end": 8.0}, {**b3, "end": 12.0}]
    r = Report()
    engine_audio_once(r, [b1, b2, b3], ends, 60.0, killed_pids={12})
    assert r.ok, r.text
    assert "1 batch(es) of 20.0 s killed mid-way" in r.text
    # the same chunks run again with no kill to explain it: inference ran twice
    b4 = {"start": 13.0, "audio_s": 10.0, "chunks": 1, "pid": 12}
    r = Report()
    engine_audio_once(r, [b1, b2, b3, b4], [*ends, {**b4, "end": 15.0}], 60.0, killed_pids={12})
    assert not r.ok and "+10.0 audio-s beyond the chunks" in r.text
    # a batch begun and not ended by a process nobody killed: still running a second time, not explained
    r = Report()
    engine_audio_once(r, [b1, b2, b3, b4], ends, 60.0, killed_pids={12} - {12})
    assert not r.ok and "still running after every job ended: pid 12" in r.text
