"""Shared fixtures: real Redis, PostgreSQL and one local Spark session per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

# One SparkSession per test session, on two local cores.
os.environ.setdefault("FEATURESTORE_SPARK_MASTER", "local[2]")
os.environ.setdefault("FEATURESTORE_SPARK_SHUFFLE_PARTITIONS", "4")

REDIS_URL = os.environ.get("FEATURESTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "FEATURESTORE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_SETTINGS_ENV = (
    "FEATURESTORE_PROFILE",
    "FEATURESTORE_PROJECT",
    "FEATURESTORE_DATA_DIR",
    "FEATURESTORE_REGISTRY_URL",
    "FEATURESTORE_REDIS_URL",
    "FEATURESTORE_DATABASE_URL",
    "FEATURESTORE_API_AUTH",
    "FEATURESTORE_MODEL_PATH",
    "FEATURESTORE_CONFIG",
)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read a developer's featurestore.yaml or FEATURESTORE_* variables."""
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEATURESTORE_CONFIG", str(tmp_path / "absent-featurestore.yaml"))


@pytest.fixture(scope="session", autouse=True)
def _postgres_schema_at_head() -> None:
    """The shared test database keeps our tables between runs (as a deployment does): bring it
    to this code's revision once, as `featurestore db upgrade` would, so a run after a schema
    change does not find it behind. A PostgreSQL that is down is the postgres tests' failure."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    from featurestore import migrations

    engine = sa.create_engine(POSTGRES_URL, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        migrations.upgrade(engine)
    except sa.exc.OperationalError:
        pass
    finally:
        engine.dispose()


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., object]:
    """Point the settings (and so feature_repo/) at a fresh data dir; returns the Settings."""
    from featurestore.settings import get_settings

    def apply_env(**values: str) -> object:
        monkeypatch.setenv("FEATURESTORE_DATA_DIR", str(tmp_path / "data"))
        for key, value in values.items():
            monkeypatch.setenv(f"FEATURESTORE_{key.upper()}", value)
        return get_settings()

    return apply_env


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def services(
    configure: Callable[..., object], redis_client: redis.Redis, tmp_path: Path
) -> object:
    """Settings of the `services` profile on the test Redis db, registry in SQLite."""
    return configure(
        profile="services", redis_url=REDIS_URL, registry_url=f"sqlite:///{tmp_path}/registry.db"
    )


@pytest.fixture(scope="session")
def spark():
    from featurestore.batch.spark import spark_session
    from featurestore.settings import Settings

    session = spark_session(Settings())
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka-protocol broker: KAFKA_BOOTSTRAP_SERVERS when set, else a Tansu on a free port."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    from streaming.broker import local_broker

    with local_broker() as address:
        yield address


def unique_project() -> str:
    return f"t{uuid.uuid4().hex[:12]}"
