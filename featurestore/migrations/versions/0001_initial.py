"""Initial schema: API keys, dataset jobs, monitors.

The tables as `featurestore.db.METADATA` declared them when migrations began. Frozen here: later
changes are later revisions, never edits of this one.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def schema() -> sa.MetaData:
    """The tables of this revision. Also what a database created before migrations (by
    SQLAlchemy's create_all of the same declarations) is compared with before it is stamped."""
    metadata = sa.MetaData()
    sa.Table(
        "featurestore_api_keys",
        metadata,
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(500), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS),
    )
    sa.Table(
        "featurestore_dataset_jobs",
        metadata,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("feature_service", sa.String(200)),
        sa.Column("rows", sa.BigInteger),
        sa.Column("export_id", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("worker", sa.String(300), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("finished_at", _TS),
    )
    baselines = sa.Table(
        "monitor_baselines",
        metadata,
        sa.Column("baseline_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("export_id", sa.String(64), nullable=False),
        sa.Column("export_path", sa.String(1000), nullable=False),
        sa.Column("model_path", sa.String(1000)),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("sample_rows", sa.Integer, nullable=False),
        sa.Column("sample_path", sa.String(1000), nullable=False),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("subject", "version"),
    )
    runs = sa.Table(
        "monitor_runs",
        metadata,
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("monitor", sa.String(200), nullable=False, index=True),
        sa.Column(
            "baseline_id", sa.Integer, sa.ForeignKey(baselines.c.baseline_id), nullable=False
        ),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("window_end", _TS, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reference_rows", sa.Integer, nullable=False),
        sa.Column("current_rows", sa.Integer, nullable=False),
        sa.Column("drifted_columns", sa.Integer, nullable=False),
        sa.Column("checked_columns", sa.Integer, nullable=False),
        sa.Column("drift_share", sa.Float, nullable=False),
        sa.Column("dataset_drift", sa.Boolean, nullable=False),
        sa.Column("multivariate_statistic", sa.Float),
        sa.Column("multivariate_p_value", sa.Float),
        sa.Column("multivariate_drifted", sa.Boolean),
        sa.Column("newest_events", sa.JSON, nullable=False),
        sa.Column("report_html", sa.String(1000)),
        sa.Column("report_json", sa.String(1000)),
        sa.Column("cursor", sa.JSON, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    sa.Table(
        "monitor_run_features",
        metadata,
        sa.Column("run_id", sa.Integer, sa.ForeignKey(runs.c.run_id), primary_key=True),
        sa.Column("feature", sa.String(300), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("statistic", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.Column("reference_rows", sa.Integer, nullable=False),
        sa.Column("current_rows", sa.Integer, nullable=False),
        sa.Column("reference_null_rate", sa.Float, nullable=False),
        sa.Column("current_null_rate", sa.Float, nullable=False),
    )
    alerts = sa.Table(
        "monitor_alerts",
        metadata,
        sa.Column("alert_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedup_key", sa.String(600), nullable=False, index=True),
        sa.Column("monitor", sa.String(200), nullable=False, index=True),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("summary", sa.String(1000), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("first_run_id", sa.Integer, sa.ForeignKey(runs.c.run_id)),
        sa.Column("last_run_id", sa.Integer, sa.ForeignKey(runs.c.run_id)),
        sa.Column("clean_windows", sa.Integer, nullable=False),
        sa.Column("silenced", sa.Boolean, nullable=False),
        sa.Column("triggered_at", _TS, nullable=False),
        sa.Column("last_fired_at", _TS, nullable=False),
        sa.Column("acknowledged_at", _TS),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("resolved_at", _TS),
        sa.Column("resolved_by", sa.String(200)),
    )
    sa.Table(
        "monitor_silences",
        metadata,
        sa.Column("silence_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("monitor", sa.String(200), nullable=False),
        sa.Column("target", sa.String(300)),
        sa.Column("starts_at", _TS, nullable=False),
        sa.Column("ends_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("comment", sa.String(1000), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    sa.Table(
        "monitor_outbox",
        metadata,
        sa.Column("message_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey(alerts.c.alert_id), nullable=False),
        sa.Column("dedup_key", sa.String(600), nullable=False, index=True),
        sa.Column("notifier", sa.String(200), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("alert", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.String(2000)),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS),
    )
    return metadata


def upgrade() -> None:
    schema().create_all(op.get_bind())


def downgrade() -> None:
    schema().drop_all(op.get_bind())
