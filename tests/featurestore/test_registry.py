"""The Feast SQL registry on SQLite and on PostgreSQL; feast's own CLI works on feature_repo/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

from tests.conftest import POSTGRES_URL, unique_project

EXPECTED_VIEWS = {"card_profile", "card_transaction_features", "merchant_transaction_features"}


def _check_registry(settings) -> None:
    from featurestore.definitions import load_views
    from featurestore.feast_config import apply, feature_store

    apply(settings)
    store = feature_store(settings)
    assert set(load_views(store)) == EXPECTED_VIEWS
    assert store.get_feature_service("fraud_detection_v1").name == "fraud_detection_v1"
    assert [v.name for v in store.list_on_demand_feature_views()] == ["transaction_amount_ratio"]
    apply(settings)  # a second apply is a no-op, not an error
    assert set(load_views(feature_store(settings))) == EXPECTED_VIEWS


def test_sqlite_registry(configure) -> None:
    settings = configure()
    assert settings.registry_url.startswith("sqlite:///")
    _check_registry(settings)


@pytest.mark.postgres
def test_postgres_registry(configure) -> None:
    project = unique_project()
    settings = configure(registry_url=POSTGRES_URL, project=project)
    try:
        _check_registry(settings)
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text("select count(*) from feature_views where project_id = :p"),
                {"p": project},
            ).scalar()
        assert rows == 1  # card_profile; stream views live in their own table
    finally:
        from featurestore.feast_config import feature_store

        feature_store(settings).registry.delete_project(project)


def test_feast_cli_plan_works_on_the_repo(configure) -> None:
    from featurestore.feast_config import apply

    settings = configure()
    apply(settings)
    feast = Path(sys.executable).with_name("feast")
    result = subprocess.run(
        [str(feast), "-c", str(settings.feature_repo), "plan"],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "No changes to infrastructure" in result.stdout


def test_rendered_yaml_keeps_passwords_out(configure, monkeypatch) -> None:
    from featurestore.feast_config import render_feature_store_yaml, repo_config

    monkeypatch.setenv("FEATURESTORE_REGISTRY_PASSWORD", "s3cret-registry")
    monkeypatch.setenv("FEATURESTORE_REDIS_PASSWORD", "s3cret-redis")
    settings = configure(profile="services", registry_url="postgresql+psycopg://fs@db:5432/fs")
    text = render_feature_store_yaml(settings).read_text()
    assert "s3cret" not in text
    assert "${FEATURESTORE_REGISTRY_PASSWORD}" in text and "${FEATURESTORE_REDIS_PASSWORD}" in text
    assert "s3cret-redis" in repo_config(settings).online_store.connection_string
    assert "s3cret" not in repr(settings)
