"""Versioned migrations of our SQL tables (Alembic; one module per revision under versions/).

What a process finds at start, and what it does (the reasons are in docs/configuration.md, "Schema
and upgrades"):
- an empty database (none of our tables): the first process takes the schema lock and migrates it
  to the head revision in one transaction; the others wait on the lock, then find it done;
- tables created before migrations existed (no version table): under the lock, if every table
  present matches revision 0001 the missing ones are created and the database is stamped 0001;
  otherwise it is refused, naming the differences;
- the head revision: used as it is;
- an older revision (behind this code): refused, naming `featurestore db upgrade`;
- a revision this code does not know (a newer version migrated it): refused.
Only `featurestore db upgrade` (and `featurestore apply`) move a database that already has a
revision: upgrading under processes that still run the old code would break them.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from featurestore.errors import FeatureStoreError
from featurestore.migrations.lock import schema_lock

log = logging.getLogger("featurestore.migrations")

DIRECTORY = Path(__file__).resolve().parent
# Not Alembic's default name: the Feast registry (and an application's own Alembic) may share
# the database.
VERSION_TABLE = "featurestore_schema_version"
LOCK_NAME = "featurestore-schema"
BASE_REVISION = "0001"
UPGRADE_COMMAND = "featurestore db upgrade"


class SchemaError(FeatureStoreError):
    """The database's schema is not the one this code was written for."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the revision recorded in the database; None: no version table
    head: str  # the revision this code needs
    known: frozenset[str]  # every revision this code has
    base_tables: frozenset[str]  # revision 0001's tables present in the database

    @property
    def empty(self) -> bool:
        return self.current is None and not self.base_tables

    @property
    def unversioned(self) -> bool:
        return self.current is None and bool(self.base_tables)

    @property
    def ahead(self) -> bool:
        return self.current is not None and self.current not in self.known


@functools.cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory(str(DIRECTORY))


def _head() -> str:
    head = scripts().get_current_head()
    if head is None:  # only a versions directory without any revision has none
        raise SchemaError(f"no schema revision in {DIRECTORY}")
    return head


def history() -> list[Script]:
    """Every revision, oldest first."""
    return list(reversed(list(scripts().walk_revisions())))


def _base_schema() -> sa.MetaData:
    return scripts().get_revision(BASE_REVISION).module.schema()


def read_state(connection: Connection) -> SchemaState:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    current = ",".join(context.get_current_heads()) or None
    present = set(sa.inspect(connection).get_table_names())
    return SchemaState(
        current=current,
        head=_head(),
        known=frozenset(script.revision for script in scripts().walk_revisions()),
        base_tables=frozenset(present & set(_base_schema().tables)),
    )


def _where(connection: Connection) -> str:
    return connection.engine.url.render_as_string(hide_password=True)


def _ahead(state: SchemaState, where: str) -> SchemaError:
    return SchemaError(
        f"the database {where} is at schema revision {state.current}, which this version of "
        f"featurestore does not know (it needs {state.head}): a newer version migrated it. "
        "Run that newer version, or restore the backup taken before its upgrade"
    )


def refusal(state: SchemaState, where: str) -> SchemaError | None:
    """Why a process of this code must not use the database, or None if it may."""
    if state.current == state.head:
        return None
    if state.ahead:
        return _ahead(state, where)
    return SchemaError(
        f"the database {where} is at schema revision {state.current or 'none (unversioned)'}; "
        f"this version of featurestore needs {state.head}: stop every featurestore process, "
        f"run `{UPGRADE_COMMAND}`, then start them again"
    )


def describe(state: SchemaState) -> str:
    """One line for `featurestore db current`."""
    if state.empty:
        return f"no schema yet (empty database); the first process to start creates {state.head}"
    if state.unversioned:
        return (f"tables from before migrations, no revision recorded; `{UPGRADE_COMMAND}` "
                f"checks them against {BASE_REVISION} and stamps it")
    if state.current == state.head:
        return f"{state.current} (head)"
    if state.ahead:
        return f"{state.current} (unknown to this version, which knows up to {state.head})"
    return f"{state.current} (behind head {state.head}: run `{UPGRADE_COMMAND}`)"


