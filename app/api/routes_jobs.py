"""/v1/jobs: submit (upload or URI), batch submit, get, list, bulk status, transcript, cancel/delete."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import BinaryIO

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from app.api.auth import current_tenant
from app.constants import TASK_PREPARE, TRANSCRIPT_FORMATS, source_key, transcript_key
from app.db.models import Job, JobState
from app.hotword_list import MAX_HOTWORDS_FILE_BYTES, parse_hotwords_text
from app.jobs import (
    JobFilter,
    NewJob,
    cancel_or_delete,
    get_job,
    job_out,
    job_statuses,
    list_jobs,
    resolved_options,
    submit_many,
    submit_one,
)
from app.messaging import send_prepare, try_send
from app.schemas import (
    BatchCreate,
    BatchOut,
    JobCreate,
    JobList,
    JobOptions,
    JobOut,
    JobStatusOut,
    Progress,
    StatusOut,
    StatusQuery,
)
from app.errors import TransientError
from app.sent_index import try_promise
from app.sources import (
    UPLOAD_SCHEME,
    Lookup,
    lookup_target,
    resolve_all,
    safe_filename,
    validate_source_uri,
    validate_webhook_url,
)
from app.storage import ObjectNotFound, get_store

router = APIRouter(prefix="/v1", tags=["jobs"])

FORM_FIELDS = {"file", "engine", "model", "language", "hotwords", "hotwords_file", "formats", "webhook_url",
               "options", "punc_model", "itn", "priority"}
MEDIA_TYPES = {"json": "application/json", "srt": "application/x-subrip", "vtt": "text/vtt", "txt": "text/plain"}


class _HashingReader:
    """Streams an upload to storage while hashing it, so the bytes are read once."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _form_options(form) -> JobOptions:  # noqa: ANN001
    unknown = set(form.keys()) - FORM_FIELDS
    if unknown:
        raise HTTPException(422, f"unknown form fields: {', '.join(sorted(unknown))}")
    raw: dict = json.loads(form["options"]) if form.get("options") else {}
    for name in ("engine", "model", "language", "punc_model", "itn", "priority"):
        if form.get(name):
            raw[name] = form[name]
    for name in ("hotwords", "formats"):
        values = [v for item in form.getlist(name) for v in str(item).split(",") if v.strip()]
        if values:
            raw[name] = [v.strip() for v in values]
    return JobOptions(**raw)


async def _hotwords_file(form) -> list[str]:  # noqa: ANN001
    """The hotwords_file form field (one hotword per line, UTF-8): read up to its cap, never further."""
    item = form.get("hotwords_file")
    if item is None:
        return []
    if isinstance(item, UploadFile):
        data = await item.read(MAX_HOTWORDS_FILE_BYTES + 1)
    else:  # sent as a plain form field rather than a file part
        data = str(item).encode("utf-8")
    try:
        return parse_hotwords_text(data, "hotwords_file")
    except ValueError as e:
        raise HTTPException(422, str(e)) from e


def _lookup(settings, urls) -> Lookup:  # noqa: ANN001
    """The hosts these source and webhook URLs name, each resolved once, side by side, within the DNS
    timeout (ASRQ_DNS_TIMEOUT_S); checking the URLs then waits for nothing."""
    return resolve_all([t for u in urls if u and (t := lookup_target(u, settings))], settings.dns_timeout_s)


def _validation_422(e: ValidationError) -> HTTPException:
    return HTTPException(422, [{"loc": err["loc"], "msg": err["msg"]} for err in e.errors()])


