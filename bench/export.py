"""Benchmark: our point-in-time export against Feast's `get_historical_features`, in one run.

Both join the same entity table (labelled transactions) with the same feature service,
`fraud_detection_v1` of feature_repo/ (3 feature views + the on-demand ratio), from the same
offline Parquet, which the real pipeline makes: the generator, `apply`, the Spark backfill.
Each export runs in a child process of its own, so its peak RSS is its own.

Feast cannot join 1M entity rows here: its file offline store merges every entity row with
every offline row of its key, then filters by ttl, so a merchant's n transactions cost n x n
merged rows. The generator's merchants are Zipf-popular, and at 10k entity rows the merge is
already ~56M rows and ~20 GiB; 20k rows (~112M) and 200k rows ran out of this machine's 23 GiB.
So Feast runs at --feast-rows (default 10k) and ours at every size of --rows (default 10k,
100k and 1M: the growth curve) and at --feast-rows; the case names say so.

Cases (written to bench/results/export.json):
  1. throughput at --feast-rows entity rows, ours (local engine) vs Feast, rows/s;
  2. throughput of ours at each other size against Feast's rate at --feast-rows;
  3. peak RSS at --feast-rows, ours vs Feast; 4. peak RSS of ours at each other size.

Timed: ours from an Arrow entity table in memory to the Parquet file written (join, on-demand
features, statistics, write), the median of --repeat runs (peak RSS: the largest); Feast, once,
from a pandas entity frame in memory to `get_historical_features(...).to_df()` (no file
written). The run fails, with exit status 1, unless both give identical rows: same entity rows,
every feature value equal.

Feast keeps one row per (join keys, event_timestamp), so the entity table leaves out the split
payments (two rows of a card or a merchant at the same microsecond) that it would collapse.

    .venv/bin/python bench/export.py                          # full run: ~6.5 min, ~21 GiB RAM
    .venv/bin/python bench/export.py --rows 2000 20000 100000 --feast-rows 2000 --repeat 1  # trial
    .venv/bin/python bench/export.py --workdir /tmp/bx        # keep (and reuse) the data
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from common import BenchmarkError, own_peak_rss_mib, print_cases, run_main, write_results
from common import run_child as common_run_child

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "export.json"

SERVICE = "fraud_detection_v1"
START = date(2026, 3, 2)
DAYS = 4  # the first day is lookback for the windows of the second; 3 days are backfilled
CARDS_PER_ROW = 1 / 5.8  # ~2 transactions per card and day, over the 3 backfilled days
MERCHANTS = 3_000
SEED = 17
THROUGHPUT_TARGET = 10.0  # ours / Feast, rows/s
ANCHOR = "Feast 0.67 get_historical_features(...).to_df() (file offline store)"



def console():
    from rich.console import Console

    # Piped output (make, CI logs) gets a width that fits the results table.
    return Console(width=None if sys.stdout.isatty() else 150)


# ---------------------------------------------------------------------------------------------
# Data: generated raw events, applied definitions, Spark backfill, the entity tables
# ---------------------------------------------------------------------------------------------


def environment(root: Path) -> dict[str, str]:
    """Settings of the benchmark's own data dir and registry (feature_repo/ reads them too)."""
    return {
        "FEATURESTORE_PROFILE": "embedded",
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root / 'registry.db'}",
        "FEATURESTORE_CONFIG": str(root / "absent-featurestore.yaml"),
        "FEATURESTORE_SPARK_DRIVER_MEMORY": "4g",
    }


def entity_path(root: Path, rows: int) -> Path:
    return root / f"entities-{rows}.parquet"


def child_prepare(root: Path, sizes: list[int]) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from featurestore.batch.backfill import backfill
    from featurestore.batch.spark import spark_session
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.offline import write_atomically
    from featurestore.settings import get_settings
    from fraud_example.generator import GeneratorConfig, generate
    from fraud_example.labels import labeled_transactions

    settings = get_settings()
    began = time.perf_counter()
    cards = int(max(sizes) * CARDS_PER_ROW) + 1
    config = GeneratorConfig(start=START, days=DAYS, cards=cards, merchants=MERCHANTS, seed=SEED)
    generate(config, settings.raw_dir)
    store = apply(settings)
    first, end = START + timedelta(days=1), START + timedelta(days=DAYS)
    backfill(
        lambda: spark_session(settings), select_views(store, None, aggregated_only=True), first, end
    )
    table = labeled_transactions(settings, first, end)
    # Feast collapses entity rows equal in (join keys, event_timestamp): leave those out.
    keep = np.ones(table.num_rows, dtype=bool)
    for key in ("card_id", "merchant_id"):
        pairs = table.select([key, "event_timestamp"]).to_pandas()
        keep &= ~pairs.duplicated(keep=False).to_numpy()
    table = table.filter(pa.array(keep))
    if table.num_rows < max(sizes):
        raise BenchmarkError(f"generated {table.num_rows:,} entity rows, fewer than {max(sizes):,}")
    for rows in sizes:
        write_atomically(table.slice(0, rows), entity_path(root, rows))
    span = pc.min_max(table.slice(0, max(sizes)).column("event_timestamp")).as_py()
    return {
        "cards": cards,
        "entity_rows_available": table.num_rows,
        "first": str(span["min"]),
        "last": str(span["max"]),
        "seconds": time.perf_counter() - began,
    }


