"""What one API worker process holds: the registry snapshot, the Redis pool, the key verifier.

The registry snapshot (`Catalog`) is rebuilt in the background when the registry's last-updated
time moves, and swapped in whole; a request uses whichever snapshot it started with. If the
registry cannot be read, the last good snapshot keeps serving and `/readyz` says why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

from feast import FeatureStore
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from featurestore import plugins
from featurestore.apikeys import KeyVerifier
from featurestore.capture import SCORE_COLUMN, CaptureSink
from featurestore.db import engine
from featurestore.errors import FeatureStoreError
from featurestore.feast_config import feature_store
from featurestore.online.catalog import Catalog, ReadPlan
from featurestore.online.cluster import ClusterPool
from featurestore.online.lookup import LookupResult, check_entities, read_feast, read_redis
from featurestore.online.redis_pool import ReadPool, RedisAddress, RedisPool
from featurestore.settings import Settings, redis_nodes

log = logging.getLogger("featurestore.api")


class ServingState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Checked first, whatever the auth mode: a schema behind or ahead of this code stops the
        # worker here (SchemaError names the command to run), not at its first export.
        database = engine(settings)
        self.store: FeatureStore = feature_store(settings)
        self.catalog = Catalog(self.store, settings.serve_max_features)
        self.registry_version = self._registry_version()
        self.registry_error: str | None = None
        self.verifier: KeyVerifier | None = None
        if settings.api_auth == "keys":
            self.verifier = KeyVerifier(
                database,
                refresh_seconds=settings.serve_key_refresh_seconds,
                stale_seconds=settings.serve_key_stale_seconds,
            )
            self.verifier.read()
        self.pool: ReadPool | None = None
        if settings.online_store_kind == "redis":
            secret = settings.redis_password
            password = secret.get_secret_value() if secret else None
            timeout = settings.serve_redis_timeout_seconds
            if settings.redis_type == "redis_cluster":
                self.pool = ClusterPool(
                    redis_nodes(settings.redis_url),
                    tls=urlsplit(settings.redis_url).scheme == "rediss",
                    password=password,
                    timeout=timeout,
                )
            else:
                self.pool = RedisPool(
                    RedisAddress.from_url(settings.redis_url, password), timeout=timeout
                )
        # A sample of what this process serves, for drift monitoring (None: capture is off).
        self.capture: CaptureSink | None = plugins.capture_sink(
            settings, f"featurestore-api-{os.getpid()}"
        )

    def _registry_version(self) -> datetime | None:
        # Feast's SQL registry stamps each apply (to the second) in its metadata table: a second
        # apply within the same second as one already picked up waits for the next change.
        # SqlRegistry's method (our registry is always SQL), not declared on BaseRegistry.
        return self.store.registry._get_last_updated_metadata(  # type: ignore[attr-defined]
            self.store.project
        )

    def refresh(self) -> bool:
        """Rebuild the snapshot if the registry changed since the last one; True if it did."""
        version = self._registry_version()
        if version == self.registry_version:
            return False
        store = feature_store(self.settings)
        catalog = Catalog(store, self.settings.serve_max_features)
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

    def capture_served(
        self,
        service: str,
        plan: ReadPlan,
        result: LookupResult,
        *,
        full_feature_names: bool = False,
        scores: list[float] | None = None,
    ) -> None:
        """Offer the feature columns served for `service` (and the model's scores) to the capture
        log: short feature names, as a training export names them, whatever the response used;
        join keys left out; each view's event times give its newest event. Lookups by feature
        list are not captured: monitors watch feature services."""
        capture = self.capture
        if capture is None:
            return
        try:
            picks = capture.sample(len(result.values[0]))
            if picks is None:
                return
            at = {name: i for i, name in enumerate(result.feature_names)}
            columns: list[str] = []
            values: list[Sequence[object]] = []
            event_times: dict[str, Sequence[str | None]] = {}
            for view, feature in plan.outputs:
                i = at[f"{view}__{feature}" if full_feature_names else feature]
                columns.append(feature)
                values.append(result.values[i])
                event_times.setdefault(view, result.event_timestamps[i])
            if scores is not None:
                columns.append(SCORE_COLUMN)
                values.append(scores)
            capture.offer_columns(
                f"service:{service}", columns, values, event_times, picks=picks
            )
        except Exception:  # a sample is never worth a failed response
            log.exception("cannot capture the rows served for %s", service)

    async def check_online_store(self) -> None:
        """Raises RedisUnavailable when Redis does not answer within the serving timeout. (The
        embedded profile's online store is a local SQLite file that Feast opens per read.)"""
        if self.pool is not None:
            await self.pool.ping()


def start_serving_state(settings: Settings) -> ServingState:
    """A worker's state, waiting (bounded, logged) while the SQL database cannot be reached.

    uvicorn stops the whole server when a restarted worker fails its start-up, so a worker
    replaced during a database outage must wait it out rather than fail; the other workers go
    on serving meanwhile. A schema behind or ahead of the code still fails at once."""
    deadline = time.monotonic() + settings.serve_startup_wait_seconds
    while True:
        try:
            return ServingState(settings)
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            if time.monotonic() >= deadline:
                raise
            # The driver's message names the host; this is the server log, not a response.
            log.warning("waiting for the SQL database to start this worker: %s",
                        # A pool timeout has no driver error (`orig`) to show.
                        str(getattr(exc, "orig", None) or exc).splitlines()[0])
            time.sleep(1)
