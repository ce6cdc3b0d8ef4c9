"""A served dataset for the API and client tests: built once per test session."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pyarrow as pa
import pytest
import redis

from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.featurestore import pipeline

SERVED_CARDS = 200
SERVED_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/14"
FRESH_CARD = 7_777_777  # written with a recent timestamp, so its status is PRESENT


@pytest.fixture(scope="session")
def served(tmp_path_factory, spark):
    """Settings (services profile) of the generated data, materialized into the test Redis db.

    It has a Redis db of its own (SERVED_REDIS_URL), which the `redis_client` fixture of other
    tests does not flush.
    """
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize, writer_for
    from featurestore.settings import get_settings

    built = pipeline.build(tmp_path_factory.mktemp("served"), cards=SERVED_CARDS)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in built.env.items():
            patch.setenv(key, value)
        # Our SQL tables (API keys, dataset jobs) in the real PostgreSQL.
        patch.setenv("FEATURESTORE_DATABASE_URL", POSTGRES_URL)
        patch.setenv("FEATURESTORE_REDIS_URL", SERVED_REDIS_URL)
        settings = get_settings()
    redis.Redis.from_url(SERVED_REDIS_URL).flushdb()
    store = feature_store(settings)
    start = datetime.combine(pipeline.START, time(), UTC)
    end = datetime.combine(pipeline.END, time(), UTC)
    materialize(settings, store, [(v, start, end) for v in select_views(store, None)])
    writer = writer_for(settings, store, select_views(store, ["card_profile"])[0])
    writer.write(pa.table({
        "card_id": [FRESH_CARD], "event_timestamp": [datetime.now(UTC)],
        "credit_limit": [5000.0], "card_age_days": [12], "home_country": ["DE"],
        "card_tier": [None],
    }))
    writer.flush()
    writer.close()
    yield settings
    redis.Redis.from_url(SERVED_REDIS_URL).flushdb()
