"""Benchmark: our drift check against Evidently's `Report([DataDriftPreset()])`, in one run.

Both check the same reference and current windows, read from the same Parquet files, each in a
child process of its own, so its peak RSS is its own (and includes the data and the imports):
ours checks the files a column at a time (`monitors.drift_parquet.check_drift_parquet`, which
never holds a whole table), Evidently reads them as pandas DataFrames, then hands the Parquet
reader's scratch memory back to the OS (Arrow's pool would keep it). Timed: Evidently's check
from the DataFrames in memory to the per-column verdicts; ours from the files to the verdicts,
its reading included.

Cases (written to bench/results/drift.json), each for time (s) and peak RSS (MiB), at each
size of --rows (default 100k, 1M and 4M rows per window: the growth curve):
  1. numeric: the rows of each window x --columns float features of several distributions, a
     few shifted (mean, variance, scale), a few barely, some with nulls;
  2. categorical: the same rows x 10 categorical columns (strings of 3-300 values, booleans,
     small integer codes), a few shifted (frequencies, a new value, a null burst).
Targets: ours >= 30x faster, at most half of Evidently's peak RSS. Evidently runs up to
--evidently-max-rows (default 1M): at 1M numeric rows it peaks at ~2 GiB and takes ~155 s,
at 4M it would need ~8 GiB and ~10 min of a machine shared by the other benchmarks; beyond
that size ours runs alone (anchor null).

The run fails, with exit status 1, unless both pick the same method for every column and give
the same verdict on every column whose Evidently statistic lies >= 5% away from its threshold.
Evidently's verdicts are its own: its report runs with `include_tests=True`, whose per-column
drift tests cost nothing measurable beside the drift metrics.

    .venv/bin/python bench/drift.py                  # full run: Evidently ~155 s at 1M numeric
    .venv/bin/python bench/drift.py --rows 100000    # quick trial
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import BenchmarkError, own_peak_rss_mib, print_cases, run_main, write_results
from common import run_child as common_run_child
from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "drift.json"

SEED = 20260505
CATEGORICAL_COLUMNS = 10
MARGIN = 0.05  # verdicts are compared where Evidently's statistic is this far from its threshold
TIME_TARGET = 30.0  # Evidently seconds / ours
RSS_TARGET = 2.0  # Evidently peak RSS / ours
ANCHOR = "Evidently 0.7.23 Report([DataDriftPreset()]).run(current, reference)"
CASES = ("numeric", "categorical")
# Evidently's side reads the local files without pre-buffering whole row groups (an option for
# high-latency object stores), which would hold the compressed file in memory as well; ours
# reads them so too.
READ_OPTIONS: dict[str, Any] = {"pre_buffer": False}

console = Console(width=None if sys.stdout.isatty() else 150)



# ---------------------------------------------------------------------------------------------
# Data: seeded windows, written once as Parquet and read by both children
# ---------------------------------------------------------------------------------------------


def numeric_column(index: int, rows: int, later: bool, rng: np.random.Generator) -> pa.Array:
    """Feature `index` of a window. Its role (by index mod 10) decides how `later` differs."""
    role = index % 10
    if role == 0:  # mean shift of a third of a std
        values = rng.normal(100.0 + (5.0 if later else 0.0), 15.0, rows)
    elif role == 1:  # variance up by half
        values = rng.normal(0.0, 1.5 if later else 1.0, rows)
    elif role == 2:  # amounts: every value 40% larger
        values = rng.lognormal(3.0, 1.0, rows) * (1.4 if later else 1.0)
    elif role == 3:  # a barely-moved mean: no drift
        values = rng.normal(0.02 if later else 0.0, 1.0, rows)
    elif role == 4:  # counts with 1% nulls
        values = rng.poisson(12.0, rows).astype(np.float64)
        return pa.array(values, mask=rng.random(rows) < 0.01)
    elif role == 5:
        values = rng.exponential(3.0, rows)
    elif role == 6:
        values = rng.uniform(-1.0, 1.0, rows)
    else:
        values = rng.normal(10.0 * role, 1.0 + role, rows)
    return pa.array(values)


def categorical_column(index: int, rows: int, later: bool, rng: np.random.Generator) -> pa.Array:
    role = index % 10
    if role == 0:  # merchant categories: 300 values, Zipf-like shares
        shares = 1.0 / np.arange(1, 301)
        codes = rng.choice(300, rows, p=shares / shares.sum())
        return pa.array(np.char.add("mcc_", codes.astype(str)))
    if role == 1:  # a new country appears in the current window
        countries = ["DE", "FR", "NL", "PL", "ES"] + (["XX"] if later else [])
        return pa.array(rng.choice(countries, rows))
    if role == 2:  # channel shares move
        shares = [0.3, 0.5, 0.2] if later else [0.5, 0.3, 0.2]
        return pa.array(rng.choice(["web", "app", "pos"], rows, p=shares))
    if role == 3:  # booleans
        return pa.array(rng.random(rows) < 0.3)
    if role == 4:  # a small integer code, categorical to Evidently (<= 10 distinct)
        return pa.array(rng.integers(0, 8, rows))
    if role == 5:  # a null burst: a third of the current rows lose the value
        values = rng.choice(["gold", "silver", "bronze"], rows)
        return pa.array(values, mask=(rng.random(rows) < 0.33) if later else None)
    values = rng.choice([f"v{role}_{i}" for i in range(3 + 4 * role)], rows)
    return pa.array(values)


def write_windows(root: Path, case: str, rows: int, columns: int) -> None:
    make = numeric_column if case == "numeric" else categorical_column
    prefix = "f" if case == "numeric" else "c"
    for side, later in (("reference", False), ("current", True)):
        rng = np.random.default_rng([SEED, CASES.index(case), int(later)])
        table = pa.table({f"{prefix}{i:02d}": make(i, rows, later, rng) for i in range(columns)})
        pq.write_table(table, root / f"{case}-{side}.parquet")


# ---------------------------------------------------------------------------------------------
# Children: one check each, reporting time, peak RSS and per-column verdicts
# ---------------------------------------------------------------------------------------------


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child_ours(root: Path, case: str) -> dict[str, Any]:
    from monitors.drift_parquet import check_drift_parquet

    rss_before = current_rss_mib()
    started = time.perf_counter()
    result = check_drift_parquet(
        root / f"{case}-reference.parquet", root / f"{case}-current.parquet"
    )
    seconds = time.perf_counter() - started
    columns = {
        c.column: {
            "method": c.method,
            "statistic": c.statistic,
            "threshold": c.threshold,
            "drifted": c.drifted,
        }
        for c in result.columns
    }
    return {
        "seconds": seconds,
        "rss_before_mib": rss_before,
        "columns": columns,
        "drifted_columns": result.drifted_columns,
    }


def child_evidently(root: Path, case: str) -> dict[str, Any]:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from monitors.stattests import METHODS

    by_display_name = {method.display_name: name for name, method in METHODS.items()}
    reference = pd.read_parquet(root / f"{case}-reference.parquet", **READ_OPTIONS)
    current = pd.read_parquet(root / f"{case}-current.parquet", **READ_OPTIONS)
    pa.default_memory_pool().release_unused()  # the reader's scratch, as on our side
    rss_before = current_rss_mib()
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
    seconds = time.perf_counter() - started
    report = snapshot.dict()
    values = {metric["id"]: metric["value"] for metric in report["metrics"]}
    [count] = [m["value"] for m in report["metrics"] if "DriftedColumnsCount" in m["metric_name"]]
    columns = {}
    for test in report["tests"]:
        if test["id"] == "drift":
            params = test["metric_config"]["params"]
            columns[params["column"]] = {
                "method": by_display_name[params["method"]],
                "statistic": float(values[test["metric_config"]["metric_id"]]),
                "threshold": params["threshold"],
                "drifted": test["status"] == "FAIL",
            }
    return {
        "seconds": seconds,
        "rss_before_mib": rss_before,
        "columns": columns,
        "drifted_columns": int(count["count"]),
    }


def run_child(role: str, root: Path, case: str) -> dict[str, Any]:
    with console.status(f"  {role}: checking the {case} windows"):
        return common_run_child(
            __file__, role, root / f"result-{role}-{case}.json",
            ["--case", case, "--workdir", str(root)], label=f"{role} ({case})",
        )


def child_main(args: argparse.Namespace) -> None:
    check = child_ours if args.child == "ours" else child_evidently
    result = check(Path(args.workdir), args.case)
    result["peak_rss_mib"] = own_peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Correctness: same methods, same verdicts off the margin
# ---------------------------------------------------------------------------------------------


def compare_verdicts(case: str, ours: dict, theirs: dict) -> None:
    if set(ours["columns"]) != set(theirs["columns"]):
        raise BenchmarkError(
            f"{case}: ours checked {sorted(ours['columns'])}, Evidently {sorted(theirs['columns'])}"
        )
    problems, near = [], []
    for name, their in theirs["columns"].items():
        our = ours["columns"][name]
        if our["method"] != their["method"] or our["threshold"] != their["threshold"]:
            problems.append(
                f"{name}: ours {our['method']} at {our['threshold']}, Evidently "
                f"{their['method']} at {their['threshold']}"
            )
        elif abs(their["statistic"] - their["threshold"]) < MARGIN * their["threshold"]:
            near.append(name)
        elif our["drifted"] != their["drifted"]:
            problems.append(
                f"{name} ({their['method']}): ours {our['statistic']:.6g} drifted={our['drifted']}, "
                f"Evidently {their['statistic']:.6g} drifted={their['drifted']}"
            )
    if problems:
        listed = "\n  ".join(problems)
        raise BenchmarkError(f"{case}: verdicts differ from Evidently's:\n  {listed}")
    if not near and ours["drifted_columns"] != theirs["drifted_columns"]:
        raise BenchmarkError(
            f"{case}: ours counts {ours['drifted_columns']} drifted columns, Evidently "
            f"{theirs['drifted_columns']}"
        )
    largest = max(
        abs(ours["columns"][n]["statistic"] - their["statistic"])
        for n, their in theirs["columns"].items()
    )
    console.print(
        f"  [green]ok[/] same method for all {len(theirs['columns'])} columns, same verdict for "
        f"{len(theirs['columns']) - len(near)} ({len(near)} within {MARGIN:.0%} of the threshold "
        f"not compared{': ' + ', '.join(near) if near else ''}); "
        f"{theirs['drifted_columns']} drifted; largest statistic difference {largest:.2g}"
    )


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def rows_label(rows: int) -> str:
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return f"{rows:,}"


def build_cases(
    label: str, ours: dict, theirs: dict | None
) -> tuple[list[dict], list[bool | None]]:
    if theirs is None:
        cases = [
            {"case": f"{label} (ours only)", "metric": metric, "unit": unit,
             "ours": round(ours[key], digits), "anchor": None, "anchor_name": None,
             "ratio": None, "target": "-"}
            for metric, unit, key, digits in (
                ("time", "s", "seconds", 3), ("peak RSS", "MiB", "peak_rss_mib", 1)
            )
        ]  # fmt: skip
        return cases, [None, None]
    time_ratio = ratio(theirs["seconds"], ours["seconds"])
    rss_ratio = ratio(theirs["peak_rss_mib"], ours["peak_rss_mib"])
    cases = [
        {
            "case": label,
            "metric": "time",
            "unit": "s",
            "ours": round(ours["seconds"], 3),
            "anchor": round(theirs["seconds"], 2),
            "anchor_name": ANCHOR,
            "ratio": time_ratio,
            "target": f">= {TIME_TARGET:g}x",
        },
        {
            "case": label,
            "metric": "peak RSS",
            "unit": "MiB",
            "ours": round(ours["peak_rss_mib"], 1),
            "anchor": round(theirs["peak_rss_mib"], 1),
            "anchor_name": ANCHOR,
            "ratio": rss_ratio,
            "target": f">= {RSS_TARGET:g}x (<= {1 / RSS_TARGET:g}x Evidently's)",
        },
    ]
    verdicts: list[bool | None] = [time_ratio is not None and time_ratio >= TIME_TARGET]
    verdicts.append(rss_ratio is not None and rss_ratio >= RSS_TARGET)
    return cases, verdicts


def describe(who: str, result: dict) -> str:
    return (
        f"  {who}: {result['seconds']:.2f} s; peak RSS {result['peak_rss_mib']:,.0f} MiB "
        f"({result['rss_before_mib']:,.0f} MiB before the timed check)"
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run_case(
    args: argparse.Namespace, root: Path, rows: int, case: str
) -> tuple[list[dict], list[bool | None]]:
    columns = args.columns if case == "numeric" else CATEGORICAL_COLUMNS
    label = f"drift check {rows_label(rows)} rows x {columns} {case} columns"
    console.rule(f"[bold]{label} (reference and current alike)")
    started = time.perf_counter()
    write_windows(root, case, rows, columns)
    console.print(f"  generated both windows ({time.perf_counter() - started:.1f} s)")
    ours = run_child("ours", root, case)
    console.print(describe("ours     ", ours))
    theirs = None
    if rows <= args.evidently_max_rows:
        theirs = run_child("evidently", root, case)
        console.print(describe("evidently", theirs))
        compare_verdicts(case, ours, theirs)
    else:
        console.print(f"  evidently: not run above {args.evidently_max_rows:,} rows")
    return build_cases(label, ours, theirs)


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    cases: list[dict] = []
    verdicts: list[bool | None] = []
    try:
        for rows in args.rows:
            for case in CASES:
                more_cases, more_verdicts = run_case(args, root, rows, case)
                cases += more_cases
                verdicts += more_verdicts
    finally:
        shutil.rmtree(root, ignore_errors=True)
    console.rule()
    print_cases(console, "drift: ours vs Evidently's Report([DataDriftPreset()])", cases, verdicts)
    write_results(args.output, "drift", cases)
    console.print(f"wrote {args.output} in {time.perf_counter() - began:.0f} s total")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000],
        help="rows of each window, one case each",
    )
    parser.add_argument(
        "--evidently-max-rows", type=int, default=1_000_000,
        help="the largest windows Evidently checks (beyond: ours alone)",
    )
    parser.add_argument("--columns", type=int, default=20, help="numeric features")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    # Internal: one check in a child process.
    parser.add_argument("--child", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.rows) <= 1000 or args.columns <= 0:
        parser.error("--rows must be above 1000 (the large-sample tests) and --columns positive")
    return args


if __name__ == "__main__":
    run_main(parse_args, child_main, run, lambda: console)
