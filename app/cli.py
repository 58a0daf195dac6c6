"""The asrq command: embedded one-shot transcription, the services, and the HTTP client."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path

import click

from app.constants import ALL_QUEUES, CPU_QUEUES, TRANSCRIPT_FORMATS
from app.settings import get_settings

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".wma", ".aif", ".aiff",
                  ".amr", ".webm", ".mp4", ".mkv", ".mov", ".avi", ".3gp", ".caf", ".au"}


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


@click.group()
def cli() -> None:
    """asrq: transcribe recordings at scale."""


def _check_engine() -> None:
    """ASRQ_ENGINE names an installed engine: checked when a command that runs the service starts."""
    from app.catalog.plugins import check_engine_setting

    try:
        check_engine_setting(get_settings())
    except ValueError as e:
        raise click.ClickException(str(e)) from e


# --- embedded one-shot -------------------------------------------------------------------------

def _installed_engine(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--engine of the embedded command: an engine plug-in installed here (app/catalog/plugins.py)."""
    if value is None:
        return None
    from app.catalog.plugins import unknown_engine_reason

    if (reason := unknown_engine_reason(value)) is not None:
        raise click.BadParameter(reason)
    return value


def _fmt_clock(t: float) -> str:
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def expand_inputs(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """FILES of ``asrq transcribe``: a folder stands for the files directly in it (by name, hidden ones
    left out); each file once, in the order given."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            out.append(p)
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(TRANSCRIPT_FORMATS), default="srt", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="folder for <input stem>.<format>")
@click.option("--engine", default=None, callback=_installed_engine,
              help="an installed engine (built in: whisper, funasr; more from packages that add one)")
@click.option("--model", default=None, help="model folder, bundled:tiny.en or bundled:base (multilingual)")
@click.option("--language", default=None)
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
def transcribe(files: tuple[Path, ...], fmt: str, out_dir: Path, engine: str | None, model: str | None,
               language: str | None, timeout_s: float) -> None:
    """Transcribe FILES here and now (embedded: SQLite, local broker and folder, no servers). A folder
    stands for the files in it."""
    from app.local_worker import start_local_worker, stop_worker, worker_log

    _check_engine()
    inputs = expand_inputs(files)
    if not inputs:
        raise click.ClickException("no files to transcribe")
    # the worker first: its start-up (seconds of imports) overlaps this command's own imports and set-up
    worker = start_local_worker(worker_log(get_settings()))
    try:
        from app.db.models import JobState
        from app.embedded import EmbeddedError, read_transcript, transcribe_files
    except BaseException:
        stop_worker(worker, idle=True)
        raise
    try:
        outcomes = transcribe_files(inputs, engine, model, language, timeout_s, worker=worker)
    except EmbeddedError as e:
        raise click.ClickException(str(e)) from e
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for o in outcomes:
        if o.state != JobState.COMPLETED:
            failed += 1
            click.echo(f"{o.path.name}: {o.state.value}: {o.error}", err=True)
            continue
        data, doc = read_transcript(o.job_id, fmt)
        dest = out_dir / f"{o.path.stem}.{fmt}"
        dest.write_bytes(data)
        click.echo(f"# {o.path.name} ({doc['duration_s']:.1f} s) -> {dest}")
        for seg in doc["segments"]:
            click.echo(f"[{_fmt_clock(seg['start'])} --> {_fmt_clock(seg['end'])}] {seg['text']}")
    if failed:
        sys.exit(1)


# --- services ----------------------------------------------------------------------------------

@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from app.db.migrate import upgrade

    upgrade(get_settings().database_url)
    click.echo("database at head")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
@click.option("--workers", "n_workers", default=1, type=int, show_default=True)
def api(host: str, port: int, n_workers: int) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    settings = get_settings()
    _setup_logging()
    _check_engine()
    if settings.database_url.startswith("sqlite"):
        from app.db.migrate import upgrade

        upgrade(settings.database_url)
    if not _is_loopback(host) and not _keys_exist(settings):
        raise click.ClickException("refusing to serve without API keys on a non-loopback address; "
                                   "add one with `asrq keys add --tenant NAME` or set ASRQ_API_KEYS")
    if n_workers > 1:
        # several API processes: each writes its counters to files that /metrics, in any of them, sums
        from app.metrics import MULTIPROC_ENV, prepare_multiproc_dir

        os.environ[MULTIPROC_ENV] = str(prepare_multiproc_dir(settings.home / f"prometheus-api-{port}"))
    uvicorn.run("app.api.main:create_app", factory=True, host=host, port=port, workers=n_workers,
                log_level="info", access_log=False)


def _is_loopback(host: str) -> bool:
    from app.api.auth import is_loopback

    return is_loopback(host)


def _keys_exist(settings) -> bool:  # noqa: ANN001
    """A key in ASRQ_API_KEYS or in the database (revoked ones too: the API then refuses every caller)."""
    from sqlalchemy.exc import DBAPIError

    from app.api.auth import keys_exist
    from app.db.session import session_scope

    if settings.api_key_entries():
        return True
    try:
        with session_scope() as s:
            return keys_exist(s)
    except DBAPIError as e:
        # cannot tell whether keys exist: serving the network open on a guess is not an option
        raise click.ClickException(f"cannot read the API keys from the database ({type(e).__name__}); "
                                   "is it up and migrated (`asrq migrate`)?") from e


@cli.command()
@click.option("--queues", default=",".join(CPU_QUEUES), show_default=True,
              help="for CPU workers; a list with maintenance but neither reconcile nor webhook (from before "
                   "those had queues) gets both added")
@click.option("--gpus", default=None, help="all | 0,1,... | cpu: one transcribe process per card")
@click.option("--concurrency", default=None, type=int, help="CPU worker processes (default: cores)")
@click.option("--beat", is_flag=True, help="also run the reconciler schedule (run exactly one)")
@click.option("--metrics-port", default=None, type=int, help="serve Prometheus /metrics of these workers here")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="address of --metrics-port")
def worker(queues: str, gpus: str | None, concurrency: int | None, beat: bool, metrics_port: int | None,
           metrics_host: str) -> None:
    """Run workers: CPU queues (prepare, finalize, maintenance, reconcile, webhook: the last two each in a pool
    of its own) or transcribe processes pinned to GPUs."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - set(ALL_QUEUES)
    if gpus is None and unknown:
        raise click.ClickException(f"unknown queues: {', '.join(sorted(unknown))}")
    _check_engine()
    # the workers are a program of their own (workers/launcher.py): this process becomes it
    argv = [sys.executable, "-m", "workers.launcher", "--metrics-host", metrics_host]
    argv += ["--gpus", gpus] if gpus is not None else ["--queues", ",".join(names)]
    argv += ["--concurrency", str(concurrency)] if concurrency is not None else []
    argv += ["--beat"] if beat else []
    argv += ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
    sys.stdout.flush()
    os.execv(sys.executable, argv)


@cli.group()
def keys() -> None:
    """API keys (stored hashed)."""


@keys.command("add")
@click.option("--tenant", required=True)
def keys_add(tenant: str) -> None:
    """Create a key for TENANT; prints the secret (shown only this once) on stdout, its id on stderr."""
    from app.api.auth import add_key
    from app.db.migrate import upgrade
    from app.db.session import session_scope

    upgrade(get_settings().database_url)  # a fresh home has no tables yet; at head this is a no-op
    with session_scope() as s:
        key, secret = add_key(s, tenant)
        key_id = key.id
    click.echo(secret)
    click.echo(f"key {key_id} for tenant {tenant}", err=True)


@keys.command("list")
def keys_list() -> None:
    """Every key: tenant, key id, created, revoked (the secrets are not stored, only their hashes)."""
    from app.api.auth import list_keys
    from app.db.session import session_scope

    with session_scope() as s:
        rows = [(k.tenant, str(k.id), _iso(k.created_at), _iso(k.revoked_at) or "-") for k in list_keys(s)]
    header = ("TENANT", "KEY_ID", "CREATED", "REVOKED")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID (from `asrq keys list`); running APIs refuse it within ASRQ_AUTH_CACHE_TTL_S."""
    from app.api.auth import revoke_key
    from app.db.session import session_scope

    try:
        kid = uuid.UUID(key_id)
    except ValueError as e:
        raise click.ClickException(f"not a key id: {key_id!r} (see `asrq keys list`)") from e
    with session_scope() as s:
        key = revoke_key(s, kid)
        if key is None:
            raise click.ClickException(f"no key {kid}")
        tenant, revoked_at = key.tenant, key.revoked_at
    ttl = get_settings().auth_cache_ttl_s
    click.echo(f"key {kid} of tenant {tenant} revoked at {_iso(revoked_at)}; "
               f"running APIs refuse it within {ttl:g} s")


@keys.command("webhook-secret")
@click.option("--tenant", required=True)
@click.option("--rotate", is_flag=True, help="replace it: deliveries from now on are signed with the new one")
def keys_webhook_secret(tenant: str, rotate: bool) -> None:
    """Print TENANT's webhook signing secret (whsec_..., made on first use) for its receivers to verify
    the webhook-signature header with (Standard Webhooks)."""
    from app.db.migrate import upgrade
    from app.db.session import session_scope
    from app.webhooks import rotate_secret, tenant_secret

    upgrade(get_settings().database_url)
    with session_scope() as s:
        secret = rotate_secret(s, tenant) if rotate else tenant_secret(s, tenant)
    click.echo(secret)


@cli.group()
def models() -> None:
    """Models under ASRQ_MODELS_DIR: pull one by hub name, list what is installed."""


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@models.command("pull")
@click.argument("name")
@click.option("--hub", type=click.Choice(["ms", "hf"]), default="ms", show_default=True,
              help="ModelScope (FunASR's default) or Hugging Face; HF_ENDPOINT / MODELSCOPE_ENDPOINT name a mirror")
@click.option("--revision", default=None, help="branch, tag or commit (default: the hub's main one)")
@click.option("--force", is_flag=True, help="download again and replace what is installed")
def models_pull(name: str, hub: str, revision: str | None, force: bool) -> None:
    """Download the FunASR model NAME (paraformer-zh, ct-punc, iic/SenseVoiceSmall, ...) into
    ASRQ_MODELS_DIR, once. Jobs then name it by NAME, its hub id or its folder; workers never download."""
    from app.catalog.hub import PullError, pull

    _setup_logging("WARNING")
    models_dir = get_settings().models_dir
    if models_dir is None:
        raise click.ClickException("set ASRQ_MODELS_DIR to the models folder the API and the workers read")
    try:
        got = pull(name, models_dir, hub, revision, force)
    except PullError as e:
        raise click.ClickException(str(e)) from e
    verb = "already installed" if got.already else "installed"
    click.echo(f"{got.model_id} {verb} in {got.folder} ({_human_bytes(got.size_bytes)}); "
               f"jobs name it: {', '.join([*got.names, got.folder.name])}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
def models_list(as_json: bool) -> None:
    """Installed models of every engine, as jobs name them, with their size and where they came from."""
    from app.catalog.hub import folder_size_bytes, read_manifest
    from app.catalog.models import installed_models, model_location
    from app.catalog.plugins import engine_names

    settings = get_settings()
    rows = []
    for engine in engine_names():
        for name in installed_models(engine, settings):
            folder = model_location(engine, name, settings.models_dir)
            doc = read_manifest(folder) if folder is not None else None
            rows.append({"engine": engine, "model": name, "size_bytes": folder_size_bytes(folder) if folder else 0,
                         "hub_id": (doc or {}).get("model_id"), "hub": (doc or {}).get("hub"),
                         "names": (doc or {}).get("names", []), "path": str(folder)})
    if as_json:
        click.echo(json.dumps({"models_dir": str(settings.models_dir) if settings.models_dir else None,
                               "models": rows}, indent=2, ensure_ascii=False))
        return
    table = [("ENGINE", "MODEL", "SIZE", "HUB ID")] + [
        (r["engine"], r["model"], _human_bytes(r["size_bytes"]), f"{r['hub']}:{r['hub_id']}" if r["hub_id"] else "-")
        for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    if settings.models_dir is None:
        click.echo("(ASRQ_MODELS_DIR is not set: only bundled models and ASRQ_MODEL)", err=True)


def _iso(t) -> str:  # noqa: ANN001
    return t.isoformat(timespec="seconds") if t is not None else ""


# --- client ------------------------------------------------------------------------------------

def _client():  # noqa: ANN202
    from app.client import AsrqClient

    return AsrqClient(os.environ.get("ASRQ_API_URL", "http://127.0.0.1:8000"), os.environ.get("ASRQ_API_KEY"))


def _expand(sources: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    uris: list[str] = []
    for src in sources:
        if src.startswith("s3://"):
            uris += _list_s3(src)
        elif "://" in src:
            uris.append(src)
        elif Path(src).is_dir():
            files += sorted(p for p in Path(src).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif Path(src).is_file():
            files.append(Path(src))
        else:
            raise click.ClickException(f"no such file or folder: {src}")
    return files, uris


def _list_s3(prefix_uri: str) -> list[str]:
    """s3://bucket/prefix/ -> every object under it (a key without a trailing slash names one object)."""
    import boto3

    bucket, _, prefix = prefix_uri[5:].partition("/")
    if prefix and not prefix.endswith("/"):
        return [prefix_uri]
    s3 = boto3.client("s3", endpoint_url=os.environ.get("ASRQ_S3_ENDPOINT_URL") or None)
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    return out


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="wait until every job has finished")
@click.option("--engine", default=None)
@click.option("--model", default=None)
@click.option("--language", default=None)
@click.option("--hotword", "hotwords", multiple=True)
@click.option("--hotwords-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="UTF-8 text file, one hotword per line (up to 1,000), after any --hotword")
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), default=None,
              help="order among this tenant's own jobs (fair share between tenants comes first)")