@router.post("/jobs", status_code=202, response_model=JobOut, summary="Submit one recording (upload or URI)")
async def submit_job(
    request: Request,
    tenant: str = Depends(current_tenant),
    idempotency_key: str | None = Header(None, max_length=255),
) -> JSONResponse:
    settings = request.app.state.settings
    ctype = request.headers.get("content-type", "")
    job_id = uuid.uuid4()
    uploaded_key = None
    lookup: Lookup | None = None
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=2, max_fields=len(FORM_FIELDS))
            upload = form.get("file")
            if not isinstance(upload, UploadFile) or len(form.getlist("file")) != 1:
                raise HTTPException(422, "multipart upload needs the audio in the form field 'file', once")
            options = _form_options(form)
            if from_file := await _hotwords_file(form):
                # the listed hotwords first, then the file's; JobOptions drops repeats, refuses over 1,000
                options = JobOptions(**{**options.model_dump(), "hotwords": [*options.hotwords, *from_file]})
            resolved_options(options, settings)  # a model that is not installed: 422 before storing the upload
            webhook = form.get("webhook_url") or None
            filename = safe_filename(upload.filename)
            uploaded_key = source_key(job_id, filename)
            reader = _HashingReader(upload.file)
            await run_in_threadpool(get_store().put_stream, uploaded_key, reader, upload.content_type)
            if reader.size == 0:
                raise HTTPException(422, "the uploaded file is empty")
            new = NewJob(f"{UPLOAD_SCHEME}:{filename}", filename, options, webhook, idempotency_key,
                         reader.sha.hexdigest())
        elif ctype.startswith("application/json"):
            try:
                body = JobCreate.model_validate_json(await request.body())
            except ValidationError as e:
                raise _validation_422(e) from e
            lookup = await run_in_threadpool(_lookup, settings, [body.source_uri, body.webhook_url])
            validate_source_uri(body.source_uri, settings, tenant, lookup)
            from app.sources import filename_from_uri

            new = NewJob(body.source_uri, filename_from_uri(body.source_uri),
                         JobOptions(**body.model_dump(include=set(JobOptions.model_fields))), body.webhook_url,
                         idempotency_key or body.idempotency_key)
        else:
            raise HTTPException(415, "send multipart/form-data with a 'file' field, or JSON with 'source_uri'")
        if new.webhook_url:
            if lookup is None:
                lookup = await run_in_threadpool(_lookup, settings, [new.webhook_url])
            validate_webhook_url(new.webhook_url, settings, lookup=lookup)
    except ValidationError as e:
        raise _validation_422(e) from e
    except json.JSONDecodeError as e:
        raise HTTPException(422, "the 'options' form field is not valid JSON") from e
    except BaseException:
        # refused after the upload was stored (empty file, bad webhook_url): no job will ever own it
        if uploaded_key:
            await run_in_threadpool(get_store().delete_prefix, f"jobs/{job_id}/")
        raise

    def _create() -> tuple[JobOut, bool, list[int]]:
        with request.app.state.sessions() as s:
            job, created, levels = submit_one(s, tenant, new, settings, job_id)  # TooManyQueued: 429
            return job_out(job), created, levels

    def _no_row() -> bool:
        """True only when the database says no job holds this id: a commit whose answer was lost (the
        database went away as it replied) may have stored the row, and a retry with the same
        Idempotency-Key is then answered with that job, which needs its upload."""
        try:
            with request.app.state.sessions() as s:
                return s.get(Job, job_id) is None
        except Exception:  # noqa: BLE001 - cannot tell: keep the upload (an orphan costs storage, not a job)
            return False

    try:
        out, created, levels = await run_in_threadpool(_create)
    except BaseException:
        if uploaded_key and await run_in_threadpool(_no_row):
            await run_in_threadpool(get_store().delete_prefix, f"jobs/{job_id}/")
        raise
    if created:
        await run_in_threadpool(try_send, lambda ids: send_prepare(ids, levels), [job_id])
    elif uploaded_key:
        await run_in_threadpool(get_store().delete_prefix, f"jobs/{job_id}/")  # a replay keeps no second copy
    return JSONResponse(out.model_dump(mode="json"), 202 if created else 200)


