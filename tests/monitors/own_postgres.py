"""A PostgreSQL server of the test's own (initdb + pg_ctl in a temp dir, on a free port), to take
away and bring back: never the shared one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import free_port

_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


class OwnPostgres:
    def __init__(self) -> None:
        if not _BIN:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.port = free_port()
        # Not under pytest's tmp dir: the server may have to run as user postgres (it refuses
        # root), who must own its directory.
        self.directory = Path(tempfile.mkdtemp(prefix="own-postgres-"))
        self._owner = "postgres" if os.geteuid() == 0 else None
        if self._owner:
            shutil.chown(self.directory, self._owner)
        self._run("initdb", "-D", str(self.directory / "data"), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(_BIN[-1] / program), *args]
        if self._owner:
            command = ["runuser", "-u", self._owner, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-o", options,
                  "-l", str(self.directory / "log"), "-w", "start")

    def stop(self) -> None:
        """Gone at once, as a crashed or unreachable server is (connections cut)."""
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)