def submit(sources: tuple[str, ...], wait: bool, engine: str | None, model: str | None, language: str | None,
           hotwords: tuple[str, ...], hotwords_file: Path | None, priority: str | None) -> None:
    """Submit FILE, DIR or s3://bucket/prefix/ to the API; prints one job ID per line."""
    from tqdm import tqdm

    from app.hotword_list import parse_hotwords_text

    words = list(hotwords)
    if hotwords_file is not None:
        # read here and sent as the hotwords list: the same for uploads and URI batches
        try:
            words += parse_hotwords_text(hotwords_file.read_bytes(), str(hotwords_file))
        except ValueError as e:
            raise click.ClickException(str(e)) from e
    options = {k: v for k, v in {"engine": engine, "model": model, "language": language,
                                 "hotwords": words, "priority": priority}.items() if v}
    files, uris = _expand(sources)
    if not files and not uris:
        raise click.ClickException("nothing to submit")
    # an upload's form field splits hotwords on commas; inside the form's options JSON they stay whole
    upload_options = ({**{k: v for k, v in options.items() if k != "hotwords"},
                       "options": json.dumps({"hotwords": words}, ensure_ascii=False)} if words else options)
    ids: list[str] = []
    with _client() as c:
        for path in tqdm(files, desc="upload", unit="file", disable=len(files) < 2, file=sys.stderr):
            ids.append(c.submit_file(path, upload_options)["id"])
        for i in range(0, len(uris), 10_000):
            ids += c.submit_batch(uris[i : i + 10_000], options)
        for jid in ids:
            click.echo(jid)
        if wait:
            done = _wait_with_bar(c, ids)
            failed = [j for j in done.values() if j["state"] != "COMPLETED"]
            for j in failed:
                click.echo(f"{j['id']} {j['state']}: {j.get('error')}", err=True)
            if failed:
                sys.exit(1)


