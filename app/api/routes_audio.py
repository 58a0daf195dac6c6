"""GET /v1/jobs/{id}/audio: the retained uploaded recording of a job, with HTTP Range requests (RFC 9110 §14).

The web page plays it beside the transcript. A media element cannot send a bearer header, so the page's
service worker (app/ui/sw.js) adds it to the element's own Range requests; the key never goes into a URL.
Only the job's tenant gets the audio: another tenant's job id answers the same 404 as a missing one.

What is served: the upload as it was received (``app.constants.source_key``), kept ASRQ_SOURCE_RETENTION_DAYS
after the job finished. A job whose source was a URI kept no copy (404 that says so); a source that retention
or a DELETE removed answers 410.
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from collections.abc import Iterator
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from app.api.auth import current_tenant
from app.constants import source_key
from app.jobs import get_job
from app.sources import UPLOAD_SCHEME
from app.storage import ObjectNotFound, ObjectStore, get_store

router = APIRouter(prefix="/v1", tags=["jobs"])

#: bytes per ranged read of the store while a response streams: a client that stops listening (a media
#: element that has buffered enough, a seek) costs at most one more block
BLOCK_BYTES = 1 << 20

# one "bytes=" range, the only kind served as 206; a list of several is answered whole (200), as RFC 9110
# lets a server ignore Range
_ONE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)

# what browsers expect for the containers people record in; mimetypes knows most, not all, of them
_AUDIO_TYPES = {
    ".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".mp4": "audio/mp4",
    ".aac": "audio/aac", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg", ".webm": "audio/webm",
    ".amr": "audio/amr", ".wma": "audio/x-ms-wma", ".aiff": "audio/aiff", ".aif": "audio/aiff",
}


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The Range header -> [start, end) within ``size`` bytes; None: serve the whole object (no header, a
    header this server ignores: several ranges, another unit, bad syntax). Unsatisfiable: a valid range that
    selects nothing (416)."""
    if not header:
        return None
    m = _ONE_RANGE.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid syntax (RFC 9110 §14.1.1): ignored
    if start >= size:
        raise Unsatisfiable
    end = size if last == "" else min(size, int(last) + 1)
    return start, end


def media_type(filename: str) -> str:
    ext = ("." + filename.rsplit(".", 1)[-1].lower()) if "." in filename else ""
    return _AUDIO_TYPES.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _blocks(store: ObjectStore, key: str, start: int, end: int) -> Iterator[bytes]:
    # a sync generator: Starlette iterates it in its threadpool, so the store's blocking reads stay off the loop
    pos = start
    while pos < end:
        upto = min(end, pos + BLOCK_BYTES)
        data = store.get_range(key, pos, upto)
        if not data:
            return  # the object shrank or went away mid-stream: end short rather than loop
        yield data
        pos += len(data)


# HEAD answers as GET does, without the body; it is left out of the schema so that the two methods do not
# document one operation under one id twice
@router.head("/jobs/{job_id}/audio", include_in_schema=False)
@router.get("/jobs/{job_id}/audio", summary="The job's uploaded recording (Range)",
            responses={200: {"content": {"audio/*": {}}}, 206: {"description": "the requested byte range"},
                       404: {"description": "no such job, or its source was a URI (no copy kept)"},
                       410: {"description": "the uploaded source was removed (retention or DELETE)"},
                       416: {"description": "the range lies outside the recording"}})
async def get_audio(request: Request, job_id: uuid.UUID, tenant: str = Depends(current_tenant)) -> Response:
    def _job():  # noqa: ANN202
        with request.app.state.sessions() as s:
            job = get_job(s, tenant, job_id)  # JobNotFound (404) for another tenant's job as for a missing one
            return job.source_uri, job.filename, job.source_deleted_at, job.deleted_at

    source_uri, filename, source_deleted_at, deleted_at = await run_in_threadpool(_job)
    if not source_uri.startswith(f"{UPLOAD_SCHEME}:"):
        raise HTTPException(404, "this job's audio came from a URI; only uploaded recordings are kept to play back")
    if source_deleted_at is not None or deleted_at is not None:
        raise HTTPException(410, "the uploaded recording of this job was removed (retention or delete)")
    store = get_store()
    key = source_key(job_id, filename)
    try:
        size = await run_in_threadpool(store.size, key)
    except ObjectNotFound as e:
        raise HTTPException(410, "the uploaded recording of this job is no longer stored") from e
    headers = {
        "Accept-Ranges": "bytes",
        # behind a bearer key: no shared cache may keep it, and the browser keeps no copy after the tab
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename)}",
    }
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = wanted if wanted is not None else (0, size)
    status = 206 if wanted is not None else 200
    headers["Content-Length"] = str(end - start)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    mtype = media_type(filename)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=mtype)
    return StreamingResponse(_blocks(store, key, start, end), status_code=status, headers=headers, media_type=mtype)
