"""The monitoring HTTP API: monitors, drift runs and their reports, alerts, silences.

Reads take the `monitors:read` scope, changes (acknowledge, resolve, silences) `monitors:write`.
Runs, alerts and silences are read from our SQL tables (`monitors.sql`), so any API worker
answers for the monitor worker's writes; the monitors file is read per request (a small YAML
file), so an edit shows without a restart. Its names are checked for shape only here:
`featurestore monitors run` checks them against the registry.

- `routes`: the route handlers and `router(settings)`, which the app includes;
- `context`: what the handlers of one router share (settings, engine, monitors file);
- `schemas`: the request model, parameters and documented responses;
- `bodies`: the JSON bodies of monitors, runs and alerts.
"""

from monitors.api.routes import router

__all__ = ["router"]
