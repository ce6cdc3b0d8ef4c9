"""The monitors' plugin (entry point `featurestore.plugins: monitors`): the `monitors` commands,
the monitor routes of the HTTP API, the capture log as the capture sink, and the SQL tables of
baselines, runs and alerts."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from featurestore.settings import Settings
from monitors import api
from monitors.capture import CaptureLog
from monitors.cli import add_commands

__all__ = ["add_commands", "capture_sink", "declare_tables", "routers"]


def routers(settings: Settings) -> list[APIRouter]:
    return [api.router(settings)]  # scopes per route: read or write


def capture_sink(
    settings: Settings, client_id: str, *, registry: CollectorRegistry | None = None
) -> CaptureLog:
    return CaptureLog(settings, client_id, registry=registry)


def declare_tables() -> None:
    import monitors.store  # noqa: F401  # declares the tables at import
