"""The web page at /ui/, in a real browser (Debian's chromium, driven by Playwright) against the real stack:
the API, a CPU worker and a transcribe worker on Postgres, Redis and an S3 server (moto).

Every wait is on a condition in the page (Playwright's expect, or a promise on a media event), never a sleep.
The page keeps its strict CSP in these tests (no bypass), so anything it tried to run inline would fail here.
ASRQ_UI_SCREENSHOT=1 also writes the job page's screenshot to app/ui/screenshot-job.png (the README's)."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.services import AUDIO, ROOT

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# no outbound connection of its own (the machine has no network but the package registries; without these
# flags Chromium's background requests are refused and slow it down), and nothing downloaded
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# read at import: the stack fixture clears ASRQ_* from this process's environment for its own settings
SCREENSHOT = bool(os.environ.get("ASRQ_UI_SCREENSHOT"))
LONG = 240_000  # ms: a job through the whole stack on 2 shared cores
XSS = "<img src=x onerror=window.__xss=1>"

# watches the page for anything that tried to break its CSP (an injected handler, an inline style)
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`));
"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Session:
    """One browser context (its own sessionStorage) on the stack, with what the page did recorded."""

    def __init__(self, browser, stack, viewport=(1280, 860)) -> None:  # noqa: ANN001
        self.stack = stack
        self.ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
        self.ctx.add_init_script(WATCH)
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.ctx.on("request", lambda r: self.urls.append(r.url))
        self.audio: list[tuple[str, int, dict]] = []  # (url, status, request headers) of the audio endpoint
        self.ctx.on("response", lambda r: "/audio" in r.url and self.audio.append((r.url, r.status, r.request.headers)))
        self.page = self.ctx.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self, key: str | None = None) -> None:
        from playwright.sync_api import expect

        pg = self.page
        pg.goto(self.stack.api_url + "/ui/")
        pg.fill("#key", key or self.stack.api_key)
        pg.click("form.signin button[type=submit]")
        expect(pg.locator("#dropzone")).to_be_visible()

    def close(self) -> None:
        self.ctx.close()


@pytest.fixture
def session(browser, stack):
    sessions: list[Session] = []

    def make(**kw) -> Session:  # noqa: ANN003
        s = Session(browser, stack, **kw)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        key_in_urls = [u for u in s.urls if stack.api_key in u]
        csp = s.page.evaluate("window.__csp") if not s.page.is_closed() else []
        s.close()
        assert not s.errors, s.errors
        assert not key_in_urls, key_in_urls  # the key is a header, never a URL
        assert csp == [], csp


class Hook:
    """A webhook receiver on loopback: answers 204 to every POST and keeps the paths it got."""

    def __init__(self) -> None:
        import http.server
        import threading

        got = self.got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _api(stack, key: str | None = None) -> httpx.Client:  # noqa: ANN001
    return httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key or stack.api_key}"}, timeout=30)


def _uploaded(pg, n: int) -> dict[str, str]:  # noqa: ANN001
    """{file name: job id} of the upload list, once ``n`` uploads are done."""
    from playwright.sync_api import expect

    expect(pg.locator("ul.uploads li.u-done")).to_have_count(n, timeout=LONG)
    pairs = pg.locator("ul.uploads li.u-done").evaluate_all(
        "els => els.map(li => [li.querySelector('.name').textContent, li.querySelector('a').getAttribute('href')])")
    return {name: href.rsplit("/", 1)[1] for name, href in pairs}


# the player's position when a seek starts (exactly what was asked), and once it is done (playback may have
# moved on by then, by as much as the machine was slow to deliver the event)
WATCH_SEEK = """() => { const a = document.querySelector('#player');
    window.__seek = new Promise((r) => a.addEventListener('seeking', () => {
        const asked = a.currentTime;
        a.addEventListener('seeked', () => r([asked, a.currentTime]), {once: true});
    }, {once: true})); }"""


def _assert_seeked(pg, t: float) -> None:  # noqa: ANN001
    asked, landed = pg.evaluate("window.__seek")
    assert asked == pytest.approx(t, abs=0.005), (asked, t)
    assert t - 0.005 <= landed < t + 2.0, (landed, t)


def _file(path: Path) -> dict:
    return {"name": path.name, "mimeType": "audio/wav" if path.suffix == ".wav" else "audio/flac", "buffer": path.read_bytes()}


def _row_state(pg, job_id: str):  # noqa: ANN001, ANN202
    return pg.locator(f'#jobs-table .row[data-id="{job_id}"] .badge')


# ---- 1. sign in ------------------------------------------------------------------------------------------------

def test_sign_in_refuses_a_wrong_key_clearly_and_keeps_the_right_one_in_session_storage(session, stack):
    from playwright.sync_api import expect

    s = session()
    pg = s.page
    pg.goto(stack.api_url + "/ui/")
    expect(pg.locator("#key")).to_be_focused()
    pg.fill("#key", "not-the-key")
    pg.keyboard.press("Enter")
    expect(pg.locator("#key-error")).to_have_text(re.compile(r"not accepted \(invalid API key\)"))
    expect(pg.locator("#key")).to_have_attribute("aria-invalid", "true")
    assert pg.evaluate("sessionStorage.getItem('asrq.apiKey')") is None
    pg.fill("#key", stack.api_key)
    pg.keyboard.press("Enter")
    expect(pg.locator("#who")).to_have_text("Team: acme")
    assert pg.evaluate("sessionStorage.getItem('asrq.apiKey')") == stack.api_key
    assert pg.evaluate("localStorage.length") == 0
    assert s.ctx.cookies() == []
    assert stack.api_key not in pg.url
    # signing out forgets it
    pg.click("#signout")
    expect(pg.locator("#key")).to_be_visible()
    assert pg.evaluate("sessionStorage.getItem('asrq.apiKey')") is None


# ---- 2-4. upload three, watch, open, seek, search, download, delete -------------------------------------------------

def test_upload_three_watch_them_finish_then_read_seek_search_and_download(session, stack, tmp_path):
    from playwright.sync_api import expect

    s = session()
    pg = s.page
    s.sign_in()
    pg.evaluate("window.__same_page = true")  # gone if anything reloads the page
    bad = {"name": "broken-recording.wav", "mimeType": "audio/wav", "buffer": b"RIFF....WAVE but not really" * 50}
    pg.set_input_files("#file-input", [_file(AUDIO / "en_jfk_ask_not_11s.flac"), _file(AUDIO / "en_sr_one_two_three.wav"), bad])
    ids = _uploaded(pg, 3)
    jfk, one, broken = ids["en_jfk_ask_not_11s.flac"], ids["en_sr_one_two_three.wav"], ids["broken-recording.wav"]

    # the table follows them to the end, live
    expect(_row_state(pg, jfk)).to_have_text("COMPLETED", timeout=LONG)
    expect(_row_state(pg, one)).to_have_text("COMPLETED", timeout=LONG)
    expect(_row_state(pg, broken)).to_have_text("FAILED", timeout=LONG)
    expect(pg.locator(f'#jobs-table .row[data-id="{broken}"] .sub.err')).to_contain_text("not a readable audio")
    expect(pg.locator(f'#jobs-table .row[data-id="{jfk}"] .c-dur')).to_have_text("11.0 s")
    assert pg.evaluate("window.__same_page") is True

    # a job: the transcript beside its audio
    pg.click(f'#jobs-table .row[data-id="{jfk}"] a.fname')
    expect(pg.locator("h1.filename")).to_have_text("en_jfk_ask_not_11s.flac")
    expect(pg.locator("#transcript .w").first).to_be_visible()
    # the player streams through the service worker (bearer header, Range requests; no key in its URL)
    duration = pg.evaluate("""() => new Promise((resolve) => {
        const a = document.querySelector('#player');
        if (a.readyState >= 1) return resolve(a.duration);
        a.addEventListener('loadedmetadata', () => resolve(a.duration), {once: true});
        a.addEventListener('error', () => resolve('error ' + (a.error && a.error.message)), {once: true});
    })""")
    assert duration == pytest.approx(11.0, abs=0.1), duration
    assert pg.evaluate("document.querySelector('#player').getAttribute('src')") == f"/ui/audio/{jfk}"
    assert pg.evaluate("!!navigator.serviceWorker.controller")
    # the element asks its own path, in ranges, with no key; the worker passes the same range on, with the key
    element = [(st, hd) for u, st, hd in s.audio if u.endswith(f"/ui/audio/{jfk}")]
    forwarded = [(st, hd) for u, st, hd in s.audio if u.endswith(f"/v1/jobs/{jfk}/audio") and hd.get("range") != "bytes=0-0"]
    assert element and all(st == 206 and "range" in hd and "authorization" not in hd for st, hd in element), element
    assert forwarded and all(st == 206 and hd["authorization"] == f"Bearer {stack.api_key}" for st, hd in forwarded)
    assert {hd["range"] for _, hd in element} == {hd["range"] for _, hd in forwarded}

    # click a word: the player seeks to its start, and the word is marked as the one being spoken
    with _api(stack) as c:
        doc = c.get(f"/v1/jobs/{jfk}/transcript", params={"format": "json"}).json()
        srt = c.get(f"/v1/jobs/{jfk}/transcript", params={"format": "srt"}).content
    words = [w for seg in doc["segments"] for w in seg["words"]]
    k = next(i for i, w in enumerate(words) if w["word"].strip().strip(",.") == "Americans")
    pg.evaluate(WATCH_SEEK)
    pg.click(f'#transcript .w[data-i="{k}"]')
    _assert_seeked(pg, words[k]["start"])
    expect(pg.locator("#transcript .w.now")).to_have_count(1)
    # it plays on from there, and the mark follows the audio
    pg.evaluate("""() => new Promise((r) => { const a = document.querySelector('#player');
        const t0 = a.currentTime; const tick = () => (a.currentTime > t0 + 0.3 ? r() : requestAnimationFrame(tick)); tick(); })""")
    pg.evaluate("document.querySelector('#player').pause()")
    shot = tmp_path / "screenshot-job.png"
    pg.screenshot(path=str(shot))
    if SCREENSHOT:
        (ROOT / "app" / "ui" / "screenshot-job.png").write_bytes(shot.read_bytes())

    # search
    pg.fill("#search", "americans")
    expect(pg.locator("#search-count")).to_have_text("1 of 1")
    expect(pg.locator("#transcript .seg.has-hit")).to_have_count(1)
    expect(pg.locator("#transcript .seg.has-hit")).to_contain_text("Americans")
    assert pg.evaluate("CSS.highlights.has('asrq-hit')")
    pg.fill("#search", "not said at all")
    expect(pg.locator("#search-count")).to_have_text("No match")

    # the SRT downloaded is the API's, byte for byte
    with pg.expect_download() as dl:
        pg.click('button[data-format="srt"]')
    assert dl.value.suggested_filename == "en_jfk_ask_not_11s.srt"
    assert Path(dl.value.path()).read_bytes() == srt
    with pg.expect_download() as dl:
        pg.click('button[data-format="json"]')
    assert json.loads(Path(dl.value.path()).read_bytes()) == doc

    # a failed job shows its error
    pg.go_back()
    pg.click(f'#jobs-table .row[data-id="{broken}"] a.fname')
    expect(pg.locator(".error-box")).to_be_visible()
    expect(pg.locator(".error-box .errtext")).to_contain_text("not a readable audio")

    # delete with confirmation: "Keep it" keeps it, "Delete" deletes
    pg.click("nav.crumbs a")
    row = pg.locator(f'#jobs-table .row[data-id="{one}"]')
    row.locator('button[data-act="delete"]').click()
    expect(pg.locator("dialog.confirm")).to_be_visible()
    expect(pg.locator("dialog.confirm")).to_contain_text("en_sr_one_two_three.wav")
    pg.click("dialog.confirm button:text('Keep it')")
    expect(pg.locator("dialog.confirm")).to_have_count(0)
    with _api(stack) as c:
        assert c.get(f"/v1/jobs/{one}/transcript", params={"format": "txt"}).status_code == 200
    row.locator('button[data-act="delete"]').click()
    pg.click("dialog.confirm button.danger")
    expect(row.locator(".c-file .sub")).to_have_text("deleted")
    with _api(stack) as c:
        assert c.get(f"/v1/jobs/{one}/transcript", params={"format": "txt"}).status_code == 410
        assert c.get(f"/v1/jobs/{one}/audio").status_code == 410


# ---- options, a 422 next to its field, retry; Chinese ---------------------------------------------------------------

def test_a_refused_option_is_shown_at_its_field_then_a_chinese_job_renders_and_is_searchable(session, stack):
    from playwright.sync_api import expect

    s = session()
    pg = s.page
    s.sign_in()
    pg.click("details.options summary")
    expect(pg.locator("#opt-model option[value='bundled:base']")).to_have_count(1)  # from GET /v1/engines
    pg.fill("#opt-language", "not a language")
    pg.set_input_files("#file-input", [str(AUDIO / "zh_aishell1_BAC009S0764W0121.wav")])
    expect(pg.locator("ul.uploads li.u-failed")).to_have_count(1)
    expect(pg.locator("#err-language")).not_to_be_empty()
    expect(pg.locator("#opt-language")).to_have_attribute("aria-invalid", "true")

    # fixed, and retried: the Mandarin model bundled with asrq, hotwords typed and from a file, a webhook
    pg.fill("#opt-language", "zh")
    expect(pg.locator("#err-language")).to_be_empty()  # edited: the message about the old value goes
    pg.select_option("#opt-model", "bundled:base")
    pg.fill("#opt-hotwords", "交易\n")
    pg.set_input_files("#opt-hotwords_file", [{"name": "words.txt", "mimeType": "text/plain", "buffer": "停滞\n".encode()}])
    hook = Hook()
    try:
        pg.fill("#opt-webhook_url", hook.url)
        pg.click("ul.uploads li.u-failed button:text('Retry')")
        expect(pg.locator("#err-language")).to_be_empty()
        jid = _uploaded(pg, 1)["zh_aishell1_BAC009S0764W0121.wav"]
        expect(_row_state(pg, jid)).to_have_text("COMPLETED", timeout=LONG)
        with _api(stack) as c:
            job = c.get(f"/v1/jobs/{jid}").json()
            text = c.get(f"/v1/jobs/{jid}/transcript", params={"format": "json"}).json()["text"]
        assert job["options"]["language"] == "zh" and job["options"]["model"] == "bundled:base"
        assert job["options"]["hotwords"] == ["交易", "停滞"] and job["webhook_url"] == hook.url
        pg.click(f'#jobs-table .row[data-id="{jid}"] a.fname')
        # the job's webhook delivery, followed on the page until the receiver took it
        expect(pg.locator("table.hooks .badge")).to_have_text("delivered", timeout=LONG)
        expect(pg.locator("table.hooks")).to_contain_text("HTTP 204")
        assert hook.got == ["/hook"]
    finally:
        hook.close()
    hanzi = re.sub(r"[^\u4e00-\u9fff]", "", text)
    assert len(hanzi) >= 6, text

    expect(pg.locator("#transcript")).to_have_attribute("lang", "zh")
    expect(pg.locator("#transcript")).to_contain_text(hanzi[:2])
    # four characters from the middle: found whether or not the model put spaces between them
    pg.fill("#search", hanzi[2:6])
    expect(pg.locator("#search-count")).to_have_text(re.compile(r"^1 of \d+$"))
    expect(pg.locator("#transcript .seg.has-hit").first).to_be_visible()


# ---- 6. user text is text: a filename and a link holding HTML -------------------------------------------------------

def test_html_in_filenames_and_links_shows_as_text_and_runs_nothing(session, stack):
    from playwright.sync_api import expect

    s = session()
    pg = s.page
    s.sign_in()
    # an upload whose name holds HTML, dropped on the page: listed as those very characters
    clip = base64.b64encode((AUDIO / "en_sr_one_two_three.wav").read_bytes()).decode()
    dropped = pg.evaluate_handle("""([name, b64]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type: 'audio/wav'}));
        return dt; }""", [f"{XSS}.wav", clip])
    pg.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    _uploaded(pg, 1)
    expect(pg.locator("ul.uploads li .name")).to_have_text(f"{XSS}.wav")

    # links: a bad one is refused at the links field with its line; then the batch
    pg.click("#tab-links")
    pg.fill("#opt-source_uri", f"s3://asrq-test/inbox/{XSS}.wav\nftp://example.com/x.wav")
    pg.click("form.links button[type=submit]")
    expect(pg.locator("#err-source_uri")).to_contain_text("Line 2:")
    expect(pg.locator("#err-source_uri")).to_contain_text("ftp")
    pg.fill("#opt-source_uri", f"s3://asrq-test/inbox/{XSS}.wav")
    pg.click("form.links button[type=submit]")
    pg.click("button:text('Show this batch')")
    expect(pg.locator("#f-batch")).not_to_have_value("")
    with _api(stack) as c:
        batch = c.get("/v1/jobs", params={"batch": pg.input_value("#f-batch")}).json()["jobs"]
    assert len(batch) == 1
    expect(pg.locator("#jobs-table")).to_have_attribute("aria-rowcount", "2")  # the batch's one job, and no other
    row = pg.locator(f'#jobs-table .row[data-id="{batch[0]["id"]}"]')
    expect(row.locator(".badge")).to_have_text("FAILED", timeout=LONG)
    row.locator("a.fname").click()
    expect(pg.locator(".jobhead dl.meta")).to_contain_text(f"s3://asrq-test/inbox/{XSS}.wav")
    expect(pg.locator(".error-box")).to_be_visible()

    assert pg.locator("main img").count() == 0
    assert pg.evaluate("typeof window.__xss") == "undefined"


# ---- 5. cancel a queued job; one status call per poll -------------------------------------------------------------

def test_cancel_queued_jobs_and_poll_all_of_them_with_one_call(session, stack):
    """With the CPU worker stopped, nothing takes a job from the prepare queue: it stays QUEUED for sure."""
    from playwright.sync_api import expect

    stack.procs["cpu-worker"].stop()
    try:
        s = session()
        pg = s.page
        s.sign_in()
        clip = (AUDIO / "en_sr_one_two_three.wav").read_bytes()
        pg.set_input_files("#file-input", [{"name": f"queued-{n}.wav", "mimeType": "audio/wav", "buffer": clip}
                                           for n in range(3)])
        ids = _uploaded(pg, 3)
        for jid in ids.values():
            expect(_row_state(pg, jid)).to_have_text("QUEUED")
        # every unfinished row, polled in one request
        with pg.expect_request(lambda r: r.url.endswith("/v1/jobs/status") and r.method == "POST"
                               and set(ids.values()) <= set(r.post_data_json["ids"])) as req:
            pass
        assert req.value.headers["authorization"] == f"Bearer {stack.api_key}"

        first = ids["queued-0.wav"]
        pg.locator(f'#jobs-table .row[data-id="{first}"] button[data-act="cancel"]').click()
        expect(_row_state(pg, first)).to_have_text("CANCELLED")
        # and from its own page
        second = ids["queued-1.wav"]
        pg.click(f'#jobs-table .row[data-id="{second}"] a.fname')
        pg.click("#cancel-job")
        expect(pg.locator(".titleline .badge")).to_have_text("CANCELLED")
        pg.go_back()
        third = ids["queued-2.wav"]
        pg.locator(f'#jobs-table .row[data-id="{third}"] button[data-act="cancel"]').click()
        expect(_row_state(pg, third)).to_have_text("CANCELLED")
        with _api(stack) as c:
            out = c.post("/v1/jobs/status", json={"ids": list(ids.values())}).json()
        assert out["counts"] == {"CANCELLED": 3}
    finally:
        stack.start_cpu_worker()


# ---- thousands of rows -------------------------------------------------------------------------------------------

def test_thousands_of_rows_page_in_and_only_the_visible_ones_are_in_the_dom(session, stack):
    from playwright.sync_api import expect
    from sqlalchemy import insert

    from app.db.models import Job, JobState
    from app.db.session import session_scope

    n = 3000
    now = datetime.now(timezone.utc)
    rows = [{"id": uuid.uuid4(), "tenant": "globex", "state": JobState.COMPLETED, "source_uri": f"upload:call-{i:05d}.wav",
             "filename": f"call-{i:05d}.wav", "options": {"engine": "whisper"}, "params_hash": "0" * 64,
             "chunks_done": 1, "chunks_total": 1, "duration_s": 60.0 + i, "prepare_attempts": 0,
             "created_at": now - timedelta(seconds=i), "updated_at": now, "started_at": now - timedelta(seconds=i),
             "finished_at": now} for i in range(n)]
    with session_scope() as db:
        db.execute(insert(Job), rows)
        db.commit()

    s = session()
    pg = s.page
    s.sign_in(f"other-{stack.api_key}")  # tenant globex
    table = pg.locator("#jobs-table")
    page = 500  # jobs.js PAGE
    for loaded in range(page, n, page):  # one page at a time: "Load more" until there is no more
        expect(table).to_have_attribute("aria-rowcount", str(loaded + 1))
        pg.click("#load-more")
    expect(table).to_have_attribute("aria-rowcount", str(n + 1))
    expect(pg.locator("#load-more")).to_be_hidden()
    assert pg.locator("#jobs-table .viewport .row").count() < 60
    pg.evaluate("(() => { const v = document.querySelector('#jobs-table .viewport'); v.scrollTop = v.scrollHeight; })()")
    last = pg.locator("#jobs-table .viewport .row a.fname", has_text=f"call-{n - 1:05d}.wav")
    expect(last).to_be_visible()
    expect(last.locator("xpath=ancestor::div[@role='row']")).to_have_attribute("aria-rowindex", str(n + 1))
    assert pg.locator("#jobs-table .viewport .row").count() < 60
    # a filter is the server's: the file name narrows it to one row
    pg.fill("#f-filename", "call-01234")
    pg.keyboard.press("Enter")
    expect(table).to_have_attribute("aria-rowcount", "2")


# ---- people: 360 px, the keyboard, usage ---------------------------------------------------------------------------

def test_narrow_screen_keyboard_and_usage_chart(session, stack):
    from playwright.sync_api import expect

    s = session(viewport=(360, 740))
    pg = s.page
    pg.goto(stack.api_url + "/ui/")
    pg.keyboard.type(stack.api_key)  # the key field has the focus
    pg.keyboard.press("Enter")
    expect(pg.locator("#dropzone")).to_be_visible()
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert pg.evaluate(fits)
    # after signing in, the keyboard starts at the new content; the first stop in it is the first tab
    assert pg.evaluate("document.activeElement.id") == "main"
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.id") == "tab-upload"
    pg.keyboard.press("ArrowRight")  # tabs move with the arrow keys
    assert pg.evaluate("document.activeElement.id") == "tab-links"
    expect(pg.locator("#opt-source_uri")).to_be_visible()
    # on a fresh load, the first Tab reaches the skip link, which leads into the content
    pg.reload()
    expect(pg.locator("#dropzone")).to_be_visible()
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.className") == "skip"
    pg.keyboard.press("Enter")
    assert pg.evaluate("document.activeElement.id") == "main"
    with stack.client() as c:  # a finished job of its own, sent by the API client
        jid = c.submit_file(AUDIO / "en_jfk_ask_not_11s.flac")["id"]
        assert c.wait([jid], timeout_s=LONG / 1000)[jid]["state"] == "COMPLETED"
    # SenseVoice's tags, where a segment has them (this engine gives none: added to the real transcript here)
    def tagged(route) -> None:  # noqa: ANN001
        doc = route.fetch().json()
        doc["segments"][0].update(emotion="happy", event="laughter", language="en")
        doc["segments"][-1].update(language="zh")
        route.fulfill(json=doc)

    pg.route(f"**/v1/jobs/{jid}/transcript?format=json", tagged)
    pg.goto(f"{stack.api_url}/ui/#/job/{jid}")
    expect(pg.locator("#transcript .w").first).to_be_visible()
    first, last = pg.locator("#transcript .seg").first, pg.locator("#transcript .seg").last
    expect(first.locator(".tag")).to_have_text(["Emotion: happy", "Event: laughter"])  # en is the job's language
    expect(last.locator(".tag")).to_have_text(["Language: zh"])
    expect(last.locator(".text")).to_have_attribute("lang", "zh")
    assert pg.evaluate(fits)
    # segment times are buttons: Enter on one seeks the player
    pg.evaluate(WATCH_SEEK)
    second = pg.locator("#transcript .seg .ts").nth(1)
    second.focus()
    pg.keyboard.press("Enter")
    _assert_seeked(pg, float(second.get_attribute("data-t")))
    pg.evaluate("document.querySelector('#player').pause()")

    pg.click("nav.main a[href='#/usage']")
    expect(pg.locator("svg.chart rect.bar").first).to_be_attached()
    expect(pg.locator("table.usage tbody tr")).to_have_count(30)
    assert int(pg.locator("dl.totals dd").first.text_content()) >= 1
    assert pg.evaluate(fits)
