"""What the benchmarks share: their failure, their entry point, their child processes, their
results table and file.

The JSON format of the results is in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class BenchmarkError(RuntimeError):
    """The benchmark's own correctness check failed: the figures would mean nothing."""


def run_main(
    parse_args: Callable[[], argparse.Namespace],
    child_main: Callable[[argparse.Namespace], None],
    run: Callable[[argparse.Namespace], int],
    console: Callable[[], Console],
) -> None:
    """A benchmark script's entry point: one child step (`--child`), or the whole run, whose
    failed correctness check exits 1 with the reason."""
    # The children inherit this: library deprecation warnings would bury their output.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    args = parse_args()
    if args.child:
        child_main(args)
        sys.exit(0)
    try:
        sys.exit(run(args))
    except BenchmarkError as exc:
        console().print(f"[bold red]benchmark failed:[/] {exc}")
        sys.exit(1)


def run_child(
    script: str, role: str, result: Path, arguments: list[str], label: str | None = None
) -> dict:
    """`script --child ROLE --result RESULT ARGUMENTS...`: one measured step in a process of its
    own (so its peak RSS is its own); returns the JSON it wrote to `result`."""
    command = [
        sys.executable, str(Path(script).resolve()), "--child", role, "--result", str(result),
        *arguments,
    ]  # fmt: skip
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise BenchmarkError(
            f"the {label or role} child exited with status {completed.returncode}"
        )
    return json.loads(result.read_text())


def own_peak_rss_mib() -> float:
    """This process's peak RSS since it started its program (`VmHWM`, Linux).

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: a child forked by the benchmark keeps, across its
    exec, the RSS its parent had when forking (Linux folds the old address space's high-water
    mark into the process's), so a child would report at least what the parent held, e.g. the
    windows the drift benchmark had just generated."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise BenchmarkError("no VmHWM in /proc/self/status: peak RSS is measured on Linux only")


def write_results(path: Path, benchmark: str, cases: list[dict]) -> None:
    """`bench/results/NAME.json` (format in bench/README.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, "cases": cases}, indent=2) + "\n")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if unit == "rows/s" else f"{value:,.1f} {unit}"


def print_cases(
    console: Console, title: str, cases: list[dict], verdicts: list[bool | None]
) -> None:
    """One row per case: ours, the anchor, the ratio, the target and whether it was met."""
    table = Table(title=title)
    for column in ("case", "metric", "ours", "anchor", "ratio", "target", ""):
        table.add_column(
            column, justify="left" if column in ("case", "metric", "target") else "right"
        )
    for case, verdict in zip(cases, verdicts):
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[verdict]
        table.add_row(
            case["case"],
            case["metric"],
            _number(case["ours"], case["unit"]),
            _number(case["anchor"], case["unit"]),
            "-" if case["ratio"] is None else f"{case['ratio']:.2f}x",
            case["target"],
            mark,
        )
    console.print(table)


@contextmanager
def redis_cluster(directory: Path) -> Iterator[Any]:
    """A 3-master Redis Cluster on free ports for the run (the tests' own starter,
    tests/servers.py `RedisCluster`: no replicas, no persistence), stopped at the end."""
    import shutil

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise BenchmarkError("the Redis Cluster case needs redis-server and redis-cli on PATH")
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.append(root)  # the repo's tests package, beside the bench scripts
    from tests.servers import RedisCluster

    directory.mkdir(parents=True, exist_ok=True)
    cluster = RedisCluster(directory)
    try:
        yield cluster
    finally:
        cluster.stop()
