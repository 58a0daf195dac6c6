"""The HTTP API's input validation, limits, auth and tenant isolation, in-process on the embedded mode.

SQLite in tmp_path, objects in a local folder, the filesystem broker in tmp_path: publishes land as files
there and no worker runs. Nothing leaves this process.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.services import fresh_celery_app

MAX_UPLOAD = 200_000
MAX_JSON = 50_000  # below MAX_UPLOAD, so a test can tell which cap applied
MAX_BATCH = 5
KEY_CACHE = 8
ACME = {"Authorization": "Bearer secret1"}
GLOBEX = {"Authorization": "Bearer secret2"}
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8


class Api:
    def __init__(self, client: TestClient, tmp: Path) -> None:
        self.c = client
        self.tmp = tmp
        self.objects = tmp / "objects"
        self.broker = tmp / "broker"

    def upload(self, data: bytes = WAV, filename: str = "talk.wav", headers: dict | None = None,
               **fields: str | list[str]):
        return self.c.post("/v1/jobs", headers={**ACME, **(headers or {})},
                           files={"file": (filename, data, "audio/wav")}, data=fields)

    def submit(self, body: dict, headers: dict | None = None):
        return self.c.post("/v1/jobs", headers={**ACME, **(headers or {})}, json=body)

    def stored_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.objects)) for p in self.objects.rglob("*") if p.is_file())

    def published(self) -> str:
        """Everything the filesystem broker holds (message files), as one string."""
        return "".join(p.read_text(errors="replace") for p in (self.broker / "queue").glob("*") if p.is_file())


def _reset_caches() -> None:
    from app import storage
    from app.db import session
    from app.settings import get_settings

    get_settings.cache_clear()
    session.reset_engines()
    storage._store.cache_clear()


@pytest.fixture
def api(tmp_path, monkeypatch):
    from app.api.main import create_app
    from app.db.migrate import upgrade
    from app.settings import get_settings

    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    env = {
        "ASRQ_HOME": str(tmp_path),
        "ASRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'asrq.db'}",
        "ASRQ_STORAGE_URL": f"file://{tmp_path / 'objects'}",
        "ASRQ_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
        "ASRQ_API_KEYS": "acme:secret1,globex:secret2",
        "ASRQ_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "ASRQ_MAX_JSON_BYTES": str(MAX_JSON),
        "ASRQ_MAX_BATCH_JOBS": str(MAX_BATCH),
        "ASRQ_S3_SOURCE_ALLOW": "b,bucket,other,globex=private/calls/",  # the buckets these tests submit from
        "ASRQ_AUTH_CACHE_MAX_KEYS": str(KEY_CACHE),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _reset_caches()
    settings = get_settings()
    upgrade(settings.database_url)
    try:
        with fresh_celery_app(), TestClient(create_app(settings)) as client:  # for this test's broker folder
            yield Api(client, tmp_path)
    finally:
        _reset_caches()


def _detail(r) -> str:  # noqa: ANN001
    return json.dumps(r.json().get("detail"))


# ---- auth --------------------------------------------------------------------------------------------------------


def test_openapi_documents_the_batch_body(api):
    """The batch route reads its body after authentication, so its schema is published by hand."""
    spec = api.c.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    schemas = spec["components"]["schemas"]
    assert "jobs" in schemas[name]["properties"]
    assert schemas[name]["properties"]["jobs"]["items"]["$ref"].rsplit("/", 1)[-1] in schemas


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2VjcmV0MQ=="},
                                     {"Authorization": "secret1"}, {"Authorization": "Bearer "}])
def test_unauthenticated_requests_get_401(api, headers):
    for method, path in [("get", "/v1/jobs"), ("get", f"/v1/jobs/{uuid.uuid4()}"), ("post", "/v1/jobs"),
                         ("post", "/v1/jobs/batch"), ("delete", f"/v1/jobs/{uuid.uuid4()}")]:
        r = getattr(api.c, method)(path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers.get("www-authenticate") == "Bearer"


def test_keys_from_env_are_stored_hashed(api):
    from sqlalchemy import create_engine, text

    eng = create_engine(f"sqlite:///{api.tmp / 'asrq.db'}")
    with eng.connect() as c:
        rows = c.execute(text("SELECT tenant, key_sha256 FROM api_keys ORDER BY tenant")).all()
    eng.dispose()
    assert [r[0] for r in rows] == ["acme", "globex"]
    assert all(len(r[1]) == 64 and "secret" not in r[1] for r in rows)


def test_bad_tokens_cannot_grow_the_key_cache_or_evict_good_keys(api):
    from app.api.auth import hash_key

    keys = api.c.app.state.keys
    assert api.c.get("/v1/jobs", headers=ACME).status_code == 200
    for i in range(5 * KEY_CACHE):
        assert api.c.get("/v1/jobs", headers={"Authorization": f"Bearer wrong-{i}"}).status_code == 401
    assert len(keys.unknown) == KEY_CACHE
    assert keys.tenants.get(hash_key("secret1")) == "acme"  # still cached: the flood evicted no valid key
    assert api.c.get("/v1/jobs", headers=ACME).status_code == 200


# ---- JSON submissions --------------------------------------------------------------------------------------------


def test_malformed_json_body_is_422(api):
    r = api.c.post("/v1/jobs", headers={**ACME, "Content-Type": "application/json"}, content=b'{"source_uri": ')
    assert r.status_code == 422
    r = api.c.post("/v1/jobs", headers={**ACME, "Content-Type": "application/json"}, content=b"[1, 2]")
    assert r.status_code == 422
    r = api.c.post("/v1/jobs/batch", headers={**ACME, "Content-Type": "application/json"}, content=b"{nope")
    assert r.status_code == 422


@pytest.mark.parametrize("body", [
    {"source_uri": "s3://b/k.wav", "colour": "red"},
    {"source_uri": "s3://b/k.wav", "options": {"language": "en"}},
    {"source_uri": "s3://b/k.wav", "language": "english!"},
    {"source_uri": "s3://b/k.wav", "language": "e"},
    {"source_uri": "s3://b/k.wav", "formats": ["pdf"]},
    {"source_uri": "s3://b/k.wav", "formats": "srt"},
    {"source_uri": "s3://b/k.wav", "engine": "kaldi"},
    {"source_uri": "s3://b/k.wav", "model": "../../etc"},
    {"source_uri": "s3://b/k.wav", "model": "/abs/model"},
    {"source_uri": "s3://b/k.wav", "hotwords": ["ok", "bad\nword"]},
    {"source_uri": ""},
    {},
])
def test_invalid_json_options_are_422(api, body):
    r = api.submit(body)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("uri", [
    "ftp://127.0.0.1/a.wav",
    "gopher://127.0.0.1/x",
    "file:///etc/passwd",
    "http://127.0.0.1/a.wav",
    "https://127.0.0.1/x",
    "https://localhost/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/x",
    "https://192.168.0.10/x",
    "https://[::1]/x",
    "https://127.0.0.1:99999/x",
    "https://[::1/x",
    "s3://bucket",
    "s3://bucket/a/../b.wav",
    "s3://bucket/a\nb.wav",
    "no-scheme/a.wav",
])
def test_bad_source_uris_are_422(api, uri):
    r = api.submit({"source_uri": uri})
    assert r.status_code == 422, r.text
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


@pytest.mark.parametrize("hook", ["https://127.0.0.1/hook", "http://10.0.0.1/hook", "https://169.254.169.254/",
                                  "ftp://127.0.0.1/x"])
def test_private_webhook_is_422(api, hook):
    r = api.submit({"source_uri": "s3://b/k.wav", "webhook_url": hook})
    assert r.status_code == 422, r.text


def test_webhook_must_be_https_to_a_host(api):
    # s3:// and file:// are sources, never webhook targets, even where such sources are allowed
    for hook in ["s3://b/hook", "s3://bucket/k.wav", "file:///etc/passwd", "http://93.184.215.14/h",
                 "https:///nohost", "mailto:ops@example.org"]:
        r = api.submit({"source_uri": "s3://b/k.wav", "webhook_url": hook})
        assert r.status_code == 422, (hook, r.text)
        assert "webhook_url" in r.text, hook
        r = api.upload(webhook_url=hook)
        assert r.status_code == 422, (hook, r.text)
        r = api.c.post("/v1/jobs/batch", headers=ACME,
                       json={"jobs": [{"source_uri": "s3://b/k.wav", "webhook_url": hook}]})
        assert r.status_code == 422, (hook, r.text)
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == [] and api.stored_files() == []


def test_s3_source_outside_the_allow_list_is_422(api):
    for uri in ["s3://elsewhere/k.wav", "s3://private/calls/a.wav", "s3://private/calls-x/a.wav",
                "s3://bucket2/k.wav", "s3://b/../k.wav"]:
        r = api.submit({"source_uri": uri})
        assert r.status_code == 422, (uri, r.text)
        r = api.c.post("/v1/jobs/batch", headers=ACME,
                       json={"jobs": [{"source_uri": "s3://b/ok.wav"}, {"source_uri": uri}]})
        assert r.status_code == 422, (uri, r.text)
        assert "jobs[1]" in r.text
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []
    assert api.published() == ""


def test_s3_allow_list_per_tenant(api):
    uri = "s3://private/calls/2024/a.wav"  # allowed for globex only
    assert api.submit({"source_uri": uri}).status_code == 422
    r = api.c.post("/v1/jobs", headers=GLOBEX, json={"source_uri": uri})
    assert r.status_code == 202, r.text
    r = api.c.post("/v1/jobs/batch", headers=GLOBEX, json={"jobs": [{"source_uri": uri}, {"source_uri": "s3://b/x.wav"}]})
    assert r.status_code == 202, r.text
    r = api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": [{"source_uri": "s3://b/x.wav"}, {"source_uri": uri}]})
    assert r.status_code == 422, r.text
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


def test_own_storage_is_422_even_when_listed(api):
    app = api.c.app
    app.state.settings = app.state.settings.model_copy(update={"storage_url": "s3://b/asrq",
                                                               "s3_source_allow": "b,globex=b/asrq/"})
    for headers in (ACME, GLOBEX):
        r = api.c.post("/v1/jobs", headers=headers, json={"source_uri": "s3://b/asrq/jobs/1/source/talk.wav"})
        assert r.status_code == 422 and "own storage" in r.text, r.text
    assert api.submit({"source_uri": "s3://b/asrq-inbox/talk.wav"}).status_code == 202


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "audio/wav", None])
def test_unsupported_content_type_is_415(api, ctype):
    headers = dict(ACME)
    if ctype:
        headers["Content-Type"] = ctype
    r = api.c.post("/v1/jobs", headers=headers, content=b"source_uri=s3://b/k.wav")
    assert r.status_code == 415, r.text


def test_json_submission_is_queued_and_published(api):
    r = api.submit({"source_uri": "s3://bucket/dir/My%20Talk.wav", "language": "en", "formats": ["srt", "json"],
                    "hotwords": [" asrq "]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "QUEUED"
    assert job["filename"] == "My Talk.wav"
    assert job["options"]["language"] == "en"
    assert job["options"]["formats"] == ["json", "srt"]
    assert job["options"]["hotwords"] == ["asrq"]
    assert job["options"]["engine"] == "whisper"
    assert job["progress"] == {"chunks_done": 0, "chunks_total": None, "audio_s": None}
    uuid.UUID(job["id"])
    assert job["id"] in api.published()  # the prepare message went to the filesystem broker


# ---- multipart uploads -------------------------------------------------------------------------------------------


def test_valid_upload_then_get_and_tenant_isolation(api):
    r = api.upload(language="en", formats=["srt", "txt"])
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "QUEUED"
    assert job["filename"] == "talk.wav"
    assert job["source_uri"] == "upload:talk.wav"
    assert job["options"]["formats"] == ["srt", "txt"]
    jid = job["id"]
    assert api.stored_files() == [f"jobs/{jid}/source/talk.wav"]
    assert (api.objects / f"jobs/{jid}/source/talk.wav").read_bytes() == WAV
    assert jid in api.published()

    got = api.c.get(f"/v1/jobs/{jid}", headers=ACME)
    assert got.status_code == 200
    assert got.json()["id"] == jid and got.json()["state"] == "QUEUED"

    # another tenant sees nothing: not the job, not its transcript, not in listings, cannot delete it
    assert api.c.get(f"/v1/jobs/{jid}", headers=GLOBEX).status_code == 404
    assert api.c.get(f"/v1/jobs/{jid}/transcript", headers=GLOBEX).status_code == 404
    assert api.c.delete(f"/v1/jobs/{jid}", headers=GLOBEX).status_code == 404
    assert api.c.get("/v1/jobs", headers=GLOBEX).json()["jobs"] == []
    assert [j["id"] for j in api.c.get("/v1/jobs", headers=ACME).json()["jobs"]] == [jid]
    assert api.c.get(f"/v1/jobs/{jid}", headers=ACME).json()["state"] == "QUEUED"


@pytest.mark.parametrize("path", ["/v1/jobs/not-a-uuid", "/v1/jobs/123", "/v1/jobs/not-a-uuid/transcript"])
def test_malformed_job_id_is_422(api, path):
    assert api.c.get(path, headers=ACME).status_code == 422
    assert api.c.delete("/v1/jobs/not-a-uuid", headers=ACME).status_code == 422


def test_unknown_job_is_404(api):
    assert api.c.get(f"/v1/jobs/{uuid.uuid4()}", headers=ACME).status_code == 404


def test_transcript_of_queued_job_is_409(api):
    jid = api.upload().json()["id"]
    r = api.c.get(f"/v1/jobs/{jid}/transcript", headers=ACME)
    assert r.status_code == 409
    assert "QUEUED" in r.text
    assert api.c.get(f"/v1/jobs/{jid}/links", headers=ACME).status_code == 409
    assert api.c.get(f"/v1/jobs/{jid}/transcript?format=pdf", headers=ACME).status_code == 422


@pytest.mark.parametrize("fields", [
    {"colour": "red"},
    {"language": "english!"},
    {"formats": "pdf"},
    {"formats": ["srt", "docx"]},
    {"engine": "kaldi"},
    {"options": '{"colour": "red"}'},
    {"options": '{"language": "??"}'},
    {"options": "{not json"},
    {"hotwords": "x" * 65},
    {"model": "../secrets"},
])
def test_invalid_form_options_are_422(api, fields):
    r = api.upload(**fields)
    assert r.status_code == 422, r.text
    assert api.stored_files() == []  # nothing stored for a refused request


def test_multipart_without_file_is_422(api):
    r = api.c.post("/v1/jobs", headers=ACME, data={"language": "en"}, files={"other": ("x", b"", "text/plain")})
    assert r.status_code in (400, 422)
    r = api.c.post("/v1/jobs", headers=ACME, files={"language": (None, "en")})
    assert r.status_code == 422


def test_empty_upload_is_422_and_leaves_nothing(api):
    r = api.upload(data=b"")
    assert r.status_code == 422
    assert "empty" in r.text
    assert api.stored_files() == []
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


def test_upload_with_private_webhook_is_422_and_leaves_nothing(api):
    r = api.upload(webhook_url="https://127.0.0.1/hook")
    assert r.status_code == 422, r.text
    assert api.stored_files() == []  # the upload must not be orphaned in storage without a job
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


def test_options_form_field_and_comma_lists(api):
    r = api.upload(options=json.dumps({"language": "de", "hotwords": ["Köln"]}), formats="srt,vtt", hotwords="a, b")
    assert r.status_code == 202, r.text
    opts = r.json()["options"]
    assert opts["language"] == "de"
    assert opts["formats"] == ["srt", "vtt"]
    assert opts["hotwords"] == ["a", "b"]  # the form field overrides the options JSON


def _raw_multipart(filename: bytes, data: bytes, boundary: bytes = b"asrqB0undary") -> tuple[bytes, dict]:
    body = (b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + data + b"\r\n"
            b"--" + boundary + b"--\r\n")
    return body, {**ACME, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def test_hostile_upload_filename_is_stored_under_a_safe_name(api):
    body, headers = _raw_multipart(b"../../etc/\x01evil\x07name.wav", WAV)
    r = api.c.post("/v1/jobs", headers=headers, content=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["filename"] == "evilname.wav"
    assert api.stored_files() == [f"jobs/{job['id']}/source/evilname.wav"]
    # nothing was written outside the objects folder (the database and broker folder aside)
    assert {p.name for p in api.tmp.iterdir()} <= {"asrq.db", "asrq.db-shm", "asrq.db-wal", "objects", "broker"}
    assert not list(api.tmp.rglob("*evil*"))[1:]  # exactly one file by that name: the stored source


@pytest.mark.parametrize("name, expected", [
    ("..\\..\\windows\\evil.wav", "evil.wav"),
    ("../", "audio"),
    ("日本語の録音.wav", "日本語の録音.wav"),
    ("a;b|c.wav", "a_b_c.wav"),
])
def test_upload_filenames_are_made_safe(api, name, expected):
    r = api.upload(filename=name)
    assert r.status_code == 202, r.text
    assert r.json()["filename"] == expected
    assert api.stored_files() == [f"jobs/{r.json()['id']}/source/{expected}"]


# ---- size limits -------------------------------------------------------------------------------------------------


def test_upload_over_limit_with_content_length_is_413(api):
    r = api.upload(data=b"\0" * (MAX_UPLOAD + 1))
    assert r.status_code == 413
    assert str(MAX_UPLOAD) in r.text
    assert api.stored_files() == []


def test_json_over_limit_is_413(api):
    r = api.submit({"source_uri": "s3://b/" + "k" * MAX_UPLOAD})
    assert r.status_code == 413


def test_json_has_its_own_cap_and_uploads_keep_theirs(api):
    # a body between the two caps: too large as JSON, which is buffered and parsed whole; fine as an upload
    size = (MAX_JSON + MAX_UPLOAD) // 2
    for path in ("/v1/jobs", "/v1/jobs/batch"):
        r = api.c.post(path, headers={**ACME, "Content-Type": "application/json"}, content=b" " * size)
        assert r.status_code == 413, (path, r.text)
        assert str(MAX_JSON) in r.text
    r = api.upload(data=WAV + b"\0" * size)
    assert r.status_code == 202, r.text


def _chunks(total: int, size: int = 16_384):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"\0" * n
        sent += n


def test_streamed_upload_over_limit_is_413(api):
    boundary = b"asrqStream"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n")

    def body():
        yield head
        yield from _chunks(MAX_UPLOAD * 2)
        yield b"\r\n--" + boundary + b"--\r\n"

    headers = {**ACME, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    r = api.c.post("/v1/jobs", headers=headers, content=body())
    assert "content-length" not in {k.lower() for k in r.request.headers}  # really a chunked body
    assert r.status_code == 413
    assert api.stored_files() == []
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


def test_streamed_json_over_limit_is_413(api):
    def body():
        yield b'{"source_uri": "s3://b/'
        yield from (b"k" * len(c) for c in _chunks(MAX_UPLOAD * 2))
        yield b'"}'

    r = api.c.post("/v1/jobs", headers={**ACME, "Content-Type": "application/json"}, content=body())
    assert r.status_code == 413


def test_streamed_upload_under_limit_is_accepted(api):
    boundary = b"asrqStream"

    def body():
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="ok.wav"\r\n\r\n'
        yield WAV
        yield b"\r\n--" + boundary + b"--\r\n"

    headers = {**ACME, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    r = api.c.post("/v1/jobs", headers=headers, content=body())
    assert r.status_code == 202, r.text


def test_batch_over_limit_is_413(api):
    r = api.c.post("/v1/jobs/batch", headers=ACME,
                   json={"jobs": [{"source_uri": f"s3://b/{i}.wav"} for i in range(MAX_BATCH + 1)]})
    assert r.status_code == 413
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


# ---- idempotency -------------------------------------------------------------------------------------------------


def test_idempotency_key_replay_and_conflict_json(api):
    body = {"source_uri": "s3://bucket/a.wav", "language": "en"}
    first = api.submit(body, {"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    again = api.submit(body, {"Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = api.submit({**body, "language": "fr"}, {"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    # the key in the body works the same way
    via_body = api.submit({**body, "idempotency_key": "k-1"})
    assert via_body.status_code == 200 and via_body.json()["id"] == first.json()["id"]
    # keys are per tenant
    g = api.c.post("/v1/jobs", headers={**GLOBEX, "Idempotency-Key": "k-1"}, json=body)
    assert g.status_code == 202 and g.json()["id"] != first.json()["id"]
    assert len(api.c.get("/v1/jobs", headers=ACME).json()["jobs"]) == 1


def test_idempotency_key_replay_and_conflict_upload(api):
    first = api.upload(headers={"Idempotency-Key": "up-1"})
    assert first.status_code == 202
    jid = first.json()["id"]
    again = api.upload(headers={"Idempotency-Key": "up-1"})
    assert again.status_code == 200 and again.json()["id"] == jid
    assert api.stored_files() == [f"jobs/{jid}/source/talk.wav"]  # the replay kept no second copy
    other = api.upload(data=WAV + b"different", headers={"Idempotency-Key": "up-1"})
    assert other.status_code == 409
    assert api.stored_files() == [f"jobs/{jid}/source/talk.wav"]
    assert (api.objects / f"jobs/{jid}/source/talk.wav").read_bytes() == WAV


def test_idempotency_key_too_long_is_422(api):
    r = api.submit({"source_uri": "s3://b/k.wav"}, {"Idempotency-Key": "k" * 256})
    assert r.status_code == 422


# ---- cancel, list, batch, openapi --------------------------------------------------------------------------------


def test_delete_queued_job_cancels_it(api):
    jid = api.upload().json()["id"]
    r = api.c.delete(f"/v1/jobs/{jid}", headers=ACME)
    assert r.status_code == 200
    assert r.json()["state"] == "CANCELLED"
    assert r.json()["error"] == "cancelled by client"
    assert r.json()["timings"]["finished_at"] is not None
    assert api.c.get(f"/v1/jobs/{jid}", headers=ACME).json()["state"] == "CANCELLED"
    assert api.stored_files() == []  # its objects are gone
    again = api.c.delete(f"/v1/jobs/{jid}", headers=ACME)
    assert again.status_code == 200 and again.json()["state"] == "CANCELLED"
    assert api.c.get(f"/v1/jobs/{jid}/transcript", headers=ACME).status_code == 409


def test_list_pagination_and_state_filter(api):
    ids = [api.submit({"source_uri": f"s3://b/{i}.wav"}).json()["id"] for i in range(5)]
    api.c.delete(f"/v1/jobs/{ids[0]}", headers=ACME)
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.c.get("/v1/jobs", headers=ACME, params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    queued = api.c.get("/v1/jobs", headers=ACME, params={"state": "QUEUED"}).json()["jobs"]
    assert sorted(j["id"] for j in queued) == sorted(ids[1:])
    assert api.c.get("/v1/jobs", headers=ACME, params={"state": "BOGUS"}).status_code == 422
    assert api.c.get("/v1/jobs", headers=ACME, params={"limit": 0}).status_code == 422
    assert api.c.get("/v1/jobs", headers=ACME, params={"cursor": "!!notacursor"}).status_code == 400


def test_batch_of_three_s3_uris(api):
    uris = ["s3://bucket/one.wav", "s3://bucket/dir/two.flac", "s3://other/three.mp3"]
    r = api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": [{"source_uri": u, "language": "en"} for u in uris]})
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["count"] == 3 and len(out["job_ids"]) == 3 and len(set(out["job_ids"])) == 3
    names = []
    for jid, uri in zip(out["job_ids"], uris):
        job = api.c.get(f"/v1/jobs/{jid}", headers=ACME).json()
        assert job["state"] == "QUEUED" and job["source_uri"] == uri and job["options"]["language"] == "en"
        names.append(job["filename"])
        assert jid in api.published()
    assert names == ["one.wav", "two.flac", "three.mp3"]


@pytest.mark.parametrize("bad", [{"source_uri": "https://127.0.0.1/x"}, {"source_uri": "ftp://127.0.0.1/x"},
                                 {"source_uri": "s3://b/k.wav", "colour": 1},
                                 {"source_uri": "s3://b/k.wav", "webhook_url": "https://10.0.0.1/h"},
                                 {"source_uri": "https://127.0.0.1:99999/x"}])
def test_batch_with_one_bad_item_creates_nothing(api, bad):
    r = api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": [{"source_uri": "s3://b/ok.wav"}, bad]})
    assert r.status_code == 422, r.text
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


def test_batch_empty_or_duplicate_keys(api):
    assert api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": []}).status_code == 422
    dup = {"jobs": [{"source_uri": "s3://b/1.wav", "idempotency_key": "d"},
                    {"source_uri": "s3://b/2.wav", "idempotency_key": "d"}]}
    assert api.c.post("/v1/jobs/batch", headers=ACME, json=dup).status_code == 400
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []


def test_openapi_lists_job_routes(api):
    r = api.c.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/v1/jobs" in paths and "post" in paths["/v1/jobs"] and "get" in paths["/v1/jobs"]
    assert "/v1/jobs/batch" in paths and "post" in paths["/v1/jobs/batch"]
    assert "/v1/jobs/{job_id}" in paths and "/v1/jobs/{job_id}/transcript" in paths


def test_healthz_embedded(api):
    r = api.c.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
