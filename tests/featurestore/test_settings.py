"""One typed settings object: defaults per profile, env over featurestore.yaml, clear errors."""

from __future__ import annotations

import pydantic
import pytest

from featurestore.settings import Settings


def test_embedded_defaults(configure) -> None:
    settings = configure()
    assert settings.profile == "embedded"
    assert settings.online_store_kind == "sqlite"
    assert settings.registry_url == f"sqlite:///{settings.data_dir / 'registry.db'}"


def test_services_profile_uses_redis_and_postgres(configure) -> None:
    settings = configure(profile="services")
    assert settings.online_store_kind == "redis"
    assert settings.registry_url.startswith("postgresql+psycopg://")


def test_env_overrides_yaml(tmp_path, monkeypatch) -> None:
    config = tmp_path / "featurestore.yaml"
    config.write_text("project: from_yaml\nmaterialize_batch_size: 123\nspark_master: local[1]\n")
    monkeypatch.setenv("FEATURESTORE_CONFIG", str(config))
    monkeypatch.setenv("FEATURESTORE_PROJECT", "from_env")
    monkeypatch.delenv("FEATURESTORE_SPARK_MASTER", raising=False)
    monkeypatch.setenv("SPARK_MASTER", "spark://master:7077")
    settings = Settings()
    assert settings.project == "from_env"
    assert settings.materialize_batch_size == 123
    assert settings.spark_master == "spark://master:7077"


def test_kafka_bootstrap_servers_from_the_standard_variable(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    assert Settings().kafka_bootstrap_servers == "broker:9092"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("profile", "cloud", "profile"),
        ("materialize_batch_size", "0", "materialize_batch_size"),
        ("redis_url", "http://x", "redis_url"),
        ("redis_url", "redis://:pw@host:6379/0", "must not contain a password"),
        ("unknown_field", "1", "unknown_field"),
        ("stream_max_message_bytes", "2000000", "stream_max_message_bytes"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, monkeypatch, field, value, message) -> None:
    config = tmp_path / "featurestore.yaml"
    config.write_text(f"{field}: {value!r}\n" if field == "unknown_field" else "{}\n")
    monkeypatch.setenv("FEATURESTORE_CONFIG", str(config))
    if field != "unknown_field":
        monkeypatch.setenv(f"FEATURESTORE_{field.upper()}", value)
    with pytest.raises(pydantic.ValidationError, match=message):
        Settings()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis_url": "redis://a:1,b:2/0"}, "several nodes need redis_type: redis_cluster"),
        ({"redis_url": "redis://a:1,b:2/15", "redis_type": "redis_cluster"}, "database 0 only"),
        ({"redis_url": "redis://a:1,b:x", "redis_type": "redis_cluster"}, "node 'b:x'"),
        ({"redis_url": "redis://a:1/x"}, "database must be a number"),
        ({"redis_type": "sentinel"}, "redis_type"),
    ],
)
def test_bad_redis_nodes_are_named(values, message) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        Settings(**values)


def test_a_cluster_renders_feasts_cluster_store(tmp_path) -> None:
    from featurestore.feast_config import repo_config_dict

    cluster = Settings(profile="services", redis_type="redis_cluster", data_dir=tmp_path,
                       redis_url="rediss://10.0.0.1:7000,10.0.0.2")  # fmt: skip
    online = repo_config_dict(cluster, secrets=False)["online_store"]
    assert online["redis_type"] == "redis_cluster"
    assert online["connection_string"] == "10.0.0.1:7000,10.0.0.2:6379,ssl=true"
    single = Settings(profile="services", data_dir=tmp_path, redis_url="redis://h:1/3")
    online = repo_config_dict(single, secrets=False)["online_store"]
    assert online["redis_type"] == "redis"
    assert online["connection_string"] == "h:1,db=3"
