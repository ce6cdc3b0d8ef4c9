"""Alembic's entry point, run by `featurestore.migrations` on the connection it hands over (no
alembic.ini: the configuration is built in code, so an installed wheel migrates as a checkout does)."""

from alembic import context

from featurestore.migrations import VERSION_TABLE

context.configure(
    connection=context.config.attributes["connection"],
    # Given only when a new revision is generated: the tables the code declares.
    target_metadata=context.config.attributes.get("target_metadata"),
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it: batch operations make one revision run on both.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
