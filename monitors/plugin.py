"""The monitors' plugin (entry point `featurestore.plugins: monitors`): the `monitors` commands,
the monitor routes of the HTTP API, the capture log as the capture sink, and the SQL tables of
baselines, runs and alerts.

The routes and the capture log are imported when asked for: every `featurestore` command loads
this module, and most need neither."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitors.cli import add_commands

if TYPE_CHECKING:
    from fastapi import APIRouter
    from prometheus_client import CollectorRegistry

    from featurestore.capture import CaptureSink
    from featurestore.settings import Settings

__all__ = ["add_commands", "capture_sink", "declare_tables", "routers"]


def routers(settings: Settings) -> list[APIRouter]:
    from monitors import api

    return [api.router(settings)]  # scopes per route: read or write


def capture_sink(
    settings: Settings, client_id: str, *, registry: CollectorRegistry | None = None
) -> CaptureSink:  # typed so: mypy checks that the capture log is one
    from monitors.capture import CaptureLog

    return CaptureLog(settings, client_id, registry=registry)


def declare_tables() -> None:
    import monitors.store  # noqa: F401  # declares the tables at import
