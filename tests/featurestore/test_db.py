"""Our SQL schema under Alembic: created on an empty database, adopted from create_all, upgraded
with every row kept, refused behind and ahead; on the real PostgreSQL and on SQLite."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.pool import NullPool

from featurestore import migrations
from tests.featurestore.freshdb import fresh_database
from tests.servers import free_port

BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
BASE = migrations.scripts().get_revision(migrations.BASE_REVISION).module.schema()

@pytest.fixture(params=BACKENDS)
def database(request, tmp_path):
    """An engine on a fresh, empty database of each backend."""
    with fresh_database(request.param, tmp_path) as url:
        engine = sa.create_engine(url, poolclass=NullPool)
        yield engine
        engine.dispose()


def _state(engine) -> migrations.SchemaState:
    with engine.connect() as connection:
        return migrations.read_state(connection)


def _value(column: sa.Column):
    """A value of the column's type; primary and foreign keys are 1, so one row per table joins."""
    kind = column.type
    if isinstance(kind, sa.String):
        return "1" if column.primary_key else f"{column.table.name}.{column.name}"[:kind.length]
    if isinstance(kind, sa.Integer):
        return 1
    if isinstance(kind, sa.DateTime):
        return datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
    if isinstance(kind, sa.Float):
        return 0.25
    if isinstance(kind, sa.Boolean):
        return True
    if isinstance(kind, sa.JSON):
        return {"nested": [1, None, "é"]}
    raise AssertionError(f"no test value for {column} ({kind})")


def _rows_of_every_table(engine, metadata: sa.MetaData) -> dict[str, dict]:
    rows = {t.name: {c.name: _value(c) for c in t.columns} for t in metadata.sorted_tables}
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            connection.execute(table.insert().values(rows[table.name]))
    return rows


def _normal(value):
    # SQLite hands back timezone-aware values naive (UTC).
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and not value.tzinfo else value


def _stored(engine, metadata: sa.MetaData) -> dict[str, list[dict]]:
    with engine.connect() as connection:
        return {
            table.name: [
                {key: _normal(value) for key, value in row._mapping.items()}
                for row in connection.execute(sa.select(table))
            ]
            for table in metadata.sorted_tables
        }


def _declared_tables() -> sa.MetaData:
    # Each module declares its tables at import.
    import featurestore.api.datasets
    import featurestore.apikeys  # noqa: F401
    import monitors.store  # noqa: F401
    from featurestore.db import METADATA

    return METADATA


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_an_empty_database_gets_the_schema_the_code_declares(database) -> None:
    assert migrations.describe(_state(database)) == (
        "no schema yet (empty database); the first process to start creates 0002")
    migrations.prepare(database)
    state = _state(database)
    assert state.current == state.head == "0002"
    assert migrations.describe(state) == "0002 (head)"
    # A table or column declared without its revision fails here: add one (docs/configuration.md,
    # Schema and upgrades: `featurestore db revision`).
    with database.connect() as connection:
        assert compare_metadata(MigrationContext.configure(
            connection, opts={"version_table": migrations.VERSION_TABLE}), _declared_tables()) == []


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_a_migration_that_fails_leaves_no_table_behind(database) -> None:
    # An object named like an index of the first revision's last tables makes the CREATE fail
    # after several tables were created in the same transaction.
    with database.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE unrelated (status VARCHAR(20))")
        connection.exec_driver_sql("CREATE INDEX ix_monitor_outbox_status ON unrelated (status)")
    with pytest.raises(sa.exc.DatabaseError):
        migrations.prepare(database)
    assert set(sa.inspect(database).get_table_names()) == {"unrelated"}


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_tables_from_create_all_are_stamped_with_their_rows(database) -> None:
    # What the code before migrations left: create_all of the tables its process had imported.
    legacy = sa.MetaData()
    for name in ("featurestore_api_keys", "monitor_baselines", "monitor_runs"):
        BASE.tables[name].to_metadata(legacy)
    legacy.create_all(database)
    rows = _rows_of_every_table(database, legacy)
    assert _state(database).unversioned

    # Stamped as the revision its tables are, then refused: it is behind this code's head, and
    # only `db upgrade` moves it (processes of the release before may still run on it).
    with pytest.raises(migrations.SchemaError, match="run `featurestore db upgrade`"):
        migrations.prepare(database)

    assert _state(database).current == migrations.BASE_REVISION
    assert set(BASE.tables) <= set(sa.inspect(database).get_table_names())
    assert _stored(database, legacy) == {name: [row] for name, row in rows.items()}
    migrations.upgrade(database)
    migrations.prepare(database)
    assert _stored(database, legacy) == {name: [row] for name, row in rows.items()}


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_tables_that_differ_from_the_first_revision_are_refused(database) -> None:
    BASE.create_all(database)
    with database.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE monitor_alerts ADD COLUMN group_key VARCHAR(600)")
    with pytest.raises(migrations.SchemaError, match=r"monitor_alerts \(missing \[\], "
                                                     r"unexpected \['group_key'\]\)"):
        migrations.prepare(database)
    assert _state(database).unversioned  # nothing stamped, nothing created


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_an_upgrade_keeps_every_row_of_every_table(database) -> None:
    # A database at revision 0001 with a row in every table, as the release before made it;
    # the shipped 0002 adds flap-damping and page columns to monitor_alerts.
    BASE.create_all(database)
    rows = _rows_of_every_table(database, BASE)
    with database.begin() as connection:
        migrations.command.stamp(migrations._config(connection), migrations.BASE_REVISION)

    assert migrations.describe(_state(database)) == (
        "0001 (behind head 0002: run `featurestore db upgrade`)")
    with pytest.raises(migrations.SchemaError) as behind:
        migrations.prepare(database)
    assert str(behind.value).endswith(
        "is at schema revision 0001; this version of featurestore needs 0002: stop every "
        "featurestore process, run `featurestore db upgrade`, then start them again"
    )

    before, after = migrations.upgrade(database)
    assert (before.current, after.current) == ("0001", "0002")
    migrations.prepare(database)  # at head now
    assert _stored(database, BASE) == {name: [row] for name, row in rows.items()}
    with database.connect() as connection:  # the new columns, on the row that was there
        assert connection.exec_driver_sql(
            "SELECT open_windows, flaps, page_key FROM monitor_alerts").all() == [(0, 0, None)]
        assert compare_metadata(MigrationContext.configure(
            connection, opts={"version_table": migrations.VERSION_TABLE}), _declared_tables()) == []


