"""The one composition root: the product reaches the packages above it (streaming, monitors, the
fraud example) only here, through the Python entry points of group `featurestore.plugins`.

A plugin is a module that may define any of:
- `add_commands(app: typer.Typer) -> None`: adds its command groups to the `featurestore` CLI;
- `routers(settings) -> list[fastapi.APIRouter]`: routes the HTTP API includes;
- `capture_sink(settings, client_id: str, *, registry=None) -> CaptureSink`: where the API and
  the stream worker offer the rows they serve and write, for monitoring (at most one plugin
  provides it; `registry`: the Prometheus registry of the sink's metrics, None for the default);
- `declare_tables() -> None`: imports the modules that declare its SQL tables on
  `featurestore.db.METADATA` (for `featurestore db revision`).

Plugins load once, in the order of their entry point names, so the CLI and the API are the same
on every run. A plugin that cannot be imported is an error naming it, never a missing command.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING

import typer

from featurestore.errors import FeatureStoreError

if TYPE_CHECKING:
    from fastapi import APIRouter
    from prometheus_client import CollectorRegistry

    from featurestore.capture import CaptureSink
    from featurestore.settings import Settings

GROUP = "featurestore.plugins"


class PluginError(FeatureStoreError):
    """A declared plugin cannot be loaded."""


@dataclass(frozen=True)
class Plugin:
    name: str  # the entry point's name
    module: ModuleType


def discover() -> dict[str, str]:
    """Entry point name -> module path, for every installed plugin."""
    found: dict[str, str] = {}
    for point in entry_points(group=GROUP):
        if found.setdefault(point.name, point.value) != point.value:
            raise PluginError(
                f"plugin {point.name!r} is declared twice: as {found[point.name]!r} and "
                f"{point.value!r} (two installed distributions declare it)"
            )
    return found


def load(name: str, module_path: str) -> Plugin:
    """Import one plugin's module; an import failure names the plugin and its module."""
    try:
        return Plugin(name, importlib.import_module(module_path))
    except Exception as exc:
        raise PluginError(
            f"plugin {name!r} ({module_path}, entry point group {GROUP}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


@functools.cache
def loaded() -> tuple[Plugin, ...]:
    """Every installed plugin, imported, in the order of their names."""
    return tuple(load(name, path) for name, path in sorted(discover().items()))


def add_commands(app: typer.Typer) -> None:
    """Let every plugin add its command groups to the CLI."""
    for plugin in loaded():
        hook = getattr(plugin.module, "add_commands", None)
        if hook is not None:
            hook(app)


def routers(settings: Settings) -> list[APIRouter]:
    """The HTTP routes of every plugin, in plugin order."""
    found: list[APIRouter] = []
    for plugin in loaded():
        hook = getattr(plugin.module, "routers", None)
        if hook is not None:
            found.extend(hook(settings))
    return found


def capture_sink(
    settings: Settings, client_id: str, *, registry: CollectorRegistry | None = None
) -> CaptureSink | None:
    """The capture sink for `client_id`; None when capture is off or no plugin provides one."""
    providers = [p for p in loaded() if hasattr(p.module, "capture_sink")]
    if len(providers) > 1:
        raise PluginError(
            "more than one plugin provides the capture sink: "
            + ", ".join(repr(p.name) for p in providers)
        )
    if settings.capture_rate <= 0 or not providers:
        return None
    sink: CaptureSink = providers[0].module.capture_sink(settings, client_id, registry=registry)
    return sink


def declare_tables() -> None:
    """Have every plugin declare its SQL tables on `featurestore.db.METADATA`."""
    for plugin in loaded():
        hook = getattr(plugin.module, "declare_tables", None)
        if hook is not None:
            hook()
