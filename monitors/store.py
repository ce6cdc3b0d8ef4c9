"""The monitors' SQL tables (SQLAlchemy Core on `featurestore.db.METADATA`: SQLite embedded,
PostgreSQL in services), created and changed only by the revisions in
`featurestore/migrations/versions/`: a change here needs a new revision (`featurestore db revision`).

- baselines: versioned reference profiles per subject (`service:NAME` / `view:NAME`); the
  profile is JSON, the reference rows a Parquet file under `settings.baselines_dir`.
- runs + run_features: one row per checked window and one per checked column, with the window's
  read position (`cursor`), so a run and the position after it commit together.
- alerts, silences, outbox: the alert lifecycle and the durable notification queue.
Times are timezone-aware UTC.
"""

from __future__ import annotations

import sqlalchemy as sa

from featurestore.db import METADATA

_TS = sa.DateTime(timezone=True)

BASELINES = sa.Table(
    "monitor_baselines",
    METADATA,
    sa.Column("baseline_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.String(300), nullable=False),  # service:NAME or view:NAME
    sa.Column("version", sa.Integer, nullable=False),  # 1, 2, ... per subject
    sa.Column("export_id", sa.String(64), nullable=False),
    sa.Column("export_path", sa.String(1000), nullable=False),
    sa.Column("model_path", sa.String(1000)),  # the model whose scores are in the sample
    sa.Column("rows", sa.BigInteger, nullable=False),  # rows of the export
    sa.Column("sample_rows", sa.Integer, nullable=False),  # rows of the reference sample
    sa.Column("sample_path", sa.String(1000), nullable=False),  # Parquet: columns = features
    sa.Column("profile", sa.JSON, nullable=False),  # per column: kind, nulls, quantiles, ...
    sa.Column("created_at", _TS, nullable=False),
    sa.UniqueConstraint("subject", "version"),
)

RUNS = sa.Table(
    "monitor_runs",
    METADATA,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("monitor", sa.String(200), nullable=False, index=True),
    sa.Column("baseline_id", sa.Integer, sa.ForeignKey(BASELINES.c.baseline_id), nullable=False),
    sa.Column("window_start", _TS, nullable=False),  # capture time of the first row
    sa.Column("window_end", _TS, nullable=False),
    # checked | too_few_rows (a time window below min_rows: stored, not tested)
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reference_rows", sa.Integer, nullable=False),
    sa.Column("current_rows", sa.Integer, nullable=False),
    sa.Column("drifted_columns", sa.Integer, nullable=False),
    sa.Column("checked_columns", sa.Integer, nullable=False),
    sa.Column("drift_share", sa.Float, nullable=False),  # the threshold
    sa.Column("dataset_drift", sa.Boolean, nullable=False),
    sa.Column("multivariate_statistic", sa.Float),  # MMD^2
    sa.Column("multivariate_p_value", sa.Float),
    sa.Column("multivariate_drifted", sa.Boolean),
    sa.Column("newest_events", sa.JSON, nullable=False),  # view -> newest event time (ISO)
    sa.Column("report_html", sa.String(1000)),  # paths of Evidently's report
    sa.Column("report_json", sa.String(1000)),
    sa.Column("cursor", sa.JSON, nullable=False),  # capture partition -> next offset
    sa.Column("seconds", sa.Float, nullable=False),  # time taken by the check
    sa.Column("created_at", _TS, nullable=False),
)

RUN_FEATURES = sa.Table(
    "monitor_run_features",
    METADATA,
    sa.Column("run_id", sa.Integer, sa.ForeignKey(RUNS.c.run_id), primary_key=True),
    sa.Column("feature", sa.String(300), primary_key=True),  # view:feature, or `score`
    sa.Column("kind", sa.String(20), nullable=False),  # numeric | categorical
    sa.Column("method", sa.String(40), nullable=False),
    sa.Column("statistic", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("reference_rows", sa.Integer, nullable=False),
    sa.Column("current_rows", sa.Integer, nullable=False),
    sa.Column("reference_null_rate", sa.Float, nullable=False),
    sa.Column("current_null_rate", sa.Float, nullable=False),
)

ALERTS = sa.Table(
    "monitor_alerts",
    METADATA,
    sa.Column("alert_id", sa.Integer, primary_key=True, autoincrement=True),
    # monitor/rule/feature-or-view: at most one alert per key is open (not resolved)
    sa.Column("dedup_key", sa.String(600), nullable=False, index=True),
    sa.Column("monitor", sa.String(200), nullable=False, index=True),
    sa.Column("rule", sa.String(40), nullable=False),
    sa.Column("target", sa.String(300), nullable=False),  # feature, view, or `dataset`
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # triggered | acknowledged | resolved
    sa.Column("summary", sa.String(1000), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("first_run_id", sa.Integer, sa.ForeignKey(RUNS.c.run_id)),
    sa.Column("last_run_id", sa.Integer, sa.ForeignKey(RUNS.c.run_id)),
    sa.Column("clean_windows", sa.Integer, nullable=False),  # clean windows in a row
    # Flap damping (monitors.rules.damp): judged windows since it opened, and how often it fired
    # again after a clean window (each doubles the clean windows it needs to resolve).
    sa.Column("open_windows", sa.Integer, nullable=False, server_default="0"),
    sa.Column("flaps", sa.Integer, nullable=False, server_default="0"),
    # The page (one notification per notifier) this alert went out in: the alerts one window
    # opened share one. Null while nobody was paged (opened under a silence).
    sa.Column("page_key", sa.String(600), index=True),
    sa.Column("silenced", sa.Boolean, nullable=False),  # fired under a silence: nobody paged
    sa.Column("triggered_at", _TS, nullable=False),
    sa.Column("last_fired_at", _TS, nullable=False),
    sa.Column("acknowledged_at", _TS),
    sa.Column("acknowledged_by", sa.String(200)),
    sa.Column("resolved_at", _TS),
    sa.Column("resolved_by", sa.String(200)),  # a person, or `auto` after clean windows
)

SILENCES = sa.Table(
    "monitor_silences",
    METADATA,
    sa.Column("silence_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("monitor", sa.String(200), nullable=False),
    sa.Column("target", sa.String(300)),  # null = every feature/view of the monitor
    sa.Column("starts_at", _TS, nullable=False),
    sa.Column("ends_at", _TS, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("comment", sa.String(1000), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
)

OUTBOX = sa.Table(
    "monitor_outbox",
    METADATA,
    sa.Column("message_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.Integer, sa.ForeignKey(ALERTS.c.alert_id), nullable=False),
    sa.Column("dedup_key", sa.String(600), nullable=False, index=True),
    sa.Column("notifier", sa.String(200), nullable=False),  # a name in the monitors file
    sa.Column("event", sa.String(20), nullable=False),  # trigger|refire|acknowledge|resolve
    # The page as notified (no secrets); alert_id is its first alert, dedup_key its page key.
    sa.Column("alert", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),  # pending|delivered|failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", _TS, nullable=False),
    sa.Column("last_error", sa.String(2000)),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("delivered_at", _TS),
)


def max_chars(column: sa.Column) -> int:
    """How many characters a string column holds."""
    kind = column.type
    if not isinstance(kind, sa.String) or kind.length is None:
        raise TypeError(f"{column} is not a string column of bounded length")
    return kind.length


def unfit(value: str, column: sa.Column) -> str | None:
    """Why `column` cannot hold `value` (too long, or a NUL, which PostgreSQL refuses), None
    when it can: such inputs are refused when the baseline or the monitors file is loaded,
    rather than by every window's insert."""
    if "\x00" in value:
        return f"{value[:40]!r} holds a NUL character"
    if len(value) > max_chars(column):
        return (f"{value[:40]!r}... is {len(value)} characters, more than the "
                f"{max_chars(column)} of {column.table.name}.{column.name}")
    return None

