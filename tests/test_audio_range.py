"""GET /v1/jobs/{id}/audio: the retained upload, served with HTTP Range (RFC 9110 §14) to the job's own tenant
only; on the real API process with Postgres, Redis and an S3 server (moto). No worker runs here, so every job
stays QUEUED and its uploaded source stays where it was put."""

from __future__ import annotations

import contextlib
import io
import secrets
import uuid
import wave

import httpx
import numpy as np
import pytest

from app.api.routes_audio import BLOCK_BYTES, Unsatisfiable, media_type, parse_range
from tests.conftest import REDIS_TEST_DB
from tests.services import AUDIO, Stack, base_env, postgres_database, redis_db, running_stack

pytestmark = pytest.mark.slow


# ---- the Range header, alone ----------------------------------------------------------------------------------

@pytest.mark.parametrize("header, want", [
    (None, None),
    ("", None),
    ("bytes=0-99", (0, 100)),
    ("bytes=100-", (100, 1000)),
    ("bytes=-50", (950, 1000)),
    ("bytes=-5000", (0, 1000)),  # a suffix longer than the object: all of it
    ("bytes=990-5000", (990, 1000)),  # the end clipped to the object
    ("BYTES = 5 - 9", (5, 10)),
    ("bytes=9-5", None),  # last < first: invalid, ignored (RFC 9110 §14.1.1)
    ("bytes=0-1,5-6", None),  # several ranges: answered whole
    ("items=0-5", None),  # another unit: ignored
    ("bytes=-", None),
    ("bytes=abc", None),
])
def test_parse_range(header, want):
    assert parse_range(header, 1000) == want