STATE_ORDER = ("QUEUED", "PREPARING", "TRANSCRIBING", "FINALIZING", "COMPLETED", "FAILED", "CANCELLED")


def _wait_with_bar(c, ids: list[str]) -> dict[str, dict]:  # noqa: ANN001
    """One progress bar over every job: finished of total, the ETA tqdm draws from the finishing rate, and
    the count in each state, from one bulk status request per poll."""
    from tqdm import tqdm

    poll_s = min(5.0, max(0.5, len(ids) / 2000))  # thousands of jobs: no point polling twice a second
    with tqdm(total=len(ids), desc="jobs", unit="job", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(finished: int, counts: dict[str, int]) -> None:
            bar.set_postfix_str(" ".join(f"{st.lower()}={counts[st]}" for st in
                                         [*STATE_ORDER, *sorted(set(counts) - set(STATE_ORDER))] if counts.get(st)),
                                refresh=False)
            bar.update(finished - bar.n)

        return c.wait(ids, timeout_s=float("inf"), poll_s=poll_s, on_progress=progress)


def _since(value: str | None) -> str | None:
    """--since: an ISO date or time (UTC unless it says), or an age such as 30m, 12h, 7d."""
    if value is None:
        return None
    import re
    from datetime import datetime, timedelta, timezone

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", value.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return (datetime.now(timezone.utc) - timedelta(**{unit: float(m.group(1))})).isoformat()
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: expected an ISO date/time or an age like 30m, 12h, 7d") from e


@cli.command("jobs")
@click.option("--state", type=click.Choice(STATE_ORDER, case_sensitive=False), default=None)
@click.option("--since", "since", default=None, help="created since: ISO date/time (UTC) or an age: 30m, 12h, 7d")
@click.option("--filename", default=None, help="part of the file name (case-insensitive; * matches anything)")
@click.option("--batch", default=None, help="the batch_id a batch submit returned")
@click.option("--limit", default=100, type=int, show_default=True, help="at most this many (0: all)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def jobs_cmd(state: str | None, since: str | None, filename: str | None, batch: str | None, limit: int,
             as_json: bool) -> None:
    """List jobs, newest first."""
    with _client() as c:
        rows = c.jobs(state=state.upper() if state else None, since=_since(since), filename=filename, batch=batch,
                      limit=limit or None)
        if as_json:
            for j in rows:
                click.echo(json.dumps(j))
            return
        header = ("ID", "STATE", "CREATED", "AUDIO_S", "CHUNKS", "FILENAME")
        table = [header]
        for j in rows:
            p = j["progress"]
            table.append((j["id"], j["state"], j["timings"]["created_at"][:19],
                          f"{j['duration_s']:.1f}" if j.get("duration_s") is not None else "-",
                          f"{p['chunks_done']}/{p['chunks_total'] if p['chunks_total'] is not None else '?'}",
                          j["filename"]))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@cli.command("usage")
@click.option("--from", "start", default=None, help="first day, YYYY-MM-DD (UTC); default: 30 days ago")
@click.option("--to", "end", default=None, help="last day, YYYY-MM-DD (UTC); default: today")
@click.option("--json", "as_json", is_flag=True)
def usage_cmd(start: str | None, end: str | None, as_json: bool) -> None:
    """Usage of the API key's tenant per UTC day: jobs and audio submitted and transcribed, engine seconds."""
    with _client() as c:
        u = c.usage(start, end)
    if as_json:
        click.echo(json.dumps(u, indent=2))
        return
    cols = ("jobs_submitted", "audio_submitted_s", "jobs_completed", "audio_transcribed_s", "engine_s")
    header = ("DAY", "SUBMITTED", "AUDIO_IN_S", "COMPLETED", "AUDIO_DONE_S", "ENGINE_S")
    table = [header] + [(str(d["day"]), *(_num(d[k]) for k in cols)) for d in u["days"]]
    table.append(("total", *(_num(u["total"][k]) for k in cols)))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    click.echo(f"tenant {u['tenant']}, {u['from']} to {u['to']} (UTC)")
    for row in table:
        click.echo("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:.1f}"


@cli.command()
@click.argument("job_id")
def status(job_id: str) -> None:
    """Show a job as JSON."""
    with _client() as c:
        click.echo(json.dumps(c.job(job_id), indent=2))


@cli.command()
@click.argument("job_id")
@click.option("--format", "fmt", type=click.Choice(TRANSCRIPT_FORMATS), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="a file, or a folder for <input stem>.<format>")
def get(job_id: str, fmt: str, output: Path | None) -> None:
    """Fetch a transcript."""
    with _client() as c:
        data = c.transcript(job_id, fmt)
        if output is None:
            click.echo(data.decode("utf-8"), nl=False)
            return
        if output.is_dir():
            stem = Path(c.job(job_id)["filename"]).stem or job_id
            output = output / f"{stem}.{fmt}"
        output.write_bytes(data)
        click.echo(str(output), err=True)


def main() -> None:
    try:
        cli()
    except Exception as e:  # noqa: BLE001 - a client-facing tool prints errors, not tracebacks
        from app.client import ApiError

        if isinstance(e, ApiError):
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
