"""Settings: embedded defaults under ASRQ_HOME, URL validation, ASRQ_API_KEYS parsing.

Every test builds ``Settings()`` directly from a clean ASRQ_* environment (never the cached get_settings).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import BUNDLED_WHISPER, Settings


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean ASRQ_* environment with ASRQ_HOME in tmp_path; returns a setter."""
    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ASRQ_HOME", str(tmp_path / "home"))

    def set_(**kv: str) -> None:
        for k, v in kv.items():
            monkeypatch.setenv(f"ASRQ_{k.upper()}", v)

    return set_


def test_embedded_defaults_derive_from_home(env, tmp_path):
    s = Settings()
    home = tmp_path / "home"
    assert s.home == home
    assert s.database_url == f"sqlite:///{home / 'asrq.db'}"
    assert s.broker_url == f"filesystem://{home / 'broker'}"
    assert s.storage_url == f"file://{home / 'objects'}"
    assert s.embedded is True
    assert s.model == BUNDLED_WHISPER
    assert s.engine == "whisper"
    assert s.api_key_entries() == []


def test_home_is_expanded(env, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    env(home="~/asrq-data")
    s = Settings()
    assert s.home == tmp_path / "user" / "asrq-data"
    assert "~" not in s.database_url and "~" not in s.broker_url and "~" not in s.storage_url
    assert s.database_url == f"sqlite:///{tmp_path / 'user' / 'asrq-data' / 'asrq.db'}"


def test_default_home_is_dot_asrq_in_user_home(monkeypatch, tmp_path):
    for k in [k for k in os.environ if k.startswith("ASRQ_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings()
    assert s.home == tmp_path / ".asrq"
    assert s.storage_url == f"file://{tmp_path / '.asrq' / 'objects'}"


def test_explicit_urls_are_kept_and_not_embedded(env):
    env(
        database_url="postgresql+psycopg2://u:p@127.0.0.1:5432/asrq",
        broker_url="redis://127.0.0.1:6379/0",
        storage_url="s3://bucket/prefix",
        s3_endpoint_url="http://127.0.0.1:9000",
    )
    s = Settings()
    assert s.database_url == "postgresql+psycopg2://u:p@127.0.0.1:5432/asrq"
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.storage_url == "s3://bucket/prefix"
    assert str(s.s3_endpoint_url).startswith("http://127.0.0.1:9000")
    assert s.embedded is False


@pytest.mark.parametrize("url", ["sqlite:///x.db", "sqlite://", "postgresql://h/db", "postgresql+psycopg2://h/db"])
def test_database_url_accepted(env, url):
    env(database_url=url)
    assert Settings().database_url == url


@pytest.mark.parametrize("url", ["mysql://u@h/db", "oracle://h", "redis://h", "h/db", "  sqlite:///x"])
def test_database_url_rejected(env, url):
    env(database_url=url)
    with pytest.raises(ValidationError, match="ASRQ_DATABASE_URL"):
        Settings()


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/0", "amqp://g@h//", "filesystem:///tmp/b",
                                 "sqla+sqlite:///b.db"])
def test_broker_url_accepted(env, url):
    env(broker_url=url)
    assert Settings().broker_url == url


@pytest.mark.parametrize("url", ["ftp://h/", "http://h:6379", "kafka://h", "memory://", "redis:/h"])
def test_broker_url_rejected(env, url):
    env(broker_url=url)
    with pytest.raises(ValidationError, match="ASRQ_BROKER_URL"):
        Settings()


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/", "s3://bucket/a/b", "file:///var/objects"])
def test_storage_url_accepted(env, url):
    env(storage_url=url)
    assert Settings().storage_url == url


@pytest.mark.parametrize("url", ["ftp://bucket/x", "gs://bucket/x", "/var/objects", "http://127.0.0.1/b"])
def test_storage_url_rejected_scheme(env, url):
    env(storage_url=url)
    with pytest.raises(ValidationError, match="ASRQ_STORAGE_URL must be"):
        Settings()


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3:///"])
def test_storage_url_s3_needs_bucket(env, url):
    env(storage_url=url)
    with pytest.raises(ValidationError, match="bucket"):
        Settings()


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1:9000", "127.0.0.1:9000", "http://"])
def test_s3_endpoint_url_rejected(env, url):
    env(s3_endpoint_url=url)
    with pytest.raises(ValidationError):
        Settings()


def test_s3_endpoint_url_accepted(env):
    env(s3_endpoint_url="https://127.0.0.1:9000")
    assert Settings().s3_endpoint_url.host == "127.0.0.1"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("acme:k1,k2", [("acme", "k1"), ("default", "k2")]),
        ("", []),
        (" , ,", []),
        (" acme:k1 , globex:k2 ", [("acme", "k1"), ("globex", "k2")]),
        ("solo", [("default", "solo")]),
        ("acme:a:b", [("acme", "a:b")]),  # only the first colon splits tenant from secret
    ],
)
def test_api_key_entries(env, raw, expected):
    env(api_keys=raw)
    assert Settings().api_key_entries() == expected


@pytest.mark.parametrize(
    "name, value",
    [("max_chunk_s", "2"), ("max_chunk_s", "61"), ("hard_cut_overlap_s", "-1"), ("batch_audio_s", "0"),
     ("batch_max_requests", "0"), ("max_attempts", "0")],
)
def test_numeric_and_literal_bounds(env, name, value):
    env(**{name: value})
    with pytest.raises(ValidationError):
        Settings()


def test_an_engine_that_is_not_installed_stops_a_process_at_start(env):
    """Settings know no plug-ins; every process (API, CLI, worker) checks ASRQ_ENGINE when it starts."""
    from app.catalog.plugins import check_engine_setting

    env(engine="kaldi")
    s = Settings()
    with pytest.raises(ValueError, match="ASRQ_ENGINE: engine 'kaldi' is not installed .*engines: .*whisper"):
        check_engine_setting(s)


def test_env_types_are_parsed(env):
    env(max_upload_bytes="200000", allow_private_sources="true", max_chunk_s="20.5", engine="funasr",
        models_dir="/srv/models")
    s = Settings()
    assert s.max_upload_bytes == 200000
    assert s.allow_private_sources is True
    assert s.max_chunk_s == 20.5
    assert s.engine == "funasr"
    assert s.models_dir == Path("/srv/models")
