"""`featurestore monitors`: baselines, the config check and the monitor worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from featurestore.cli.common import clear_errors, console
from featurestore.errors import FeatureStoreError


@clear_errors
def monitors_baseline(
    export: Annotated[
        Path | None, typer.Option(help="Training export to build the baseline from.")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Model file: its scores join the baseline, and without --export the "
                          "export it was trained on is found under the exports directory."),
    ] = None,
    feature_view: Annotated[
        str | None,
        typer.Option(help="Baseline of one feature view's features (for stream-worker "
                          "monitors) instead of the export's feature service."),
    ] = None,
    sample_rows: Annotated[
        int, typer.Option(min=1_000, help="Rows of the reference sample.")
    ] = 100_000,
) -> None:
    """Build a new baseline version from a training export (and the model trained on it)."""
    from featurestore.settings import get_settings
    from monitors.baseline import baseline_for_model, build_baseline

    settings = get_settings()
    if export is None and model is None:
        raise FeatureStoreError("give --export FILE, --model FILE, or both")
    with console.status("building the baseline"):
        if export is None:
            baseline = baseline_for_model(
                settings, model, feature_view=feature_view, sample_rows=sample_rows
            )
        else:
            baseline = build_baseline(settings, export, feature_view=feature_view,
                                      model_path=model, sample_rows=sample_rows)
    console.print(
        f"baseline {baseline.subject} v{baseline.version} from export {baseline.export_id} "
        f"({baseline.rows:,} rows; sample of {baseline.sample_rows:,} in {baseline.sample_path}; "
        f"{len(baseline.profile)} columns)"
    )


@clear_errors
def monitors_baselines() -> None:
    """List the stored baselines."""
    from rich.table import Table

    from featurestore.settings import get_settings
    from monitors.baseline import list_baselines

    table = Table("subject", "version", "export", "rows", "sample", "model", "created")
    for b in list_baselines(get_settings()):
        table.add_row(b.subject, str(b.version), b.export_id, f"{b.rows:,}",
                      f"{b.sample_rows:,}", str(b.model_path or ""),
                      f"{b.created_at:%Y-%m-%d %H:%M}")
    Console().print(table)


@clear_errors
def monitors_check() -> None:
    """Check the monitors file against the registry (and the notifiers' secrets)."""
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from monitors.config import check_secrets, load_monitors

    settings = get_settings()
    config = load_monitors(settings.monitors_config, feature_store(settings))
    check_secrets(config, str(settings.monitors_config))
    for name, monitor in config.monitors.items():
        console.print(f"{name}: {monitor.subject}, {len(monitor.rules)} rules, "
                      f"notifies {monitor.notify or 'nobody'}")
    console.print(f"{settings.monitors_config}: {len(config.monitors)} monitors, ok")


@clear_errors
def monitors_run(
    once: Annotated[
        bool, typer.Option(help="Check the windows that have closed, deliver, and exit.")
    ] = False,
) -> None:
    """The monitor worker: read the capture log, check windows, raise and deliver alerts."""
    import logging
    import signal
    import threading

    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings
    from monitors.config import MonitorsConfigSource, check_names
    from monitors.worker import MonitorWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    store = feature_store(settings)
    # Reloaded when the file changes; an invalid edit keeps the last valid version in use.
    source = MonitorsConfigSource(settings.monitors_config, lambda c: check_names(c, store))
    source.current()  # a file that is invalid at start is an error at once
    stop = threading.Event()
    for received in (signal.SIGTERM, signal.SIGINT):
        signal.signal(received, lambda *_: stop.set())
    report = MonitorWorker(settings, source.current).run(stop, until_idle=once)
    console.print(
        f"{len(report.runs)} windows checked, {report.delivered} notifications delivered, "
        f"{report.retried} to retry, {report.failed} failed"
    )
    for name, error in report.failures.items():
        console.print(f"[red]monitor {name} failed:[/red] {error}", highlight=False)
    if report.failures:
        raise typer.Exit(code=1)


def add_commands(app: typer.Typer) -> None:
    monitors_app = typer.Typer(help="Drift monitors: baselines, the scheduler loop, the config check.")
    monitors_app.command("baseline")(monitors_baseline)
    monitors_app.command("baselines")(monitors_baselines)
    monitors_app.command("check")(monitors_check)
    monitors_app.command("run")(monitors_run)
    app.add_typer(monitors_app, name="monitors")
