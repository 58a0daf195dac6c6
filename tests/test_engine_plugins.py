"""Engines are plug-ins (entry-point group asrq.engines): an installed package adds one; the built-ins
register the same way; an engine that is not installed cannot be selected anywhere.

"Installed" here is a distribution on the path, as pip leaves one: a ``*.dist-info`` folder with
``entry_points.txt`` in a folder on sys.path (in-process) or on PYTHONPATH (the stack's processes). The
plug-in object is the benchmark's instant engine (bench/plugins/asrq_instant), registered under a name
of its own (``plugtest``) so the tests do not depend on whether `make bench` installed it.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tests.services import AUDIO, ROOT, base_env, postgres_database, redis_db, running_stack

INSTANT_SRC = ROOT / "bench" / "plugins" / "asrq_instant"
NAME = "plugtest"


def fake_dist(where: Path, dist: str, entry_points: dict[str, str]) -> Path:
    """A distribution named ``dist`` declaring ``entry_points`` (engine name -> "module:object")."""
    info = where / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[asrq.engines]\n{lines}")
    return where


@pytest.fixture
def on_path(monkeypatch):
    """Put folders on sys.path and read the entry points again; afterwards back to what is installed."""
    from workers.engines import registry

    def add(*folders: Path) -> None:
        for f in folders:
            monkeypatch.syspath_prepend(str(f))
        registry.reload_engines()

    yield add
    monkeypatch.undo()
    registry.reload_engines()


def test_builtins_are_entry_points_of_asrq():
    import importlib.metadata

    from app.catalog import builtin, plugins

    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}
    assert eps["whisper"].value == "app.catalog.builtin:WHISPER" and eps["whisper"].dist.name == "asrq"
    assert eps["funasr"].value == "app.catalog.builtin:FUNASR" and eps["funasr"].dist.name == "asrq"
    assert plugins.engines()["whisper"] is builtin.WHISPER and plugins.engines()["funasr"] is builtin.FUNASR
    assert plugins.MAX_CHUNK_S["whisper"] == 20.0 and plugins.MAX_CHUNK_S.get("funasr") == 30.0
    assert plugins.MAX_CHUNK_S.get("kaldi", 7.0) == 7.0


def test_not_selectable_unless_installed(tmp_path):
    from app.catalog.models import missing_model_reason
    from app.catalog.plugins import check_engine_setting, engine_names
    from app.errors import ModelNotInstalled, ModelUnavailable
    from app.jobs import resolved_options
    from app.schemas import JobOptions
    from app.settings import Settings
    from workers.engines.registry import get_engine

    assert NAME not in engine_names()
    with pytest.raises(ValueError, match="not installed"):
        check_engine_setting(Settings(engine=NAME, home=tmp_path))
    with pytest.raises(ValidationError, match="not installed"):
        JobOptions(engine=NAME)
    with pytest.raises(ModelNotInstalled, match="engines: "):
        resolved_options(JobOptions.model_construct(engine=NAME, model=None, language=None, hotwords=[],
                                                    formats=["json"]), Settings(home=tmp_path))
    assert "not installed" in missing_model_reason(NAME, "bundled:fixed")
    with pytest.raises(ModelUnavailable):
        get_engine(NAME, "bundled:fixed")


def test_an_installed_package_adds_an_engine(tmp_path, on_path):
    from app.catalog.models import installed_models
    from app.catalog.plugins import MAX_CHUNK_S, check_engine_setting, engine_names
    from app.cli import cli
    from app.jobs import resolved_options
    from app.schemas import JobOptions
    from app.settings import Settings
    from workers.engines.base import DecodeOptions
    from workers.engines.registry import get_engine

    on_path(fake_dist(tmp_path / "site", "asrq-plugtest", {NAME: "asrq_instant:PLUGIN"}), INSTANT_SRC)
    assert {"whisper", "funasr", NAME} <= set(engine_names())
    assert installed_models(NAME) == ["bundled:fixed"] and MAX_CHUNK_S[NAME] == 30.0
    s = Settings(home=tmp_path / "home")
    check_engine_setting(Settings(engine=NAME, model="bundled:fixed", home=tmp_path / "home"))  # installed now
    # a job naming the engine without a model gets the plug-in's default model
    opts = resolved_options(JobOptions(engine=NAME), s)
    assert (opts["engine"], opts["model"]) == (NAME, "bundled:fixed")
    engine = get_engine(NAME, "bundled:fixed")
    out = engine.transcribe_batch([np.zeros(16000 * 5, np.float32), np.zeros(800, np.float32)], DecodeOptions())
    assert [c.text for c in out] == ["instant", "instant"]
    assert [(w.start_s, w.end_s) for c in out for w in c.words] == [(0.0, 0.3), (0.0, 0.05)]
    # the embedded command's --engine refuses an engine nobody installed, naming the installed ones
    from click.testing import CliRunner

    r = CliRunner().invoke(cli, ["transcribe", "--engine", "nosuch", str(AUDIO / "en_sr_one_two_three.wav")])
    assert r.exit_code == 2 and "engines: " in r.output and NAME in r.output


def test_broken_and_shadowing_plugins_are_refused(tmp_path, on_path):
    from app.catalog import builtin
    from app.catalog.plugins import engines, unknown_engine_reason

    site = tmp_path / "site"
    fake_dist(site, "asrq-broken", {"broken": "no_such_module_xyz:PLUGIN", "notaplugin": "json:dumps"})
    fake_dist(site, "asrq-shadow", {"whisper": "asrq_instant:PLUGIN"})
    on_path(site, INSTANT_SRC)
    assert "unusable" in unknown_engine_reason("broken") and "ModuleNotFoundError" in unknown_engine_reason("broken")
    assert "not an EnginePlugin" in unknown_engine_reason("notaplugin")
    assert engines()["whisper"] is builtin.WHISPER  # another package cannot take a built-in's name
    assert {"whisper", "funasr"} <= set(engines())


# --- through the real stack: Postgres, Redis, S3 server, API, CPU worker, transcribe worker ------------

@pytest.fixture(scope="module")
def plugin_stack(tmp_path_factory, s3):
    """The stack with the plug-in installed for its processes (PYTHONPATH), not for this test process."""
    from app.db.migrate import upgrade
    from tests.conftest import REDIS_TEST_DB

    tmp = tmp_path_factory.mktemp("plugin-stack")
    site = fake_dist(tmp / "site", "asrq-plugtest", {NAME: "asrq_instant:PLUGIN"})
    endpoint, _ = s3
    key = secrets.token_urlsafe(16)
    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"s3://asrq-test/{tmp.name}", endpoint, tmp, key)
        env["PYTHONPATH"] = ":".join([str(ROOT), str(site), str(INSTANT_SRC)])
        with running_stack(env, tmp, key) as st:
            yield st, db_url


@pytest.mark.slow
def test_a_job_naming_a_plugin_engine_runs_through_the_stack(plugin_stack):
    from sqlalchemy import create_engine, text

    from app.client import ApiError

    st, db_url = plugin_stack
    clips = ["en_jfk_ask_not_11s.flac", "en_librivox_sonnet001_53s.wav"]
    with st.client() as c:
        ids = [c.submit_file(AUDIO / n, {"engine": NAME})["id"] for n in clips]
        done = c.wait(ids, timeout_s=300)
        for jid in ids:
            job = done[jid]
            assert job["state"] == "COMPLETED", (job, st.logs())
            assert job["options"]["engine"] == NAME and job["options"]["model"] == "bundled:fixed"
            doc = json.loads(c.transcript(jid, "json"))
            words = [w for s in doc["segments"] for w in s["words"]]
            n = job["progress"]["chunks_total"]
            assert doc["text"].split() == ["instant"] * n and len(words) == n, doc
            assert all(0 <= w["start"] <= w["end"] <= doc["duration_s"] for w in words)
        assert done[ids[1]]["progress"]["chunks_total"] >= 2  # 53 s: more than one chunk, one word each
        # a model the plug-in does not have, and an engine nobody installed: refused at the door
        for opts, says in [({"engine": NAME, "model": "bundled:nope"}, "installed: bundled:fixed"),
                           ({"engine": "nosuch"}, NAME)]:
            with pytest.raises(ApiError) as e:
                c.submit_uri("s3://asrq-test/inbox/x.wav", opts)
            assert e.value.status == 422 and says in str(e.value.detail), e.value.detail
    eng = create_engine(db_url)
    try:
        with eng.connect() as conn:
            engines = {r[0] for r in conn.execute(text("SELECT DISTINCT engine FROM batches"))}
    finally:
        eng.dispose()
    assert engines == {f"{NAME}:bundled:fixed"}
