"""`featurestore stream run` whose first checkpoint blocks after its offline files, before its
partition log. Prints "blocked" on stdout once the writer is held; then it waits to be killed
(a test SIGKILLs it there) or, with --release-on-stdin, until a line arrives on stdin, and goes
on as a normal worker.

    python -m tests.streaming.blocked_checkpoint [--release-on-stdin]   # settings from the environment
"""

from __future__ import annotations

import sys
import threading

from featurestore.feast_config import feature_store
from featurestore.settings import get_settings
from streaming.worker import StreamWorker


def main() -> None:
    settings = get_settings()
    worker = StreamWorker(settings, feature_store(settings))
    held = threading.Event()
    release_on_stdin = "--release-on-stdin" in sys.argv[1:]

    def hold() -> None:
        if not held.is_set():
            held.set()
            print("blocked", flush=True)
            if release_on_stdin:
                sys.stdin.readline()
            else:
                threading.Event().wait()  # until the test kills the process

    worker.checkpoints.before_log = hold
    worker.run()


if __name__ == "__main__":
    sys.exit(main())
