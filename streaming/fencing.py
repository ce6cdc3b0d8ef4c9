"""Zombie fencing: a worker whose partition moved to another worker writes no checkpoint of it.

A worker can go on believing it owns a partition after the group gave it to another one (a
process paused past its session timeout, a network split from the broker): both then process
the partition, and both would write its offline files and partition log. To stop the old one,
every assignment of a partition takes the next *epoch* of that partition: a file
`epoch-<n>` created exclusively in the partition log's directory, so two owners can never take
the same number, and a later owner always holds a larger one. Every checkpoint checks, before
its offline files and again before its partition log, that its epoch is still the newest;
otherwise it is fenced: it removes what it wrote and writes no log.

The epochs live beside the partition log, on the shared offline store, and not in Kafka's group
generation: a generation starts again at 1 when the broker forgets the group (an empty group's
metadata expires, a broker without durable storage restarts), which would fence the rightful
owner behind a stale, larger number; the shared directory's own count only ever grows.

Exclusive creation (`O_CREAT | O_EXCL`) is atomic on local file systems and NFS v3+; an object
store without it (S3) needs its conditional put instead (docs/scale-out.md).
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "epoch-"


class Fenced(Exception):
    """Another worker took the partition (or wrote its log) since this one was assigned it."""


def newest(directory: Path) -> int:
    """The newest epoch taken in `directory` (0 when none)."""
    if not directory.is_dir():
        return 0
    return max((int(p.name.removeprefix(PREFIX)) for p in directory.glob(f"{PREFIX}*")), default=0)


def take(directory: Path, owner: str) -> int:
    """Take the next epoch of the partition whose log is in `directory`; `owner` (who took it)
    is kept in the file for whoever investigates. Older epochs' files are removed.

    An epoch is taken when its file was created and is then still the newest: a number whose
    file a newer owner had already removed can be created again, but is never the newest, as
    the newest file is never removed (only a newer owner removes, and only older files). So the
    epochs taken only ever grow, and no two owners take the same one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        epoch = newest(directory) + 1
        path = directory / f"{PREFIX}{epoch:020d}"
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue  # another owner took this one at the same moment
        with os.fdopen(descriptor, "w") as file:
            file.write(owner)
        if newest(directory) != epoch:
            path.unlink(missing_ok=True)  # a newer owner came between: try again
            continue
        for older in directory.glob(f"{PREFIX}*"):
            if int(older.name.removeprefix(PREFIX)) < epoch:
                older.unlink(missing_ok=True)
        return epoch


def check(directory: Path, epoch: int) -> None:
    """Raise Fenced unless `epoch` is still the newest taken in `directory`."""
    current = newest(directory)
    if current != epoch:
        raise Fenced(
            f"{directory}: this worker's epoch is {epoch}, the partition's is now {current}: "
            "another worker owns it"
        )
