"""What the route handlers of one monitoring router share, and the dependencies that hand it
and the caller's identity to them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from featurestore.api.http import ApiError, scope_checker
from featurestore.apikeys import ApiKey
from featurestore.db import engine
from featurestore.settings import Settings
from monitors.config import MonitorConfigError, MonitorsFile, config_source

T = TypeVar("T")


class Monitoring:
    """The settings a router was made with: its SQL engine and its monitors file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def engine(self) -> Engine:
        return engine(self.settings)

    @property
    def config_path(self) -> Path:
        return Path(self.settings.monitors_config)

    async def in_thread(self, function: Callable[..., T], *args: object) -> T:
        """Blocking SQL and file reads off the event loop; the database down is a 503."""
        try:
            return await asyncio.to_thread(function, *args)
        except OperationalError as exc:
            raise ApiError(
                503, "database_unavailable",
                f"the monitors' database is unavailable: {type(exc.orig).__name__}",
                {"Retry-After": str(self.settings.serve_retry_after_seconds)},
            ) from None

    def config_if_any(self) -> MonitorsFile | None:
        """The monitors file in use (see `config`), None when there is no file."""
        return self.config() if self.config_path.exists() else None

    def config(self) -> MonitorsFile:
        """The version of the monitors file in use, shape checked: reloaded when the file
        changed, the last valid version kept while an edit is invalid (so on-call can still
        acknowledge, resolve and silence). Never valid is the operator's to fix: 409 naming the
        problem (not a 500: nothing is broken in the server; not a 4xx of the request's: the
        same request succeeds once the file is fixed)."""
        try:
            return config_source(self.config_path).current()
        except MonitorConfigError as exc:
            raise ApiError(409, "monitors_config", str(exc)) from None


def bind(monitoring: Monitoring) -> Callable[[Request], None]:
    """A router's first dependency: the request's handler finds `monitoring` (`Context`)."""

    def bind_monitoring(request: Request) -> None:
        request.state.monitoring = monitoring

    return bind_monitoring


def _current(request: Request) -> Monitoring:
    monitoring: Monitoring = request.state.monitoring
    return monitoring


Context = Annotated[Monitoring, Depends(_current)]
# The caller's key (None when api_auth is off) once it proved the scope to change things.
Writer = Annotated[ApiKey | None, Depends(scope_checker("monitors:write"))]
READS = [Depends(scope_checker("monitors:read"))]
WRITES = [Depends(scope_checker("monitors:write"))]


def who(key: ApiKey | None) -> str:
    return key.name if key is not None else "anonymous"  # None: api_auth is off
