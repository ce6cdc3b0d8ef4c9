"""Alert pages and flap damping: three columns on monitor_alerts.

`open_windows` and `flaps` hold what flap damping (monitors.rules.damp) counts since an alert
opened; `page_key` names the page (one notification per notifier) the alerts of one window went
out in. Existing alerts keep working unchanged: 0 windows and flaps, and a null page key, which
means the alert was paged alone under its dedup key, as before this revision.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add an indexed column in place on every version we support.
    with op.batch_alter_table("monitor_alerts") as batch:
        batch.add_column(sa.Column("open_windows", sa.Integer, server_default="0", nullable=False))
        batch.add_column(sa.Column("flaps", sa.Integer, server_default="0", nullable=False))
        batch.add_column(sa.Column("page_key", sa.String(600), nullable=True))
        batch.create_index("ix_monitor_alerts_page_key", ["page_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("monitor_alerts") as batch:
        batch.drop_index("ix_monitor_alerts_page_key")
        batch.drop_column("page_key")
        batch.drop_column("flaps")
        batch.drop_column("open_windows")
