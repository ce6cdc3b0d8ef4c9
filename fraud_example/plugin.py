"""The fraud example's plugin (entry point `featurestore.plugins: fraud_example`): the `example`
commands."""

from fraud_example.cli import add_commands

__all__ = ["add_commands"]
