"""Benchmark: a monitor window of captured rows x 20 numeric features, checked end to end, at
three window sizes (--rows, default 100k, 300k and 1M rows: the growth curve).

Ours: `monitors.runs.check_window` on a window of --rows rows against a baseline built from a
training export (a sample of --reference-rows rows): the per-feature tests on every row, the MMD
test (2,000 + 2,000 rows, 200 permutations), Evidently's report on 10,000 rows per side (the
default `report_max_rows`; HTML + JSON), and the run, per-feature rows and alerts stored in SQL
(SQLite), in a process that has imported Evidently already (a running worker pays that ~7 s once). Anchor: Evidently's
`Report([DataDriftPreset()])` on the same reference sample and the whole window. Each runs in a
child process of its own; timed from the data in memory to the stored run (ours) or the report.
Target (issue 5): the window is checked in seconds (<= 10 s); the run fails, with exit status 1,
unless ours and Evidently find the same drifted features at every size.

    .venv/bin/python bench/monitor.py                 # full run (Evidently ~70 s at 1M)
    .venv/bin/python bench/monitor.py --rows 100000   # quick trial
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import BenchmarkError, own_peak_rss_mib, print_cases, run_main, write_results
from common import run_child as common_run_child
from drift import current_rss_mib, numeric_column
from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "monitor.json"
SEED = 20261123
VIEW = "bench"
TIME_TARGET = 10.0  # seconds for our whole window check
ANCHOR = "Evidently 0.7.23 Report([DataDriftPreset()]).run(window, baseline sample)"
console = Console(width=None if sys.stdout.isatty() else 150)


def write_data(root: Path, rows: int, reference_rows: int, columns: int) -> None:
    """The training export (reference) and the window (current, some features shifted)."""
    from featurestore.export import EXPORT_METADATA_KEY

    for name, count, later in (("export", reference_rows, False), ("window", rows, True)):
        rng = np.random.default_rng([SEED, int(later)])
        table = pa.table({f"f{i:02d}": numeric_column(i, count, later, rng)
                          for i in range(columns)})
        if name == "export":
            description = {
                "export_id": f"exp-{uuid.uuid4().hex[:12]}", "feature_service": None,
                "feature_references": [f"{VIEW}:{c}" for c in table.column_names],
                "features": table.column_names, "entity_columns": [],
                "timestamp_field": "event_timestamp", "rows": count,
                "created_at": datetime.now(UTC).isoformat(),
            }
            table = table.replace_schema_metadata({EXPORT_METADATA_KEY: json.dumps(description)})
        pq.write_table(table, root / f"{name}.parquet")


def child_ours(root: Path, reference_rows: int) -> dict[str, Any]:
    from featurestore.db import engine
    from featurestore.settings import Settings
    from monitors.baseline import build_baseline
    from monitors.capture import Window
    from monitors.config import parse_monitors
    from monitors.runs import check_window

    settings = Settings(data_dir=root / "data", database_url=f"sqlite:///{root}/monitors.db")
    baseline = build_baseline(settings, root / "export.parquet", feature_view=VIEW,
                              sample_rows=reference_rows)
    config = parse_monitors(f"""
monitors:
  bench:
    feature_view: {VIEW}
    window: {{rows: 1000}}
    drift: {{multivariate: {{permutations: 200, max_rows: 2000}}}}
    rules: [{{kind: feature_drift}}, {{kind: drift_share, at_least: 0.5}}, {{kind: multivariate}}]
