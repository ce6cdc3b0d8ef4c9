"""Our own SQL tables (SQLAlchemy): SQLite in the embedded profile, PostgreSQL in services.

Each owner declares its tables on `METADATA` at import, for its queries; the schema in the
database comes from the Alembic revisions in `featurestore.migrations` (a table or column added
here needs a new revision there: see docs/configuration.md, "Schema and upgrades"). `engine()` checks the
schema once per process: it creates it on an empty database and refuses one behind or ahead of
this code.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from featurestore import migrations
from featurestore.settings import Settings

METADATA = sa.MetaData()
_checked: set[Engine] = set()


@functools.cache
def _engine(url: str, password: str | None) -> Engine:
    address = make_url(url)
    if password is not None:
        address = address.set(password=password)
    if address.get_backend_name() == "sqlite" and address.database:
        Path(address.database).parent.mkdir(parents=True, exist_ok=True)
    # A database host that does not answer fails fast instead of hanging a request or a worker.
    connect_args = {"connect_timeout": 5} if address.get_backend_name() == "postgresql" else {}
    return sa.create_engine(address, pool_pre_ping=True, connect_args=connect_args)


def raw_engine(settings: Settings) -> Engine:
    """The engine of `settings.database_url` (one per URL and process), schema unchecked: for
    the `featurestore db` commands, which report or migrate it."""
    password = settings.database_password
    return _engine(settings.database_url, password.get_secret_value() if password else None)


def engine(settings: Settings) -> Engine:
    """The engine of `settings.database_url`, its schema at this code's revision (created on an
    empty database; `migrations.SchemaError` when the database is behind or ahead)."""
    result = raw_engine(settings)
    if result not in _checked:
        migrations.prepare(result)
        _checked.add(result)
    return result
