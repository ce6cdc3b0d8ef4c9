"""The one typed settings object: environment variables over an optional `featurestore.yaml`.

Every engine reads its configuration from here; Feast's `feature_store.yaml` is rendered from it
(see `featurestore.feast_config`), never edited by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ENV_VAR = "FEATURESTORE_CONFIG"


def _default_model_path(fields: dict[str, Any]) -> Path:
    # `fields` holds the fields declared before model_path, validated; without data_dir (which
    # then failed validation, and is reported by name) its own default stands in.
    return fields.get("data_dir", PROJECT_ROOT / "data") / "models" / "fraud_mlp.pt"


def _config_file() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR, "featurestore.yaml"))


class Settings(BaseSettings):
    """Configuration of every engine. Env vars are `FEATURESTORE_<FIELD>` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="FEATURESTORE_", extra="forbid", validate_default=True
    )

    profile: Literal["embedded", "services"] = "embedded"
    project: str = Field("fraud", pattern=r"^[a-z][a-z0-9_]*$")
    data_dir: Path = PROJECT_ROOT / "data"
    # The part of the store every machine must see alike: the raw sources, the offline tables
    # and the stream workers' partition logs (docs/scale-out.md). Unset = data_dir. Stream
    # workers on several machines keep data_dirs of their own and point this at one shared path.
    offline_root: Path | None = None
    feature_repo: Path = PROJECT_ROOT / "feature_repo"

    # Registry: Feast's SQL registry. Empty = SQLite under data_dir (embedded) or the local
    # PostgreSQL (services).
    registry_url: str = ""
    registry_password: SecretStr | None = None
    # Online store: Redis in `services`, Feast's SQLite online store in `embedded`. With
    # `redis_type: redis_cluster`, `redis_url` names one or more of the cluster's nodes
    # (`redis://host1:port1,host2:port2`, database 0 only); the rest are found from them.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_type: Literal["redis", "redis_cluster"] = "redis"
    redis_password: SecretStr | None = None
    redis_key_ttl_seconds: int | None = Field(None, gt=0)
    redis_timeout_seconds: float = Field(5.0, gt=0)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    transactions_topic: str = "transactions"
    # The stream worker: its consumer group, where rejected events go, how long events wait to
    # be applied together (freshness) and how often its state is checkpointed (files per hour).
    stream_group: str = "featurestore-stream"
    dead_letter_topic: str = "transactions-dead-letter"
    stream_partitions: int = Field(6, gt=0)
    stream_batch_ms: int = Field(100, gt=0)
    stream_batch_events: int = Field(20_000, gt=0)
    # How long the broker may hold a fetch with no new data: kafka-python's 500 ms default adds
    # to every hop (source, then repartition topic) on brokers that answer late (Tansu).
    stream_fetch_max_wait_ms: int = Field(50, ge=0, le=500)
    stream_checkpoint_seconds: float = Field(5.0, gt=0)
    # Accepted events are forwarded whole: they must fit the worker's 1 MiB producer requests.
    stream_max_message_bytes: int = Field(16_384, gt=0, le=1_000_000)
    stream_session_timeout_ms: int = Field(10_000, ge=6_000)

    spark_master: str = Field(
        "local[*]", validation_alias=AliasChoices("FEATURESTORE_SPARK_MASTER", "SPARK_MASTER")
    )
    spark_driver_memory: str = "2g"
    spark_shuffle_partitions: int = Field(8, gt=0)

    materialize_batch_size: int = Field(20_000, gt=0)

    # Our own SQL tables (API keys, dataset jobs, monitors). Empty = SQLite under data_dir
    # (embedded) or the local PostgreSQL (services).
    database_url: str = ""
    database_password: SecretStr | None = None

    # The API server (`featurestore serve`). `api_auth: off` serves without API keys: only for a
    # demo on one's own machine, never where the port is reachable by others.
    api_auth: Literal["keys", "off"] = "keys"
    serve_max_entities: int = Field(1_000, gt=0)
    serve_redis_timeout_seconds: float = Field(1.0, gt=0)
    serve_retry_after_seconds: int = Field(1, gt=0)
    serve_registry_refresh_seconds: float = Field(10.0, gt=0)
    serve_max_dataset_rows: int = Field(1_000_000, gt=0)
    # Limits that keep one request from hurting others: a body over `serve_max_body_bytes` is
    # refused before it is read whole; a lookup names at most `serve_max_features` features; at
    # most `serve_max_dataset_jobs` dataset jobs run at once (all workers on one database).
    serve_max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    serve_max_features: int = Field(500, gt=0)
    serve_max_dataset_jobs: int = Field(2, gt=0)
    # API keys: each worker re-reads the key table every `serve_key_refresh_seconds` (a revoked
    # key stops working within that time); while the database is down, keys read before keep
    # working for `serve_key_stale_seconds` after the last good read.
    serve_key_refresh_seconds: float = Field(5.0, gt=0)
    serve_key_stale_seconds: float = Field(300.0, gt=0)
    # A worker (re)started while the SQL database (registry, keys) is unreachable waits this long
    # for it instead of failing its start-up, which would make uvicorn stop every worker.
    serve_startup_wait_seconds: float = Field(300.0, ge=0)
    # The model `POST /v1/score` serves (written by `featurestore train`). Unset = under data_dir.
    model_path: Path = Field(default_factory=_default_model_path)
    # Where this API is reached from outside (links to drift reports in alerts).
    public_url: str = "http://127.0.0.1:8000"

    # Drift monitoring. The monitors file sits next to feature_repo/. The API and the stream
    # worker send a `capture_rate` share of the rows they serve or write to `capture_topic`
    # (0 = off: capture needs a Kafka broker), holding at most `capture_buffer_bytes` while the
    # broker is slow or away; what does not fit is dropped and counted, never waited for.
    monitors_config: Path = PROJECT_ROOT / "monitors.yaml"
    capture_rate: float = Field(0.0, ge=0.0, le=1.0)
    capture_topic: str = "feature-capture"
    capture_buffer_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=_config_file()),
        )

    @field_validator("data_dir", "feature_repo", "monitors_config", "offline_root")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    @field_validator("redis_url", "registry_url", "database_url")
    @classmethod
    def _no_inline_password(cls, url: str) -> str:
        # Secrets come from the environment only, so they never land in a rendered file or log.
        if urlsplit(url).password is not None:
            raise ValueError(
                "the URL must not contain a password; set FEATURESTORE_REDIS_PASSWORD or "
                "FEATURESTORE_REGISTRY_PASSWORD instead"
            )
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("redis", "rediss"):
            raise ValueError(f"redis_url must start with redis:// or rediss://, got {url!r}")
        redis_nodes(url)  # each node's host:port must parse
        redis_db(url)
        return url

    @model_validator(mode="after")
    def _redis_nodes_fit_the_type(self) -> Settings:
        nodes = redis_nodes(self.redis_url)
        if self.redis_type == "redis" and len(nodes) > 1:
            raise ValueError(
                f"redis_url names {len(nodes)} nodes; several nodes need "
                "redis_type: redis_cluster (FEATURESTORE_REDIS_TYPE)"
            )
        if self.redis_type == "redis_cluster" and redis_db(self.redis_url) != 0:
            raise ValueError(
                f"redis_url selects database {redis_db(self.redis_url)}; a Redis Cluster has "
                "database 0 only"
            )
        return self

    @model_validator(mode="after")
    def _key_copy_outlives_its_refresh(self) -> Settings:
        if self.serve_key_stale_seconds <= self.serve_key_refresh_seconds:
            raise ValueError(
                f"serve_key_stale_seconds ({self.serve_key_stale_seconds:g}) must be longer than "
                f"serve_key_refresh_seconds ({self.serve_key_refresh_seconds:g}), or keys fail "
                "between re-reads"
            )
        return self

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.registry_url:
            if self.profile == "embedded":
                self.registry_url = f"sqlite:///{self.data_dir / 'registry.db'}"
            else:
                self.registry_url = "postgresql+psycopg://postgres@127.0.0.1:5432/featurestore"
        if not self.database_url:
            if self.profile == "embedded":
                self.database_url = f"sqlite:///{self.data_dir / 'featurestore.db'}"
            else:
                self.database_url = "postgresql+psycopg://postgres@127.0.0.1:5432/featurestore"
        return self

    # Where things live on disk (the offline store is Parquet under offline_root).
    @property
    def shared_dir(self) -> Path:
        return self.offline_root or self.data_dir

    @property
    def raw_dir(self) -> Path:
        return self.shared_dir / "raw"

    @property
    def offline_dir(self) -> Path:
        return self.shared_dir / "offline"

    @property
    def stream_log_dir(self) -> Path:
        return self.shared_dir / "stream" / self.stream_group

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def baselines_dir(self) -> Path:
        return self.data_dir / "baselines"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def online_sqlite_path(self) -> Path:
        return self.data_dir / "online.db"

    @property
    def online_store_kind(self) -> Literal["redis", "sqlite"]:
        return "redis" if self.profile == "services" else "sqlite"


def redis_nodes(url: str) -> list[tuple[str, int]]:
    """(host, port) of each node a `redis_url` names (`redis://h1:p1,h2:p2/0`: several, for a
    cluster's seed nodes)."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes = []
    for part in netloc.split(","):
        node = urlsplit(f"//{part}")
        try:
            port = node.port or 6379
        except ValueError as exc:  # urlsplit's message names the port, not the node
            raise ValueError(f"redis_url node {part!r} has no valid port") from exc
        nodes.append((node.hostname or "127.0.0.1", port))
    return nodes


def redis_db(url: str) -> int:
    path = urlsplit(url).path.lstrip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"redis_url database must be a number, got {path!r}")
    return int(path)


def get_settings() -> Settings:
    """Fresh settings from the environment and `featurestore.yaml` (cheap; hold on to the result)."""
    return Settings()