""")
    table = pq.read_table(root / "window.parquet")
    now = datetime.now(UTC)
    window = Window(start=now - timedelta(hours=1), end=now, table=table, newest_events={},
                    cursor={0: 1})
    sql = engine(settings)
    # A running monitor worker imported Evidently (~7 s) at its first window: time a later one.
    import evidently.presets  # noqa: F401
    pa.default_memory_pool().release_unused()
    rss_before = current_rss_mib()
    started = time.perf_counter()
    summary = check_window(sql, config, "bench", baseline, window,
                           reports_dir=settings.reports_dir, public_url=settings.public_url)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_before_mib": rss_before,
            "drifted": sorted(f.split(":")[1] for f in summary.drifted),
            "report": summary.report_html, "rows": summary.current_rows}


def child_evidently(root: Path, reference_rows: int) -> dict[str, Any]:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    export = pq.read_table(root / "export.parquet")
    picked = np.sort(np.random.default_rng(0).choice(export.num_rows, min(
        reference_rows, export.num_rows), replace=False))
    reference = export.take(pa.array(picked)).to_pandas()
    current = pd.read_parquet(root / "window.parquet")
    rss_before = current_rss_mib()
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
    seconds = time.perf_counter() - started
    drifted = sorted(
        test["metric_config"]["params"]["column"] for test in snapshot.dict()["tests"]
        if test["id"] == "drift" and test["status"] == "FAIL"
    )
    return {"seconds": seconds, "rss_before_mib": rss_before, "drifted": drifted}


def run_child(role: str, root: Path, reference_rows: int) -> dict[str, Any]:
    with console.status(f"  {role}: checking the window"):
        return common_run_child(
            __file__, role, root / f"result-{role}.json",
            ["--workdir", str(root), "--reference-rows", str(reference_rows)],
        )


def child_main(args: argparse.Namespace) -> None:
    check = child_ours if args.child == "ours" else child_evidently
    result = check(Path(args.workdir), args.reference_rows)
    result["peak_rss_mib"] = own_peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


def run(args: argparse.Namespace) -> int:
    cases: list[dict] = []
    verdicts: list[bool | None] = []
    for rows in args.rows:
        more_cases, more_verdicts = run_size(args, rows)
        cases += more_cases
        verdicts += more_verdicts
    print_cases(console, "monitor window: ours vs Evidently", cases, verdicts)
    write_results(args.output, "monitor", cases)
    console.print(f"wrote {args.output}")
    return 0


def run_size(args: argparse.Namespace, rows: int) -> tuple[list[dict], list[bool | None]]:
    root = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    try:
        label = (f"monitor window {rows:,} rows x {args.columns} numeric features vs a "
                 f"{args.reference_rows:,}-row baseline")
        console.rule(f"[bold]{label}")
        write_data(root, rows, args.reference_rows, args.columns)
        ours = run_child("ours", root, args.reference_rows)
        console.print(f"  ours: {ours['seconds']:.2f} s, peak {ours['peak_rss_mib']:,.0f} MiB, "
                      f"drifted {ours['drifted']}, report {ours['report']}")
        theirs = run_child("evidently", root, args.reference_rows)
        console.print(f"  evidently: {theirs['seconds']:.2f} s, peak "
                      f"{theirs['peak_rss_mib']:,.0f} MiB, drifted {theirs['drifted']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if ours["drifted"] != theirs["drifted"]:
        raise BenchmarkError(f"drifted features differ: ours {ours['drifted']}, "
                             f"Evidently {theirs['drifted']}")
    cases = [
        {"case": label + " (tests, MMD, Evidently report, SQL)", "metric": "time", "unit": "s",
         "ours": round(ours["seconds"], 3), "anchor": round(theirs["seconds"], 2),
         "anchor_name": ANCHOR, "ratio": round(theirs["seconds"] / ours["seconds"], 2),
         "target": f"<= {TIME_TARGET:g} s"},
        {"case": label, "metric": "peak RSS", "unit": "MiB",
         "ours": round(ours["peak_rss_mib"], 1), "anchor": round(theirs["peak_rss_mib"], 1),
         "anchor_name": ANCHOR, "ratio": round(theirs["peak_rss_mib"] / ours["peak_rss_mib"], 2),
         "target": "-"},
    ]
    return cases, [ours["seconds"] <= TIME_TARGET, None]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000],
        help="rows of the window, one case each",
    )
    parser.add_argument("--reference-rows", type=int, default=100_000,
                        help="rows of the baseline sample")
    parser.add_argument("--columns", type=int, default=20, help="numeric features")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument("--child", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    run_main(parse_args, child_main, run, lambda: console)