def _transactional(engine: Engine) -> Engine:
    """An engine whose transactions include DDL. Python's sqlite3 commits before a CREATE TABLE
    on its own, so a migration that fails halfway would leave half a schema; SQLAlchemy's
    documented recipe hands transaction control to SQLAlchemy."""
    if engine.dialect.name != "sqlite":
        return engine
    migrating = sa.create_engine(engine.url, poolclass=NullPool)

    @sa.event.listens_for(migrating, "connect")
    def _no_driver_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(migrating, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return migrating


def _config(connection: Connection, **attributes: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(DIRECTORY))
    config.attributes.update(connection=connection, **attributes)
    return config


def _adopt(connection: Connection, state: SchemaState) -> None:
    """Stamp a database created before migrations as revision 0001, if its tables are 0001's."""
    base = _base_schema()
    inspector = sa.inspect(connection)
    differences = []
    for name in sorted(state.base_tables):
        present = {column["name"] for column in inspector.get_columns(name)}
        expected = set(base.tables[name].columns.keys())
        if present != expected:
            differences.append(
                f"{name} (missing {sorted(expected - present)}, unexpected {sorted(present - expected)})"
            )
    if differences:
        raise SchemaError(
            f"the tables of {_where(connection)} have no recorded revision and do not match "
            f"revision {BASE_REVISION}: {'; '.join(differences)}. Alter them to match (or move "
            f"them aside), then run `{UPGRADE_COMMAND}`"
        )
    missing = [table for name, table in base.tables.items() if name not in state.base_tables]
    base.create_all(connection, tables=missing)
    command.stamp(_config(connection), BASE_REVISION)
    log.info("stamped the tables of %s, created before migrations, as revision %s",
             _where(connection), BASE_REVISION)


def _locked(engine: Engine, change: Callable[[Connection, SchemaState], None]) -> SchemaState:
    """Under the schema lock, in one transaction: the state, changed by `change`; then re-read."""
    with schema_lock(engine.url, LOCK_NAME):
        migrating = _transactional(engine)
        try:
            with migrating.begin() as connection:
                change(connection, read_state(connection))
            with migrating.connect() as connection:
                return read_state(connection)
        finally:
            if migrating is not engine:
                migrating.dispose()


def _create_or_adopt(connection: Connection, state: SchemaState) -> None:
    if state.empty:
        command.upgrade(_config(connection), "head")
        log.info("created the schema of %s at revision %s", _where(connection), state.head)
    elif state.unversioned:
        _adopt(connection, state)


def prepare(engine: Engine) -> None:
    """At a process's start: create the schema of an empty database or adopt one from before
    migrations (under the lock), then refuse any revision but this code's head (SchemaError)."""
    with engine.connect() as connection:
        state = read_state(connection)
    if state.empty or state.unversioned:
        state = _locked(engine, _create_or_adopt)
    error = refusal(state, engine.url.render_as_string(hide_password=True))
    if error is not None:
        raise error


def _upgrade(connection: Connection, state: SchemaState) -> None:
    if state.ahead:
        raise _ahead(state, _where(connection))
    if state.unversioned:
        _adopt(connection, state)
    command.upgrade(_config(connection), "head")


def upgrade(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """`featurestore db upgrade`: migrate to head (adopting tables from before migrations), in
    one transaction under the lock. Returns the states before and after."""
    with engine.connect() as connection:
        before = read_state(connection)
    return before, _locked(engine, _upgrade)


def new_revision(message: str, metadata: sa.MetaData) -> Path:
    """Write versions/NNNN_<message>.py with the operations that take a database at head to
    `metadata` (every table the code declares), for a developer to review."""
    number = len(history()) + 1
    with tempfile.TemporaryDirectory() as scratch:
        scratch_engine = sa.create_engine(f"sqlite:///{scratch}/head.db", poolclass=NullPool)
        upgrade(scratch_engine)
        with scratch_engine.begin() as connection:
            script = command.revision(
                _config(connection, target_metadata=metadata), message,
                autogenerate=True, rev_id=f"{number:04d}",
            )
        scratch_engine.dispose()
    scripts.cache_clear()
    # Alembic's type also covers several heads (a list) and no script; ours has one head.
    return Path(script.path)  # type: ignore[union-attr]
