"""A bounded open-loop load generator for GET /v1/jobs/{id} on loopback.

Open loop: request i is due at t0 + i/rate whether or not earlier ones have answered, and its latency
is counted from when it was due, so a stalled server shows up in the percentiles instead of quietly
lowering the request rate (coordinated omission). Bounded: it sends for ``duration_s`` and waits at
most ``drain_s`` more; what has not answered by then counts as an error.

It speaks HTTP/1.1 keep-alive over asyncio streams itself: a general-purpose client costs a few ms of
CPU per request, which on a 2-core machine takes CPU from the server it is measuring. It also records
how late each request left (``send_lag``): when the generator itself cannot keep the schedule, the
figures describe the machine, not the server, and the result says so.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Pool:
    """Idle keep-alive connections, opened on demand up to ``size``."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.LifoQueue = asyncio.LifoQueue()
        self.opened = 0

    async def get(self):  # noqa: ANN201
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            return await asyncio.open_connection(self.host, self.port)
        return await self.idle.get()

    def put(self, conn) -> None:  # noqa: ANN001
        self.idle.put_nowait(conn)

    def drop(self, conn) -> None:  # noqa: ANN001
        conn[1].close()
        self.opened -= 1


async def fetch(pool: Pool, request: bytes) -> int:
    conn = await pool.get()
    reader, writer = conn
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
    except BaseException:
        pool.drop(conn)
        raise
    pool.put(conn)
    return status


async def _run(base_url: str, api_key: str, ids: list[str], rate: float, duration_s: float, drain_s: float) -> dict:
    url = urlparse(base_url)
    pool = Pool(url.hostname or "127.0.0.1", url.port or 80, size=64)

    def request(job_id: str) -> bytes:
        return (f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {api_key}\r\nAccept: application/json\r\n\r\n").encode()

    latencies: list[float] = []
    lags: list[float] = []
    errors = 0

    async def one(job_id: str, due: float) -> None:
        nonlocal errors
        lags.append(time.perf_counter() - due)
        for attempt in (1, 2):
            try:
                if await fetch(pool, request(job_id)) != 200:
                    errors += 1
                    return
                break
            except (OSError, asyncio.IncompleteReadError, ValueError):
                # a kept-alive connection the server has since closed fails once; a second failure counts
                if attempt == 2:
                    errors += 1
                    return
        latencies.append(time.perf_counter() - due)

    rng = random.Random(1)
    for i in range(20):  # warm the server's code paths and a few connections; not counted
        await fetch(pool, request(ids[i % len(ids)]))
    n = int(rate * duration_s)
    t0 = time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(rng.choice(ids), due)))
    _done, pending = await asyncio.wait(tasks, timeout=drain_s)
    for t in pending:
        t.cancel()
    errors += len(pending)
    elapsed = time.perf_counter() - t0
    while not pool.idle.empty():
        pool.idle.get_nowait()[1].close()
    return {
        "requests": n,
        "ok": len(latencies),
        "errors": errors,
        "target_rps": rate,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
        "send_lag_p99_ms": round(percentile(lags, 99) * 1000, 2),
        "connections": pool.opened,
    }


def get_job_load(base_url: str, api_key: str, ids: list[str], rate: float = 200.0, duration_s: float = 10.0,
                 drain_s: float = 5.0) -> dict:
    return asyncio.run(_run(base_url, api_key, ids, rate, duration_s, drain_s))


def main(inp: Path, out: Path) -> None:
    cfg = json.loads(inp.read_text())
    out.write_text(json.dumps(get_job_load(cfg["base_url"], cfg["api_key"], cfg["ids"], cfg["rate"],
                                           cfg["duration_s"])))


if __name__ == "__main__":
    # its own small process (python -m bench.load IN OUT): a client sharing an interpreter with torch
    # and FunASR stalls in garbage collection and would blame the server for its own pauses
    main(Path(sys.argv[1]), Path(sys.argv[2]))
