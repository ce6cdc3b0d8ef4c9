"""What one API worker process holds: the registry snapshot, the Redis pool, the key verifier.

The registry snapshot (`Catalog`) is rebuilt in the background when the registry's last-updated
time moves, and swapped in whole; a request uses whichever snapshot it started with. If the
registry cannot be read, the last good snapshot keeps serving and `/readyz` says why.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from feast import FeatureStore
from sqlalchemy.exc import SQLAlchemyError

from featurestore.apikeys import KeyVerifier
from featurestore.db import engine
from featurestore.errors import FeatureStoreError
from featurestore.feast_config import feature_store
from featurestore.online.catalog import Catalog, ReadPlan
from featurestore.online.lookup import LookupResult, check_entities, read_feast, read_redis
from featurestore.online.redis_pool import RedisAddress, RedisPool
from featurestore.settings import Settings

log = logging.getLogger("featurestore.api")


class ServingState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: FeatureStore = feature_store(settings)
        self.catalog = Catalog(self.store)
        self.registry_version = self._registry_version()
        self.registry_error: str | None = None
        self.verifier = KeyVerifier(engine(settings)) if settings.api_auth == "keys" else None
        self.pool: RedisPool | None = None
        if settings.online_store_kind == "redis":
            password = settings.redis_password
            self.pool = RedisPool(
                RedisAddress.from_url(
                    settings.redis_url, password.get_secret_value() if password else None
                ),
                timeout=settings.serve_redis_timeout_seconds,
            )

    def _registry_version(self) -> datetime | None:
        # Feast's SQL registry stamps each apply (to the second) in its metadata table: a second
        # apply within the same second as one already picked up waits for the next change.
        return self.store.registry._get_last_updated_metadata(self.store.project)

    def refresh(self) -> bool:
        """Rebuild the snapshot if the registry changed since the last one; True if it did."""
        version = self._registry_version()
        if version == self.registry_version:
            return False
        store = feature_store(self.settings)
        catalog = Catalog(store)
        self.store, self.catalog, self.registry_version = store, catalog, version
        return True

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serve_registry_refresh_seconds)
            try:
                if await asyncio.to_thread(self.refresh):
                    log.info("registry changed: feature catalog reloaded")
                self.registry_error = None
            except (SQLAlchemyError, FeatureStoreError, OSError) as exc:
                # Keep serving the last good snapshot.
                self.registry_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot refresh the registry: %s", self.registry_error)

    async def lookup(
        self, plan: ReadPlan, entities: dict[str, list], *, full_feature_names: bool = False
    ) -> LookupResult:
        """The entities checked against the plan, then read: Redis fast path, else Feast."""
        check_entities(plan, entities, self.settings.serve_max_entities)
        if self.pool is not None:
            return await read_redis(
                plan, entities, self.pool, full_feature_names=full_feature_names
            )
        return await read_feast(
            self.store, plan, entities, full_feature_names=full_feature_names
        )

    async def check_online_store(self) -> None:
        """Raises RedisUnavailable when Redis does not answer within the serving timeout. (The
        embedded profile's online store is a local SQLite file that Feast opens per read.)"""
        if self.pool is not None:
            await self.pool.ping()
