"""HTTP client of the asrq API, used by the CLI and usable from any Python program."""

from __future__ import annotations

import time
from collections.abc import Iterable
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

    def wait(self, job_ids: Iterable[str], timeout_s: float = 3600.0, poll_s: float = 0.5,
             on_progress=None) -> dict[str, dict]:  # noqa: ANN001
        pending = list(job_ids)
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            still = []
            for jid in pending:
                job = self.job(jid)
                (done.__setitem__(jid, job) if job["state"] in TERMINAL else still.append(jid))
            if on_progress:
                on_progress(len(done))
            pending = still
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