def _featurestore(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("featurestore")), *args],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_a_database_ahead_of_the_code_is_refused(database, tmp_path) -> None:
    migrations.prepare(database)
    with database.begin() as connection:
        connection.exec_driver_sql(
            f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0099'")
    url = database.url.render_as_string(hide_password=False)
    env = {"PATH": "/usr/bin:/bin", "FEATURESTORE_DATA_DIR": str(tmp_path / "data"),
           "FEATURESTORE_DATABASE_URL": url, "FEATURESTORE_CONFIG": str(tmp_path / "none.yaml")}
    where = database.url.render_as_string(hide_password=True)
    expected = (f"the database {where} is at schema revision 0099, which this version of "
                "featurestore does not know (it needs 0002): a newer version migrated it")
    for command in (["keys", "list"], ["db", "upgrade"]):
        done = _featurestore(*command, env=env)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr
    assert _featurestore("db", "current", env=env).stdout == (
        "0099 (unknown to this version, which knows up to 0002)\n")
    assert _featurestore("db", "history", env=env).stdout == (
        "0001  Initial schema: API keys, dataset jobs, monitors.\n"
        "0002  Alert pages and flap damping: three columns on monitor_alerts.  (head)\n")
    assert _state(database).current == "0099"


def test_the_api_refuses_to_start_on_a_database_ahead_of_the_code(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ahead.db'}"
    engine = sa.create_engine(url, poolclass=NullPool)
    migrations.prepare(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0099'")
    env = {"PATH": "/usr/bin:/bin", "FEATURESTORE_DATA_DIR": str(tmp_path / "data"),
           "FEATURESTORE_DATABASE_URL": url, "FEATURESTORE_CONFIG": str(tmp_path / "none.yaml")}
    # uvicorn reports the failed startup and exits; the error names what is wrong.
    served = _featurestore("serve", "--workers", "1", "--port", str(free_port()), env=env)
    assert served.returncode != 0
    assert (f"the database {url} is at schema revision 0099, which this version of featurestore "
            "does not know") in served.stderr
    assert not (tmp_path / "data" / "registry.db").exists()  # refused before the registry


def test_a_new_revision_takes_a_database_to_the_declared_tables(monkeypatch, tmp_path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(migrations.DIRECTORY, directory, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrations, "DIRECTORY", directory)
    migrations.scripts.cache_clear()
    declared = sa.MetaData()  # a copy: the declarations other tests import stay as they are
    for table in _declared_tables().sorted_tables:
        table.to_metadata(declared)
    declared.tables["monitor_alerts"].append_column(sa.Column("group_key", sa.String(600)))
    sa.Table("monitor_alert_groups", declared, sa.Column("group_key", sa.String(600), primary_key=True))
    try:
        written = migrations.new_revision("alert groups", declared)
        assert written == directory / "versions" / "0003_alert_groups.py"
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'at-head.db'}", poolclass=NullPool)
        migrations.prepare(engine)  # an empty database: created at the new head
        with engine.connect() as connection:
            assert migrations.read_state(connection).current == "0003"
            context = MigrationContext.configure(
                connection, opts={"version_table": migrations.VERSION_TABLE})
            assert compare_metadata(context, declared) == []
    finally:
        migrations.scripts.cache_clear()


@pytest.mark.parametrize("database", BACKENDS, indirect=True)
def test_a_process_waits_for_a_held_schema_lock_bounded(database, caplog) -> None:
    from featurestore.migrations.lock import SchemaLockTimeout, schema_lock

    caplog.set_level(logging.INFO, logger="featurestore.migrations")
    where = database.url.render_as_string(hide_password=True)
    expected = re.escape(f"waited 1 s for the {migrations.LOCK_NAME} lock of {where}: another "
                         "process still holds it")
    with (
        schema_lock(database.url, migrations.LOCK_NAME),  # held, as by a migrating process
        pytest.raises(SchemaLockTimeout, match=expected),
        schema_lock(database.url, migrations.LOCK_NAME, wait_seconds=1.0),
    ):
        pass
    assert f"waiting up to 1 s for another process holding the {migrations.LOCK_NAME} lock" in (
        caplog.text)
    with schema_lock(database.url, migrations.LOCK_NAME, wait_seconds=1.0):
        pass  # released: taken at once
