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
