"""A bounded open-loop load generator for GET /v1/jobs/{id} on loopback.

Open loop: request i is due at t0 + i/rate whether or not earlier ones have answered, and its latency
is counted from when it was due, so a stalled server shows up in the percentiles instead of quietly
lowering the request rate (coordinated omission). Bounded: it sends for ``duration_s`` and waits at
most ``drain_s`` more for stragglers, which then count as errors.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


async def _run(base_url: str, headers: dict, ids: list[str], rate: float, duration_s: float,
               drain_s: float) -> dict:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=drain_s, limits=limits) as client:
        # warm the connection pool and the server's code paths; not counted
        await asyncio.gather(*(client.get(f"/v1/jobs/{ids[i % len(ids)]}") for i in range(20)))
        rng = random.Random(1)

        async def one(job_id: str, due: float) -> None:
            nonlocal errors
            try:
                resp = await client.get(f"/v1/jobs/{job_id}")
                if resp.status_code != 200:
                    errors += 1
                    return
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.perf_counter() - due)

        n = int(rate * duration_s)
        t0 = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(rng.choice(ids), due)))
        done, pending = await asyncio.wait(tasks, timeout=drain_s)
        for t in pending:
            t.cancel()
        errors += len(pending)
        elapsed = time.perf_counter() - t0
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
    }


def get_job_load(base_url: str, api_key: str, ids: list[str], rate: float = 200.0, duration_s: float = 10.0,
                 drain_s: float = 5.0) -> dict:
    return asyncio.run(_run(base_url, {"Authorization": f"Bearer {api_key}"}, ids, rate, duration_s, drain_s))


def main(inp, out) -> None:  # noqa: ANN001
    import json

    cfg = json.loads(inp.read_text())
    res = get_job_load(cfg["base_url"], cfg["api_key"], cfg["ids"], cfg["rate"], cfg["duration_s"])
    out.write_text(json.dumps(res))


if __name__ == "__main__":
    # run as its own small process (python -m bench.load IN OUT): a client sharing an interpreter with
    # torch and FunASR stalls in garbage collection and would blame the server for its own pauses
    import sys
    from pathlib import Path

    main(Path(sys.argv[1]), Path(sys.argv[2]))
