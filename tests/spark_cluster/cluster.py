"""A real Spark standalone cluster on this machine: one master and one worker, each its own JVM,
started from pyspark's own `bin/spark-class`, on free ports, logs in a directory of the caller's."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyspark

from tests.servers import free_port, wait_for

SPARK_HOME = Path(pyspark.__file__).parent
WORKER_CORES = 2
WORKER_MEMORY = "1g"


def _cluster_env(directory: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(directory),
        # The worker's executors' scratch and logs, not pyspark's package directory.
        "SPARK_WORKER_DIR": str(directory / "work"),
        "SPARK_DAEMON_MEMORY": "256m",
        # No REST submission server: it would take the fixed port 6066, which another
        # cluster on this machine may hold.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }


def _alive_workers(ui_port: int) -> int:
    """How many workers the master's JSON status page shows ALIVE (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as answer:
            status = json.load(answer)
    except (OSError, urllib.error.URLError, ValueError):
        return 0
    return sum(1 for worker in status.get("workers", []) if worker.get("state") == "ALIVE")


@contextmanager
def _daemon(name: str, args: list[str], directory: Path) -> Iterator[subprocess.Popen]:
    with (directory / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            env=_cluster_env(directory), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def standalone_cluster(directory: Path) -> Iterator[str]:
    """The master URL `spark://127.0.0.1:P` once its worker is ALIVE; both stopped on exit."""
    (directory / "work").mkdir(parents=True, exist_ok=True)
    port, ui_port, worker_ui_port = free_port(), free_port(), free_port()
    with ExitStack() as stack:
        master = stack.enter_context(_daemon("master", [
            "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port),
        ], directory))  # fmt: skip
        url = f"spark://127.0.0.1:{port}"
        worker = stack.enter_context(_daemon("worker", [
            "org.apache.spark.deploy.worker.Worker", url,
            "--cores", str(WORKER_CORES), "--memory", WORKER_MEMORY,
            "--webui-port", str(worker_ui_port), "--work-dir", str(directory / "work"),
        ], directory))  # fmt: skip

        def ready() -> bool:
            for process in (master, worker):
                if process.poll() is not None:
                    raise AssertionError(
                        f"a Spark daemon exited with {process.returncode}; see {directory}/*.log"
                    )
            return _alive_workers(ui_port) >= 1

        # Two JVMs starting: seconds on a quiet machine, minutes on a loaded one.
        wait_for(ready, 300, f"a Spark worker ALIVE at {url} (logs in {directory})")
        yield url
