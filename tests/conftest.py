from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.services import (  # noqa: E402
    AUDIO,
    base_env,
    moto_s3,
    postgres_database,
    redis_db,
    running_stack,
)

# each pytest-xdist worker (make test runs two, one test file at a time each) flushes a Redis db of its own
REDIS_TEST_DB = int(os.environ.get("ASRQ_TEST_REDIS_DB", "11")) + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if not AUDIO.is_dir():
        raise pytest.UsageError(f"test recordings not found at {AUDIO}")


@pytest.fixture(scope="session")
def migrated_pg():
    """A fresh Postgres database at Alembic head, dropped after the session."""
    from app.db.migrate import upgrade

    with postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    with moto_s3("asrq-test", tmp_path_factory.mktemp("moto")) as (endpoint, proc):
        yield endpoint, proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3):
    """The distributed deployment on real services: Postgres, Redis, S3 (moto), API, CPU worker, transcribe worker."""
    from app.db.migrate import upgrade

    tmp = tmp_path_factory.mktemp("stack")
    endpoint, _ = s3
    key = secrets.token_urlsafe(16)
    with postgres_database() as db_url, redis_db(REDIS_TEST_DB) as broker:
        upgrade(db_url)
        env = base_env(db_url, broker, f"s3://asrq-test/{tmp.name}", endpoint, tmp, key)
        with running_stack(env, tmp, key) as st:
            yield st