@pytest.mark.parametrize("header, size", [("bytes=1000-", 1000), ("bytes=5000-6000", 1000), ("bytes=-0", 1000),
                                          ("bytes=0-", 0), ("bytes=-10", 0)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_media_types():
    assert media_type("call.flac") == "audio/flac"
    assert media_type("x.M4A") == "audio/mp4"
    assert media_type("a.wav") == "audio/wav"
    assert media_type("noext") == "application/octet-stream"


# ---- the endpoint, on the real API ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory, s3):
    """Only the API process (no worker: jobs stay QUEUED, uploads stay stored)."""
    from app.db.migrate import upgrade

    tmp = tmp_path_factory.mktemp("audio-api")
    endpoint, _ = s3
    key = secrets.token_urlsafe(16)
    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"s3://asrq-test/{tmp.name}", endpoint, tmp, key)
        with running_stack(env, tmp, key, workers=False) as st:
            assert list(st.procs) == ["api"]
            yield st


def _client(st: Stack, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=st.api_url, headers={"Authorization": f"Bearer {key or st.api_key}"}, timeout=30)


def _upload(c: httpx.Client, name: str, data: bytes) -> str:
    r = c.post("/v1/jobs", files={"file": (name, data)})
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def flac(api):
    data = (AUDIO / "en_jfk_ask_not_11s.flac").read_bytes()
    with _client(api) as c:
        return _upload(c, "en_jfk_ask_not_11s.flac", data), data


def test_whole_recording_without_range(api, flac):
    jid, data = flac
    with _client(api) as c:
        r = c.get(f"/v1/jobs/{jid}/audio")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["content-type"] == "audio/flac"
    assert "content-range" not in r.headers
    assert "no-store" in r.headers["cache-control"] and r.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize("header, lo, hi", [("bytes=0-99", 0, 100), ("bytes=1000-", 1000, None), ("bytes=-333", -333, None),
                                            ("bytes=0-0", 0, 1), ("bytes=5000-999999999", 5000, None)])
def test_ranges_answer_206_with_the_exact_bytes(api, flac, header, lo, hi):
    jid, data = flac
    size = len(data)
    with _client(api) as c:
        r = c.get(f"/v1/jobs/{jid}/audio", headers={"Range": header})
    want = data[lo:hi]
    assert r.status_code == 206, r.text
    assert r.content == want
    start = lo if lo >= 0 else size + lo
    assert r.headers["content-range"] == f"bytes {start}-{start + len(want) - 1}/{size}"
    assert r.headers["content-length"] == str(len(want))
    assert r.headers["accept-ranges"] == "bytes"


def test_unsatisfiable_range_is_416_with_the_size(api, flac):
    jid, data = flac
    with _client(api) as c:
        r = c.get(f"/v1/jobs/{jid}/audio", headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        # ignored Range headers get the whole recording, never an error
        for ignored in ("bytes=9-5", "bytes=0-1,4-5", "pages=1-2"):
            r = c.get(f"/v1/jobs/{jid}/audio", headers={"Range": ignored})
            assert r.status_code == 200 and r.content == data, ignored


def test_head_tells_size_and_ranges_without_a_body(api, flac):
    jid, data = flac
    with _client(api) as c:
        r = c.head(f"/v1/jobs/{jid}/audio")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == str(len(data)) and r.headers["accept-ranges"] == "bytes"
        r = c.head(f"/v1/jobs/{jid}/audio", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.headers["content-range"] == f"bytes 10-19/{len(data)}"


def _wav(seconds: float, rate: int = 48000) -> bytes:
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(int(seconds * rate)) * 3000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def test_ranges_across_store_blocks_stream_exactly(api):
    data = _wav(40)  # 3.8 MB: several of the endpoint's store reads
    assert len(data) > 3 * BLOCK_BYTES
    with _client(api) as c:
        jid = _upload(c, "long.wav", data)
        lo, hi = BLOCK_BYTES - 17, 3 * BLOCK_BYTES + 5
        r = c.get(f"/v1/jobs/{jid}/audio", headers={"Range": f"bytes={lo}-{hi - 1}"})
        assert r.status_code == 206 and r.content == data[lo:hi]
        assert r.headers["content-type"] == "audio/wav"
        with c.stream("GET", f"/v1/jobs/{jid}/audio") as r:
            got = b"".join(r.iter_bytes())
        assert got == data


def test_only_the_jobs_tenant_gets_it(api, flac):
    jid, _ = flac
    missing = str(uuid.uuid4())
    with _client(api, f"other-{api.api_key}") as other:  # tenant globex
        theirs = other.get(f"/v1/jobs/{jid}/audio", headers={"Range": "bytes=0-9"})
        nothing = other.get(f"/v1/jobs/{missing}/audio")
        head = other.head(f"/v1/jobs/{jid}/audio")
    # another tenant's job is indistinguishable from a job that does not exist
    assert theirs.status_code == nothing.status_code == head.status_code == 404
    assert theirs.json()["detail"].replace(jid, "ID") == nothing.json()["detail"].replace(missing, "ID")
    assert "content-range" not in theirs.headers
    assert httpx.get(f"{api.api_url}/v1/jobs/{jid}/audio").status_code == 401
    assert httpx.get(f"{api.api_url}/v1/jobs/{jid}/audio", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_uri_source_has_no_audio_and_a_deleted_one_is_gone(api):
    with _client(api) as c:
        r = c.post("/v1/jobs/batch", json={"jobs": [{"source_uri": "s3://asrq-test/inbox/never-kept.wav"}]})
        assert r.status_code == 202, r.text
        uri_job = r.json()["job_ids"][0]
        r = c.get(f"/v1/jobs/{uri_job}/audio")
        assert r.status_code == 404 and "URI" in r.json()["detail"]

        jid = _upload(c, "short.wav", _wav(1))
        assert c.get(f"/v1/jobs/{jid}/audio").status_code == 200
        assert c.delete(f"/v1/jobs/{jid}").json()["state"] == "CANCELLED"  # cancelled: its objects go
        r = c.get(f"/v1/jobs/{jid}/audio")
        assert r.status_code == 410 and "removed" in r.json()["detail"]


def test_the_key_is_never_needed_in_a_url(api, flac):
    """The page's player reaches the audio through its service worker with the bearer header; the API offers
    no query-string key (a key in a URL would land in logs and history)."""
    jid, _ = flac
    with contextlib.closing(httpx.Client(base_url=api.api_url)) as anon:
        for q in ({"key": api.api_key}, {"api_key": api.api_key}, {"token": api.api_key}):
            assert anon.get(f"/v1/jobs/{jid}/audio", params=q).status_code == 401
