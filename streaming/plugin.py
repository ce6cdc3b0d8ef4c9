"""Streaming's plugin (entry point `featurestore.plugins: streaming`): the `stream` commands."""

from streaming.cli import add_commands

__all__ = ["add_commands"]
