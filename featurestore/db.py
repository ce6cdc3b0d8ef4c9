"""Our own SQL tables (SQLAlchemy): SQLite in the embedded profile, PostgreSQL in services.

Each owner declares its tables on `METADATA` at import; `engine()` creates any declared table
that is missing, so a table declared by a module imported later is created on its first use.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from featurestore.settings import Settings

METADATA = sa.MetaData()
_created: dict[Engine, int] = {}


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


def engine(settings: Settings) -> Engine:
    """The engine of `settings.database_url` (one per URL and process), every declared table created."""
    password = settings.database_password
    result = _engine(settings.database_url, password.get_secret_value() if password else None)
    if _created.get(result) != len(METADATA.tables):
        METADATA.create_all(result)
        _created[result] = len(METADATA.tables)
    return result
