"""`featurestore stream run` whose first checkpoint blocks after its offline files, before its
partition log: a test SIGKILLs it there. Prints "blocked" on stdout once the writer is held.

    python -m tests.streaming.blocked_checkpoint      # settings from the environment
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

    def hold() -> None:
        if not held.is_set():
            held.set()
            print("blocked", flush=True)
            threading.Event().wait()  # until the test kills the process

    worker.checkpoints.before_log = hold
    worker.run()


if __name__ == "__main__":
    sys.exit(main())