# ---------------------------------------------------------------------------------------------
# Children: one export each, reporting time and peak RSS
# ---------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    # A child's ru_maxrss is at least the RSS it was forked at (`own_peak_rss_mib`): at most
    # this process's own peak, so the largest of the two is still the true one.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return max(own_peak_rss_mib(), children)


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child_ours(root: Path, rows: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from featurestore.export import export
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings

    settings = get_settings()
    store = feature_store(settings)
    store.get_feature_service(SERVICE)  # registry read outside the timed part, as Feast's is
    entities = pq.read_table(entity_path(root, rows))
    rss_before = current_rss_mib()
    began = time.perf_counter()
    result = export(
        settings, entities, root / f"ours-{rows}.parquet", feature_service=SERVICE, store=store
    )
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "rows": result.rows, "rss_before_mib": rss_before}


def child_feast(root: Path, rows: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings

    store = feature_store(get_settings())
    service = store.get_feature_service(SERVICE)
    entities = pq.read_table(entity_path(root, rows)).to_pandas()
    rss_before = current_rss_mib()
    began = time.perf_counter()
    frame = store.get_historical_features(entities, features=service).to_df()
    seconds = time.perf_counter() - began
    frame.to_parquet(root / f"feast-{rows}.parquet", index=False)  # for the check, not timed
    return {"seconds": seconds, "rows": len(frame), "rss_before_mib": rss_before}


def run_child(role: str, root: Path, rows: int, sizes: list[int] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    result = common_run_child(
        __file__, role, root / f"result-{role}-{rows}.json",
        ["--workdir", str(root), "--rows", str(rows),
         "--sizes", ",".join(str(s) for s in sizes or [rows])],
    )
    result["wall_seconds"] = time.perf_counter() - started
    return result


def run_ours(root: Path, rows: int, repeat: int) -> dict[str, Any]:
    """The median run of `repeat` (a few seconds each): one run is at the mercy of the machine."""
    runs = sorted(
        (run_child("ours", root, rows) for _ in range(repeat)), key=lambda r: r["seconds"]
    )
    median = dict(runs[len(runs) // 2])
    median["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    return median


def child_main(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    [rows] = args.rows  # a child works at one size
    if args.child == "prepare":
        result = child_prepare(root, [int(s) for s in args.sizes.split(",")])
    elif args.child == "ours":
        result = child_ours(root, rows)
    else:
        result = child_feast(root, rows)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Correctness: identical rows
# ---------------------------------------------------------------------------------------------


def check_identical(root: Path, rows: int) -> int:
    """Ours and Feast's outputs hold the same rows and values; returns the values compared."""
    import pandas as pd
    import pyarrow.parquet as pq

    ours = pq.read_table(root / f"ours-{rows}.parquet").to_pandas()
    feast = pd.read_parquet(root / f"feast-{rows}.parquet")
    if len(ours) != rows or len(feast) != rows:
        raise BenchmarkError(f"rows: ours {len(ours):,}, Feast {len(feast):,}, expected {rows:,}")
    if set(ours.columns) != set(feast.columns):
        raise BenchmarkError(
            f"columns differ: only ours {sorted(set(ours.columns) - set(feast.columns))}, "
            f"only Feast {sorted(set(feast.columns) - set(ours.columns))}"
        )
    ours = ours.set_index("transaction_id").sort_index()
    feast = feast.set_index("transaction_id").sort_index()[ours.columns]
    if not ours.index.equals(feast.index):
        raise BenchmarkError("ours and Feast returned different entity rows")
    for name in ours.columns:
        try:
            pd.testing.assert_series_equal(
                ours[name], feast[name], check_dtype=False, check_exact=True, check_names=False
            )
        except AssertionError as exc:
            raise BenchmarkError(f"column {name!r} differs:\n{exc}") from None
    return ours.size


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def rows_label(rows: int) -> str:
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return f"{rows:,}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 2)


def build_cases(
    feast_rows: int, ours: dict[int, dict], feast: dict
) -> tuple[list[dict], list[bool | None]]:
    """Throughput, then peak RSS, at each size ours ran at (`ours`: size -> its result)."""
    shape = f"x {SERVICE} (3 views + on-demand)"
    feast_rate = feast_rows / feast["seconds"]
    target = f">= {THROUGHPUT_TARGET:g}x"

    def throughput(case: str, rate: float, anchor_name: str) -> dict:
        return {
            "case": case, "metric": "throughput", "unit": "rows/s", "ours": round(rate),
            "anchor": round(feast_rate), "anchor_name": anchor_name,
            "ratio": ratio(rate, feast_rate), "target": target,
        }  # fmt: skip

    def memory(case: str, result: dict, anchor: dict | None) -> dict:
        return {
            "case": case, "metric": "peak RSS", "unit": "MiB",
            "ours": round(result["peak_rss_mib"], 1),
            "anchor": round(anchor["peak_rss_mib"], 1) if anchor else None,
            "anchor_name": ANCHOR if anchor else None,
            "ratio": ratio(anchor["peak_rss_mib"], result["peak_rss_mib"]) if anchor else None,
            "target": "> 1x (below Feast)" if anchor else "-",
        }  # fmt: skip

    small = rows_label(feast_rows)
    cases = []
    for rows, result in sorted(ours.items()):
        if rows == feast_rows:
            cases.append(throughput(f"export {small} entity rows {shape}",
                                    rows / result["seconds"], ANCHOR))
        else:
            cases.append(throughput(
                f"export {rows_label(rows)} entity rows {shape} "
                f"(Feast measured at {small} only: 20k exhausts 23 GiB)",
                rows / result["seconds"], f"{ANCHOR}, at {small} entity rows",
            ))
    for rows, result in sorted(ours.items()):
        if rows == feast_rows:
            cases.append(memory(f"export {small} entity rows {shape}", result, feast))
        else:
            cases.append(memory(f"export {rows_label(rows)} entity rows {shape} (ours only)",
                                result, None))
    verdicts: list[bool | None] = [
        None if c["ratio"] is None
        else c["ratio"] >= THROUGHPUT_TARGET if c["metric"] == "throughput"
        else c["ratio"] > 1
        for c in cases
    ]  # fmt: skip
    return cases, verdicts


def describe(who: str, rows: int, result: dict[str, Any]) -> str:
    return (
        f"  {who}: {rows:,} rows in {result['seconds']:.2f} s = "
        f"{rows / result['seconds']:,.0f} rows/s; peak RSS {result['peak_rss_mib']:,.0f} MiB "
        f"({result['rss_before_mib']:,.0f} MiB before the export)"
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    out = console()
    began = time.perf_counter()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-export-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(root))
    sizes = sorted({*args.rows, args.feast_rows})
    try:
        if all(entity_path(root, rows).exists() for rows in sizes):
            out.print(f"reusing the data in {root}")
        else:
            out.rule("[bold]data: generate, apply, Spark backfill, entity tables")
            prepared = run_child("prepare", root, max(sizes), sizes)
            out.print(
                f"  {prepared['cards']:,} cards, {prepared['entity_rows_available']:,} entity "
                f"rows from {prepared['first']} to {prepared['last']} "
                f"({prepared['seconds']:.0f} s)"
            )
        ours = {}
        for rows in reversed(sizes):
            out.rule(f"[bold]{rows_label(rows)} entity rows x {SERVICE}")
            ours[rows] = run_ours(root, rows, args.repeat)
            out.print(describe("ours ", rows, ours[rows]))
        feast = run_child("feast", root, args.feast_rows)
        out.print(describe("feast", args.feast_rows, feast))
        values = check_identical(root, args.feast_rows)
        out.print(
            f"  [green]ok[/] identical rows: {args.feast_rows:,} entity rows, {values:,} values"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    cases, verdicts = build_cases(args.feast_rows, ours, feast)
    out.rule()
    print_cases(out, "export: ours vs Feast get_historical_features", cases, verdicts)
    write_results(args.output, "export", cases)
    out.print(f"wrote {args.output} in {time.perf_counter() - began:.0f} s total")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
        help="entity rows of ours, one case each",
    )
    parser.add_argument(
        "--feast-rows", type=int, default=10_000, help="entity rows of Feast; ours runs at both"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of ours per size, the median counts"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument(
        "--workdir", help="keep the data here and reuse it on the next run (default: a temp dir)"
    )
    # Internal: one step in a child process.
    parser.add_argument("--child", choices=["prepare", "ours", "feast"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # (A child is given the one size it works at.)
    if min(*args.rows, args.feast_rows, args.repeat) <= 0 or (
        not args.child and args.feast_rows > max(args.rows)
    ):
        parser.error(
            "--rows, --feast-rows and --repeat must be positive, --feast-rows <= the largest --rows"
        )
    return args


if __name__ == "__main__":
    run_main(parse_args, child_main, run, console)
