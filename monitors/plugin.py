"""The monitors' plugin (entry point `featurestore.plugins: monitors`): the `monitors` commands
and the SQL tables of baselines, runs and alerts."""

from monitors.cli import add_commands

__all__ = ["add_commands", "declare_tables"]


def declare_tables() -> None:
    import monitors.store  # noqa: F401  # declares the tables at import