async def _json_body(request: Request, model: type[BaseModel], example: str) -> BaseModel:
    """A JSON body read only once the key was checked: FastAPI reads and decodes a declared body parameter
    before it runs any dependency, so an unauthenticated client could make it parse up to the body cap."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, f"send JSON: {example}")
    raw = await request.body()
    try:
        # up to max_json_bytes of JSON: decoded off the event loop so other requests keep moving
        return await run_in_threadpool(model.model_validate_json, raw)
    except ValidationError as e:
        raise _validation_422(e) from e


async def _batch_body(request: Request, _tenant: str = Depends(current_tenant)) -> BatchCreate:
    return await _json_body(request, BatchCreate, '{"jobs": [{"source_uri": ...}, ...]}')


@router.post("/jobs/batch", status_code=202, response_model=BatchOut, summary="Submit many recordings by URI",
             # the body is read by _batch_body after authentication, so FastAPI cannot infer its schema
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/BatchCreate"}}}}})
def submit_batch(request: Request, background: BackgroundTasks, tenant: str = Depends(current_tenant),
                 body: BatchCreate = Depends(_batch_body)) -> BatchOut:
    settings = request.app.state.settings
    if len(body.jobs) > settings.max_batch_jobs:
        raise HTTPException(413, f"a batch holds at most {settings.max_batch_jobs} jobs; split it")
    # up to 10,000 https sources and webhooks: each distinct host looked up once, all side by side, within
    # the DNS timeout; one after another, a slow resolver held this thread for minutes
    lookup = _lookup(settings, [u for item in body.jobs for u in (item.source_uri, item.webhook_url)])
    for n, item in enumerate(body.jobs):
        try:
            validate_source_uri(item.source_uri, settings, tenant, lookup)
            resolved_options(JobOptions(**item.model_dump(include=set(JobOptions.model_fields))), settings)
            if item.webhook_url:
                validate_webhook_url(item.webhook_url, settings, lookup=lookup)
        except TransientError:
            raise  # DNS down or too slow: 503 with Retry-After, as for one job
        except Exception as e:
            raise HTTPException(422, f"jobs[{n}]: {e}") from e
    batch_id = uuid.uuid4()
    with request.app.state.sessions() as s:
        ids, levels = submit_many(s, tenant, body.jobs, settings, batch_id)  # 429 when full
    # The rows are committed, so the jobs exist whatever happens next. The messages are published after
    # the response (10,000 take about half a second); until then each is promised, so the reconciler does
    # not count them lost. If this process dies before it is done, the promise lapses
    # (settings.publish_promise_s) and the reconciler sends what is missing.
    try_promise(TASK_PREPARE, ids)
    background.add_task(try_send, lambda job_ids: send_prepare(job_ids, levels), ids)
    return BatchOut(job_ids=[str(i) for i in ids], count=len(ids), batch_id=str(batch_id))


async def _status_body(request: Request, _tenant: str = Depends(current_tenant)) -> StatusQuery:
    return await _json_body(request, StatusQuery, '{"ids": ["<job id>", ...]}')


@router.post("/jobs/status", response_model=StatusOut, summary="State and progress of many jobs in one call",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": StatusQuery.model_json_schema()}}}})
def bulk_status(request: Request, tenant: str = Depends(current_tenant),
                body: StatusQuery = Depends(_status_body)) -> StatusOut:
    """A client following thousands of jobs polls them all with one request (up to ASRQ_MAX_BATCH_JOBS ids,
    the most one batch submit creates); ids it cannot see are listed as not found."""
    limit = request.app.state.settings.max_batch_jobs
    if len(body.ids) > limit:
        raise HTTPException(413, f"at most {limit} ids per call; split them")
    with request.app.state.sessions() as s:
        found, missing = job_statuses(s, tenant, body.ids, body.full)
        counts: dict[str, int] = {}
        for j in found:
            counts[j.state.value] = counts.get(j.state.value, 0) + 1
        jobs = [job_out(j) if body.full else
                JobStatusOut(id=str(j.id), state=j.state.value, error=j.error, finished_at=j.finished_at,
                             progress=Progress(chunks_done=j.chunks_done, chunks_total=j.chunks_total,
                                               audio_s=j.duration_s))
                for j in found]
    return StatusOut(jobs=jobs, not_found=[str(j) for j in missing], counts=counts)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job_route(request: Request, job_id: uuid.UUID, tenant: str = Depends(current_tenant)) -> JobOut:
    with request.app.state.sessions() as s:
        return job_out(get_job(s, tenant, job_id))


@router.get("/jobs", response_model=JobList)
def list_jobs_route(request: Request, tenant: str = Depends(current_tenant), state: JobState | None = None,
                    cursor: str | None = None, limit: int = Query(100, ge=1, le=1000),
                    batch: uuid.UUID | None = Query(None, description="the batch_id POST /v1/jobs/batch returned"),
                    since: datetime | None = Query(None, description="created at or after (ISO 8601; UTC if no zone)"),
                    filename: str | None = Query(None, min_length=1, max_length=255,
                                                 description="part of the file name, case-insensitive; * matches any")
                    ) -> JobList:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    where = JobFilter(batch_id=batch, since=since, filename=filename)
    with request.app.state.sessions() as s:
        jobs, nxt = list_jobs(s, tenant, state, cursor, limit, where)
        return JobList(jobs=[job_out(j) for j in jobs], next_cursor=nxt)


@router.get("/jobs/{job_id}/transcript", summary="The transcript as json, srt, vtt or txt")
def get_transcript(request: Request, job_id: uuid.UUID, tenant: str = Depends(current_tenant),
                   format: str = Query("json", pattern="^(json|srt|vtt|txt)$"),  # noqa: A002
                   redirect: bool = False) -> Response:
    with request.app.state.sessions() as s:
        job = get_job(s, tenant, job_id)
        state, deleted = job.state, job.deleted_at is not None
    if deleted and state == JobState.COMPLETED:
        raise HTTPException(410, "the transcript of this job was deleted")
    if state != JobState.COMPLETED:
        raise HTTPException(409, f"job is {state.value}; the transcript exists once it is COMPLETED")
    store = get_store()
    key = transcript_key(job_id, format)
    if redirect:
        url = store.presign(key, request.app.state.settings.presign_expiry_s)
        if url:
            return RedirectResponse(url, 307)
    try:
        data = store.get_bytes(key)
    except ObjectNotFound as e:
        raise HTTPException(404, f"no {format} transcript stored for this job") from e
    return Response(data, media_type=MEDIA_TYPES[format] + ("; charset=utf-8" if format != "json" else ""))


@router.get("/jobs/{job_id}/links", summary="Presigned, expiring links to each transcript format")
def get_links(request: Request, job_id: uuid.UUID, tenant: str = Depends(current_tenant)) -> dict:
    with request.app.state.sessions() as s:
        job = get_job(s, tenant, job_id)
    if job.state != JobState.COMPLETED:
        raise HTTPException(409, f"job is {job.state.value}")
    expiry = request.app.state.settings.presign_expiry_s
    store = get_store()
    return {"expires_in_s": expiry,
            "links": {f: store.presign(transcript_key(job_id, f), expiry) for f in TRANSCRIPT_FORMATS}}


@router.get("/jobs/{job_id}/webhooks", summary="The job's webhook deliveries, each try with its answer")
def get_webhooks(request: Request, job_id: uuid.UUID, tenant: str = Depends(current_tenant)) -> dict:
    from app.webhooks import deliveries_of

    with request.app.state.sessions() as s:
        get_job(s, tenant, job_id)
        return {"job_id": str(job_id), "webhooks": deliveries_of(s, job_id)}


@router.delete("/jobs/{job_id}", response_model=JobOut, summary="Cancel a running job or delete a finished one's objects")
def delete_job(request: Request, job_id: uuid.UUID, tenant: str = Depends(current_tenant)) -> JobOut:
    with request.app.state.sessions() as s:
        return job_out(cancel_or_delete(s, get_store(), tenant, job_id))
