"""HTTP client of the asrq API, used by the CLI and usable from any Python program."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: object) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class AsrqClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "AsrqClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text[:500]
            raise ApiError(resp.status_code, detail)
        return resp

    def _retrying(self, fn, tries: int = 5):  # noqa: ANN001, ANN202
        """Retry on 503 and connection errors (a restarting service), with backoff."""
        for attempt in range(tries):
            try:
                resp = fn()
                if resp.status_code != 503 or attempt == tries - 1:
                    return self._check(resp)
            except httpx.TransportError:
                if attempt == tries - 1:
                    raise
            time.sleep(min(10.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def submit_file(self, path: Path, options: dict | None = None, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = _form(options or {})

        def post() -> httpx.Response:
            with open(path, "rb") as f:
                return self.http.post("/v1/jobs", files={"file": (path.name, f)}, data=data, headers=headers)

        return self._retrying(post).json()

    def submit_uri(self, uri: str, options: dict | None = None, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"source_uri": uri, **(options or {})}
        return self._retrying(lambda: self.http.post("/v1/jobs", json=body, headers=headers)).json()

    def submit_batch(self, uris: list[str], options: dict | None = None) -> list[str]:
        body = {"jobs": [{"source_uri": u, **(options or {})} for u in uris]}
        return self._retrying(lambda: self.http.post("/v1/jobs/batch", json=body)).json()["job_ids"]

    def job(self, job_id: str) -> dict:
        return self._retrying(lambda: self.http.get(f"/v1/jobs/{job_id}")).json()

    def transcript(self, job_id: str, fmt: str = "json") -> bytes:
        return self._retrying(lambda: self.http.get(f"/v1/jobs/{job_id}/transcript", params={"format": fmt})).content

    def delete(self, job_id: str) -> dict:
        return self._retrying(lambda: self.http.delete(f"/v1/jobs/{job_id}")).json()

    def statuses(self, job_ids: Iterable[str], full: bool = False, per_call: int = 10_000) -> dict:
        """State and progress of many jobs: one POST /v1/jobs/status per ``per_call`` ids (``full``: whole job
        records). Returns {"jobs": [...], "not_found": [...], "counts": {state: n}} over all of them."""
        ids = list(job_ids)
        out: dict = {"jobs": [], "not_found": [], "counts": {}}
        for i in range(0, len(ids), per_call):
            part = ids[i : i + per_call]
            got = self._retrying(lambda part=part: self.http.post("/v1/jobs/status",
                                                                            json={"ids": part, "full": full})).json()
            out["jobs"] += got["jobs"]
            out["not_found"] += got["not_found"]
            for state, n in got["counts"].items():
                out["counts"][state] = out["counts"].get(state, 0) + n
        return out

    def jobs(self, state: str | None = None, since: str | None = None, filename: str | None = None,
             batch: str | None = None, limit: int | None = None, page_size: int = 1000) -> Iterator[dict]:
        """Jobs newest first, with filters, following the cursor until ``limit`` jobs (or all of them)."""
        params = {k: v for k, v in {"state": state, "since": since, "filename": filename, "batch": batch}.items()
                  if v is not None}
        cursor, seen = None, 0
        while True:
            want = page_size if limit is None else min(page_size, limit - seen)
            if want <= 0:
                return
            q = {**params, "limit": want, **({"cursor": cursor} if cursor else {})}
            page = self._retrying(lambda q=q: self.http.get("/v1/jobs", params=q)).json()
            for job in page["jobs"]:
                seen += 1
                yield job
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def usage(self, start: str | None = None, end: str | None = None) -> dict:
        params = {k: v for k, v in {"from": start, "to": end}.items() if v}
        return self._retrying(lambda: self.http.get("/v1/usage", params=params)).json()

    def wait(self, job_ids: Iterable[str], timeout_s: float = 3600.0, poll_s: float = 0.5,
             on_progress=None) -> dict[str, dict]:  # noqa: ANN001
        """Poll until every job is finished, with one bulk status call per poll (per 10,000 jobs); returns
        each job's final status. ``on_progress(finished, counts)``: after each poll, the number finished
        and the count of every job by state. A job that no longer exists (deleted) counts as finished.
        A job's whole record is fetched once, in bulk, in the poll that sees it finish."""
        pending = list(dict.fromkeys(job_ids))
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            got = self.statuses(pending)
            for jid in got["not_found"]:
                done[jid] = {"id": jid, "state": "NOT_FOUND", "error": "no such job"}
            finished = [j["id"] for j in got["jobs"] if j["state"] in TERMINAL]
            if finished:
                full = self.statuses(finished, full=True)
                done.update((j["id"], j) for j in full["jobs"])
                for jid in full["not_found"]:  # deleted between the two calls
                    done[jid] = {"id": jid, "state": "NOT_FOUND", "error": "no such job"}
            pending = [j["id"] for j in got["jobs"] if j["id"] not in done]
            counts = Counter(j["state"] for j in done.values())
            counts.update(j["state"] for j in got["jobs"] if j["id"] not in done)
            if on_progress:
                on_progress(len(done), counts)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} jobs still running after {timeout_s:.0f} s")
                time.sleep(poll_s)
        return done

def _form(options: dict) -> dict:
    out = {}
    for k, v in options.items():
        if v is None or v == []:
            continue
        out[k] = ",".join(v) if isinstance(v, list | tuple) else str(v)
    return out
