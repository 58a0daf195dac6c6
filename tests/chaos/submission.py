"""The workload through the API, as its clients would send it: one by one, in POST /v1/jobs/batch calls,
each tenant with its own key, retried through outages with the same Idempotency-Key; then what became of
each job: its state, and its transcript."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.chaos.database import TERMINAL, Db, job_states
from tests.chaos.workload import TENANTS, Item


@dataclass
class Sub:
    item: Item
    job_id: str | None = None
    status: str = "pending"  # accepted | refused | error
    http_status: int | None = None
    detail: str = ""
    t: float = 0.0
    tries: int = 0


def api_client(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def idempotency_key(seed: int, run: str, idx: int | str) -> str:
    return f"chaos-{seed}-{run}-{idx}"


def tenant_of(it: Item) -> str:
    """The tenant whose key submits an item: batches all go in as acme."""
    return it.tenant if it.batch is None else "acme"


@dataclass
class Submitter:
    """Submits items of one run; ``client(tenant)`` makes a client with that tenant's key. What it notices
    along the way (a batch replay answered 409, a 5xx) goes to ``notes``."""

    client: Callable[[str], httpx.Client]
    db: Db
    seed: int
    notes: list[str]

    def submit_all(self, items: list[Item], run: str, deadline: float, spread_s: float = 0.0,
                   stop: threading.Event | None = None) -> dict[int, Sub]:
        """Every item once, in a seeded order; retried through outages with the same Idempotency-Key."""
        subs = {it.idx: Sub(it) for it in items}
        order = [[it] for it in items if it.batch is None]
        for b in sorted({it.batch for it in items if it.batch is not None}):
            order.append([it for it in items if it.batch == b])
        rng = random.Random(self.seed * 31 + len(run))
        rng.shuffle(order)
        times = sorted(rng.uniform(0, spread_s) for _ in order) if spread_s else [0.0] * len(order)
        start = time.monotonic()
        clients = {t: self.client(t) for t in TENANTS}
        try:
            for group, at in zip(order, times):
                if stop is not None and stop.is_set():
                    break
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._submit_group(clients, group, subs, run, deadline)
        finally:
            for c in clients.values():
                c.close()
        return subs

    def _submit_group(self, clients: dict, group: list[Item], subs: dict[int, Sub], run: str,
                      deadline: float) -> None:
        db = self.db
        first = group[0]
        key = lambda it: idempotency_key(self.seed, run, it.idx)  # noqa: E731
        c = clients[tenant_of(first)]
        tries = 0
        while True:
            tries += 1
            try:
                if first.batch is not None:
                    body = {"jobs": [{"source_uri": it.uri, "idempotency_key": key(it), **it.options} for it in group]}
                    resp = c.post("/v1/jobs/batch", json=body)
                elif first.source == "upload":
                    with open(first.path, "rb") as f:
                        resp = c.post("/v1/jobs", files={"file": (first.name, f)},
                                      data={k: str(v) for k, v in first.options.items()},
                                      headers={"Idempotency-Key": key(first)})
                else:
                    resp = c.post("/v1/jobs", json={"source_uri": first.uri, **first.options},
                                  headers={"Idempotency-Key": key(first)})
            except httpx.TransportError as e:
                resp, err = None, f"{type(e).__name__}"
            now = time.time()
            if resp is not None and resp.status_code in (200, 202):
                data = resp.json()
                ids = data["job_ids"] if first.batch is not None else [data["id"]]
                for it, jid in zip(group, ids):
                    subs[it.idx] = Sub(it, jid, "accepted", resp.status_code, "", now, tries)
                return
            if resp is not None and resp.status_code == 409 and first.batch is not None:
                # a batch whose response was lost (API killed after the commit): its keys are taken now.
                # The API gives no way back to the ids; the database does.
                rows = dict(db.q("SELECT idempotency_key, id::text FROM jobs WHERE tenant = %s AND "
                                 "idempotency_key = ANY(%s)", ("acme", [key(it) for it in group])))
                if len(rows) == len(group):
                    for it in group:
                        subs[it.idx] = Sub(it, rows[key(it)], "accepted", 409, "batch replay answered 409", now, tries)
                    self.notes.append(f"batch {first.batch}: a replay after a lost response answered 409 "
                                      f"({resp.text[:120]}); ids recovered from the database")
                    return
            if resp is not None and 400 <= resp.status_code < 500 and resp.status_code != 429:
                for it in group:
                    subs[it.idx] = Sub(it, None, "refused", resp.status_code, resp.text[:300], now, tries)
                return
            if resp is not None and resp.status_code >= 500 and resp.status_code != 503:
                self.notes.append(f"{first.label}: HTTP {resp.status_code} on submit: {resp.text[:160]}")
            if now > deadline:
                for it in group:
                    subs[it.idx] = Sub(it, None, "error", resp.status_code if resp is not None else None,
                                       f"not accepted before the deadline ({err if resp is None else resp.text[:200]})",
                                       now, tries)
                return
            time.sleep(min(3.0, 0.3 * tries))


class LiveSubs(dict):
    """The submissions of the chaos run as the submitter thread makes them (it fills ``box['subs']`` only
    at the end, so the scheduler reads the ids the database already has by idempotency key)."""

    def __init__(self, db: Db, seed: int, items: list[Item], box: dict, cache: dict) -> None:
        super().__init__()
        self.db, self.seed, self.items, self.box, self.cache = db, seed, items, box, cache

    def values(self):  # noqa: ANN201
        fed = dict(self.box.get("fed", {}))  # copies the feeder submits while faults still wait for a phase
        if "subs" in self.box:
            return {**self.box["subs"], **fed}.values()
        prefix = idempotency_key(self.seed, "chaos", "")
        with contextlib.suppress(Exception):
            for key, jid in self.db.q("SELECT idempotency_key, id::text FROM jobs WHERE idempotency_key LIKE %s",
                                      (prefix + "%",)):
                idx = int(key[len(prefix):])
                self.cache[idx] = Sub(self.items[idx], jid, "accepted")
        out = {**dict(self.cache), **fed}
        for it in list(self.items):
            out.setdefault(it.idx, Sub(it))
        return out.values()


def wait_terminal(db: Db, subs: dict[int, Sub], deadline: float, bad_grace_s: float | None = None) -> dict[str, str]:
    """Until every job has ended, or the deadline; with bad_grace_s, at most that much longer once every
    good job has ended (the baseline only needs the good ones)."""
    last: dict[str, str] = {}
    good_done_at = None
    while True:
        ids = [s.job_id for s in subs.values() if s.job_id]
        with contextlib.suppress(Exception):
            last = job_states(db, ids)
        pending = [s for s in subs.values() if s.job_id and last.get(s.job_id) not in TERMINAL]
        if not pending or time.time() > deadline:
            return last
        if bad_grace_s is not None and all(s.item.expect == "fail" for s in pending):
            good_done_at = good_done_at or time.time()
            if time.time() - good_done_at > bad_grace_s:
                return last
        time.sleep(1.0)


def all_terminal(db: Db, subs: dict[int, Sub]) -> bool:
    """Every submission that was not refused has a job, and every job has ended."""
    ids = [s.job_id for s in subs.values() if s.job_id]
    if len(ids) < sum(1 for s in subs.values() if s.status != "refused"):
        return False
    try:
        return all(v in TERMINAL for v in job_states(db, ids).values())
    except Exception:  # noqa: BLE001
        return False


def fetch_transcripts(client: Callable[[str], httpx.Client], subs: dict[int, Sub], states: dict[str, str],
                      notes: list[str]) -> dict[int, dict]:
    """The JSON transcript of every COMPLETED job, through the API (from storage where the API fails)."""
    from app.constants import transcript_key
    from app.storage import get_store

    out = {}
    clients = {t: client(t) for t in TENANTS}
    try:
        for idx, s in subs.items():
            if not s.job_id or states.get(s.job_id) != "COMPLETED":
                continue
            try:
                r = clients[tenant_of(s.item)].get(f"/v1/jobs/{s.job_id}/transcript", params={"format": "json"})
                r.raise_for_status()
                out[idx] = r.json()
            except Exception:  # noqa: BLE001 - the API is part of what is tested; storage is the truth
                with contextlib.suppress(Exception):
                    out[idx] = json.loads(get_store().get_bytes(transcript_key(uuid.UUID(s.job_id), "json")))
                    notes.append(f"{s.item.label}: transcript read from storage (API failed)")
    finally:
        for c in clients.values():
            c.close()
    return out
