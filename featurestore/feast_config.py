"""Feast configuration rendered from our settings, and the registry/apply entry points."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from featurestore.migrations.lock import schema_lock
from featurestore.settings import Settings, redis_db, redis_nodes

REGISTRY_PASSWORD_REF = "${FEATURESTORE_REGISTRY_PASSWORD}"
REDIS_PASSWORD_REF = "${FEATURESTORE_REDIS_PASSWORD}"


def _registry_path(settings: Settings, password: str | None) -> str:
    if password is None:
        return settings.registry_url
    parts = urlsplit(settings.registry_url)
    user = parts.username or ""
    host = parts.netloc.split("@", 1)[-1]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


def redis_connection_string(settings: Settings, password: str | None) -> str:
    """Feast's form of `settings.redis_url`: `host:port,db=N[,ssl=true][,password=...]`, or for
    a cluster `host1:port1,host2:port2[,ssl=true][,password=...]` (seed nodes, no database)."""
    options = [f"{host}:{port}" for host, port in redis_nodes(settings.redis_url)]
    if settings.redis_type == "redis":
        options.append(f"db={redis_db(settings.redis_url)}")
    if urlsplit(settings.redis_url).scheme == "rediss":
        options.append("ssl=true")
    if password is not None:
        options.append(f"password={password}")
    return ",".join(options)


def repo_config_dict(settings: Settings, *, secrets: bool) -> dict[str, Any]:
    """Feast's feature_store.yaml content. With `secrets=False`, passwords are `${ENV}` references."""

    def secret(value: Any, reference: str) -> str | None:
        if value is None:
            return None
        return value.get_secret_value() if secrets else reference

    online: dict[str, Any]
    if settings.online_store_kind == "redis":
        online = {
            "type": "redis",
            "redis_type": settings.redis_type,
            "connection_string": redis_connection_string(
                settings, secret(settings.redis_password, REDIS_PASSWORD_REF)
            ),
        }
        if settings.redis_key_ttl_seconds:
            online["key_ttl_seconds"] = settings.redis_key_ttl_seconds
    else:
        online = {"type": "sqlite", "path": str(settings.online_sqlite_path)}
    return {
        "project": settings.project,
        "provider": "local",
        "registry": {
            "registry_type": "sql",
            "path": _registry_path(
                settings, secret(settings.registry_password, REGISTRY_PASSWORD_REF)
            ),
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        },
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings) -> RepoConfig:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RepoConfig(repo_path=settings.feature_repo, **repo_config_dict(settings, secrets=True))


def render_feature_store_yaml(settings: Settings) -> Path:
    """Write `feature_repo/feature_store.yaml` for the Feast CLI (`feast plan`, `feast apply`)."""
    path = settings.feature_repo / "feature_store.yaml"
    header = (
        "# Rendered by `featurestore apply` from the featurestore settings. Do not edit:\n"
        "# change FEATURESTORE_* variables or featurestore.yaml and re-render.\n"
    )
    body = yaml.safe_dump(repo_config_dict(settings, secrets=False), sort_keys=False)
    path.write_text(header + body)
    return path


_registries_ready: set[str] = set()


def _registry_settled(url: URL, project: str) -> bool:
    """Whether Feast's registry has its tables and the project's row: opening it then writes
    nothing that two processes could race on."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("projects"):
                return False
            query = sa.text("SELECT 1 FROM projects WHERE project_id = :project")
            return connection.execute(query, {"project": project}).first() is not None
    finally:
        engine.dispose()


def feature_store(settings: Settings) -> FeatureStore:
    store = FeatureStore(config=repo_config(settings))
    if settings.registry_url not in _registries_ready:
        # Feast's SQL registry creates its tables at first use (create_all), and the next two
        # openings write the project's rows: processes starting together on an empty database
        # race on CREATE TABLE and on those rows. Until it is settled, one opens it at a time.
        password = settings.registry_password
        url = make_url(_registry_path(settings, password.get_secret_value() if password else None))
        settled = _registry_settled(url, settings.project)
        with contextlib.nullcontext() if settled else schema_lock(url, "feast-registry"):
            _ = store.registry  # the property opens (creates, if need be) the registry
        _registries_ready.add(settings.registry_url)
    return store


def _forget_repo_modules(repo: Path) -> None:
    # Feast imports repo files as modules; drop cached ones so the definitions are re-read with
    # the current settings (tests and long-lived processes apply more than once).
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and Path(origin).resolve().is_relative_to(repo):
            del sys.modules[name]


def apply(settings: Settings) -> FeatureStore:
    """`feast apply` of `feature_repo/` against the configured registry (creates, updates, deletes)."""
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    render_feature_store_yaml(settings)
    store = feature_store(settings)
    _forget_repo_modules(settings.feature_repo)
    # Feast names repo modules relative to the working directory, as its CLI does after a chdir.
    sys.path.insert(0, str(settings.feature_repo))
    try:
        with contextlib.chdir(settings.feature_repo):
            contents = parse_repo(settings.feature_repo)
    finally:
        sys.path.remove(str(settings.feature_repo))
    apply_total_with_repo_instance(
        store, settings.project, store.registry, contents, skip_source_validation=True
    )
    return store
