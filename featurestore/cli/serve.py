"""`featurestore serve`: the HTTP API under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from featurestore.cli.common import clear_errors, console


@clear_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes (0: one per CPU core).", min=0)
    ] = 0,
) -> None:
    """Serve the HTTP API: online features, scores, dataset exports (see /docs)."""
    import os
    import tempfile

    import uvicorn

    from featurestore.settings import get_settings

    settings = get_settings()
    if settings.api_auth == "off":
        console.print("[yellow]warning:[/yellow] api_auth is off: anyone who reaches the port "
                      "can read features and export datasets")
    # Every worker writes its metrics here; /metrics sums them (prometheus_client multiprocess).
    # Set before anything imports prometheus_client, and fresh per server run.
    metrics_dir = tempfile.mkdtemp(prefix="featurestore-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = metrics_dir
    count = workers or os.cpu_count() or 1
    console.print(f"serving on http://{host}:{port} with {count} worker(s); docs at /docs")
    uvicorn.run(
        "featurestore.api.app:create_app", factory=True, host=host, port=port, workers=count,
        loop="uvloop", http="httptools", access_log=False, log_level="warning",
        proxy_headers=False,  # behind a proxy, its own access log has the client addresses
    )


def add_commands(app: typer.Typer) -> None:
    app.command()(serve)
