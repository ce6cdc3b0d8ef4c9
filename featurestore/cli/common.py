"""What every command module shares: the console and the decorator that turns errors users can
act on into one line and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import pydantic
import redis
import sqlalchemy.exc
import typer
from rich.console import Console

from featurestore.errors import FeatureStoreError

# soft_wrap: an error stays one line, whole, for people and log collectors alike.
console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., object])


def clear_errors(command: F) -> F:
    """Errors users can act on become one line naming the problem, and exit code 2."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except FeatureStoreError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
        except pydantic.ValidationError as exc:
            console.print(f"[red]error:[/red] invalid settings: {exc}", highlight=False)
        except redis.ConnectionError as exc:
            console.print(f"[red]error:[/red] cannot reach Redis: {exc}", highlight=False)
        except sqlalchemy.exc.OperationalError as exc:
            console.print(
                f"[red]error:[/red] cannot reach the registry database: {exc.orig}",
                highlight=False,
            )
        raise typer.Exit(code=2)

    return run  # type: ignore[return-value]
