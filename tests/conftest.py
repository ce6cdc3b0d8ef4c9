"""Shared fixtures: real Redis, PostgreSQL and one local Spark session per test session."""

from __future__ import annotations

import inspect
import os
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings

# Property tests explore the same examples on every run and machine: a CI failure reproduces
# locally, and a run cannot fail by the luck of the draw. A test's own @settings adds to this
# profile. Explore new examples locally with `--hypothesis-profile=default`.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.load_profile("deterministic")

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


# What starts or connects to a server (Redis, PostgreSQL, a Kafka-protocol broker, a Spark
# session, an HTTP server or receiver, a subprocess of a CLI). A test is marked `needs_server`
# when it uses one of these fixtures (directly or through other fixtures), has a server marker or
# a PostgreSQL parameter, or when its code, its fixtures' code or the tests' helpers they call
# name one of SERVER_NAMES. `make test-fast` runs the others (`-m "not needs_server"`).
SERVER_FIXTURES = frozenset({
    "redis_client", "services", "spark", "kafka_bootstrap", "served", "receiver", "postgres_url",
    "redis_cluster",
})
SERVER_MARKERS = frozenset({"spark", "redis", "postgres", "kafka"})
SERVER_PARAMETERS = frozenset({"postgres", "postgresql"})
SERVER_NAMES = frozenset({
    "REDIS_URL", "SERVED_REDIS_URL", "POSTGRES_URL", "redis_server", "PostgresServer",
    "featurestore_server", "local_broker", "spark_session", "Receiver", "StreamRun", "subprocess",
})


def _code_names(code: types.CodeType) -> Iterator[str]:
    """The global and attribute names `code` and the functions nested in it use."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_names(constant)


def _names_a_server(function: object, seen: set[types.CodeType]) -> bool:
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    namespace = getattr(function, "__globals__", {})
    for name in _code_names(code):
        if name in SERVER_NAMES:
            return True
        helper = namespace.get(name)
        if (
            inspect.isfunction(helper)
            and helper.__module__.startswith("tests.")
            and _names_a_server(helper, seen)
        ):
            return True
    return False


def _needs_server(item: pytest.Item) -> bool:
    if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    if any(mark.name in SERVER_MARKERS for mark in item.iter_markers()):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(
        isinstance(value, str) and value in SERVER_PARAMETERS for value in callspec.params.values()
    ):
        return True
    seen: set[types.CodeType] = set()
    fixtures = getattr(item, "_fixtureinfo", None)
    definitions = fixtures.name2fixturedefs.values() if fixtures is not None else ()
    # This file's fixtures are named in SERVER_FIXTURES, or need none (the autouse PostgreSQL
    # upgrade connects only when a selected test needs a server).
    functions = [getattr(item, "function", None)] + [
        d.func for defs in definitions for d in defs
        if d.func.__module__.startswith("tests.") and d.func.__module__ != __name__
    ]
    return any(_names_a_server(function, seen) for function in functions)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_server(item):
            item.add_marker(pytest.mark.needs_server)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read a developer's featurestore.yaml or FEATURESTORE_* variables."""
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEATURESTORE_CONFIG", str(tmp_path / "absent-featurestore.yaml"))


@pytest.fixture(scope="session", autouse=True)
def _postgres_schema_at_head(request: pytest.FixtureRequest) -> None:
    """The shared test database keeps our tables between runs (as a deployment does): bring it
    to this code's revision once, as `featurestore db upgrade` would, so a run after a schema
    change does not find it behind. A PostgreSQL that is down is the postgres tests' failure;
    a run of tests that need no server does not connect."""
    if not any(item.get_closest_marker("needs_server") for item in request.session.items):
        return
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A 3-master Redis Cluster on free ports (tests.servers.RedisCluster), for the session."""
    import shutil

    from tests.servers import RedisCluster

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed: no Redis Cluster to test on")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


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


@pytest.fixture(scope="session")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The example `feature_repo/` applied to a SQLite registry of its own (no server)."""
    return applied_example(tmp_path_factory.mktemp("example-registry"))


def applied_example(root: Path) -> object:
    """`apply` of the example `feature_repo/` with nothing but defaults and the data dir
    `root/data` (its registry.db in there); returns the FeatureStore."""
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        for name in _SETTINGS_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("FEATURESTORE_CONFIG", str(root / "absent.yaml"))
        patch.setenv("FEATURESTORE_DATA_DIR", str(root / "data"))
        return apply(get_settings())


def unique_project() -> str:
    return f"t{uuid.uuid4().hex[:12]}"
