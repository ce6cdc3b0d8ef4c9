"""Benchmark: online serving, ours vs `feast serve`, with a bare FastAPI endpoint as the floor.

One repo, one Redis (db 11), one data set: generated transactions, Spark backfill, materialized
(`fraud_detection_v1`: 2 stream feature views, card_profile, the on-demand ratio). Each server
runs alone on the machine with the same number of worker processes, under the same load
generator (wrk, 1 thread, 8 connections, a cycle of 1,000 request bodies with random entities),
for each batch size (1 and 100 entities per request):

  ours   `featurestore serve` (API keys on: every request carries a bearer key)
  anchor `feast serve` (gunicorn + uvicorn workers, no access log, no worker recycling)
  floor  bench/floor_app.py: FastAPI + one redis-py pipelined HMGET read, nothing else

Before the load, ours and Feast answer the same 100-entity request; the run fails unless every
value agrees.

    make bench-serving                                       # full run, ~5 min
    .venv/bin/python bench/serving.py --seconds 5 --cards 2000   # quick trial
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import redis
from common import write_results
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BIN = Path(sys.executable).parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "serving.json"
REDIS_URL = "redis://127.0.0.1:6379/11"
START = date(2026, 1, 1)
DAYS = 2
SERVICE = "fraud_detection_v1"
TARGETS = {1: ("rps", 6.0), 100: ("rps", 15.0)}
P99_TARGET_MS = 10.0
FLOOR_TARGET = 0.8
WRK_SCRIPT = """
local bodies = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, nil, bodies[i])
end
"""

console = Console(width=None if sys.stdout.isatty() else 150)


def configure(root: Path) -> None:
    os.environ.update({
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
        "FEATURESTORE_PROFILE": "services",
        "FEATURESTORE_PROJECT": "benchserving",
        "FEATURESTORE_REDIS_URL": REDIS_URL,
        "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root}/registry.db",
        "FEATURESTORE_DATABASE_URL": f"sqlite:///{root}/featurestore.db",
    })


def prepare(cards: int, merchants: int) -> None:
    """Generate, apply, backfill the last day with Spark, materialize into Redis."""
    from featurestore.batch.backfill import backfill
    from featurestore.batch.spark import spark_session
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.materialize import materialize
    from featurestore.settings import get_settings
    from fraud_example.generator import GeneratorConfig, generate

    settings = get_settings()
    generate(GeneratorConfig(start=START, days=DAYS, cards=cards, merchants=merchants),
             settings.raw_dir)
    store = apply(settings)
    last = START + timedelta(days=DAYS - 1)
    spark = spark_session(settings)
    try:
        backfill(lambda: spark, select_views(store, None, aggregated_only=True), last,
                 START + timedelta(days=DAYS))
    finally:
        spark.stop()
    start = datetime.combine(START, datetime.min.time(), UTC)
    end = start + timedelta(days=DAYS)
    materialize(settings, store, [(v, start, end) for v in select_views(store, None)])


def bodies(path: Path, entities: int, cards: int, merchants: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(1_000):
        lines.append(json.dumps({
            "feature_service": SERVICE,
            "entities": {
                "card_id": [rng.randint(1, cards) for _ in range(entities)],
                "merchant_id": [rng.randint(1, merchants) for _ in range(entities)],
                "amount": [round(rng.uniform(1, 500), 2) for _ in range(entities)],
            },
        }, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")


def start_server(command: list[str], url: str, cwd: Path | None = None) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server {command[:3]} exited with {server.returncode}")
        try:
            httpx.get(url, timeout=1)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit(f"server {command[:3]} did not start") from None
            time.sleep(0.5)


def ours_command(port: int, workers: int) -> list[str]:
    return [str(BIN / "featurestore"), "serve", "--port", str(port), "--workers", str(workers)]


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, 15)
    server.wait(timeout=60)


def wrk(url: str, body_file: Path, script: Path, seconds: int, headers: dict[str, str]) -> dict:
    command = ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*command, url, "--", str(body_file)], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def compare(ours_url: str, feast_url: str, body_file: Path, token: str) -> None:
    body = json.loads(body_file.read_text().splitlines()[0])
    ours = httpx.post(ours_url, json=body, headers={"Authorization": f"Bearer {token}"}).json()
    feast = httpx.post(feast_url, json=body).json()

    def columns(answer: dict) -> dict:
        return {n: r["values"] for n, r in zip(answer["metadata"]["feature_names"],
                                              answer["results"])}

    ours_columns, feast_columns = columns(ours), columns(feast)
    if sorted(ours_columns) != sorted(feast_columns):
        raise SystemExit(f"different features: {sorted(ours_columns)} vs {sorted(feast_columns)}")
    for name, values in feast_columns.items():
        for a, b in zip(ours_columns[name], values):
            same = a == b or (isinstance(a, float) and isinstance(b, float)
                              and abs(a - b) <= 1e-9 * max(1.0, abs(b)))
            if not same:
                raise SystemExit(f"{name}: ours {a!r} vs feast {b!r}")
    present = sum(v is not None for v in ours_columns["card_txn_count_24h"])
    console.print(f"ours and feast agree on a 100-entity request ({present} cards with rows)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian/Ubuntu: apt-get install wrk)")

    redis.Redis.from_url(REDIS_URL).flushdb()
    results: dict[tuple[str, int], dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
            root = Path(tmp)
            configure(root)
            console.print(f"preparing {args.cards:,} cards: generate, Spark backfill, materialize")
            prepare(args.cards, args.merchants)
            from featurestore.apikeys import create_key
            from featurestore.db import engine
            from featurestore.settings import get_settings

            token, _ = create_key(engine(get_settings()), "bench", ["features:read"])
            script = root / "bodies.lua"
            script.write_text(WRK_SCRIPT)
            body_files = {}
            for n in (1, 100):
                body_files[n] = root / f"bodies-{n}.jsonl"
                bodies(body_files[n], n, args.cards, args.merchants, seed=n)
            port = 18_000 + os.getpid() % 1000
            base = f"http://127.0.0.1:{port}"
            servers = {
                "ours": (ours_command(port, args.workers), "/v1/online-features",
                         {"Authorization": f"Bearer {token}"}, None),
                "floor": ([str(BIN / "uvicorn"), "floor_app:create_app", "--factory",
                           "--port", str(port), "--workers", str(args.workers),
                           "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                           "--log-level", "warning"], "/lookup", {}, BENCH_DIR),
                "feast": ([str(BIN / "feast"), "-c", str(ROOT / "feature_repo"), "serve",
                           "-p", str(port), "-w", str(args.workers), "--no-access-log",
                           "--max-requests", "0"], "/get-online-features",
                          {}, None),
            }
            for name, (command, path, headers, cwd) in servers.items():
                server = start_server(command, f"{base}/docs", cwd)
                try:
                    if name == "feast":
                        ours = start_server(ours_command(port + 1, 1),
                                            f"http://127.0.0.1:{port + 1}/docs")
                        try:
                            compare(f"http://127.0.0.1:{port + 1}/v1/online-features",
                                    f"{base}{path}", body_files[100], token)
                        finally:
                            stop(ours)
                    for n in (1, 100):
                        all_headers = {"Content-Type": "application/json", **headers}
                        wrk(f"{base}{path}", body_files[n], script, 3, all_headers)  # warm-up
                        result = wrk(f"{base}{path}", body_files[n], script, args.seconds,
                                     all_headers)
                        results[(name, n)] = result
                        console.print(f"{name:5} {n:3} entities: {result['rps']:8,.0f} req/s, "
                                      f"p99 {result['p99_ms']:8.2f} ms, non-2xx "
                                      f"{result['non_2xx']}, socket errors "
                                      f"{result['socket_errors']}")
                finally:
                    stop(server)
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()

    bad = {k: v for k, v in results.items() if v["non_2xx"]}
    if bad:
        raise SystemExit(f"error responses under load: {bad}")
    cases = []
    anchor_name = f"feast serve ({args.workers} workers)"
    for n in (1, 100):
        ours, feast, floor = results[("ours", n)], results[("feast", n)], results[("floor", n)]
        cases.append({
            "case": f"{n} entit{'y' if n == 1 else 'ies'} per request, {SERVICE}, 8 connections",
            "metric": "throughput", "unit": "req/s", "ours": ours["rps"], "anchor": feast["rps"],
            "anchor_name": anchor_name, "ratio": ours["rps"] / feast["rps"],
            "target": f">= {TARGETS[n][1]:.0f}x",
        })
        cases.append({
            "case": f"{n} entit{'y' if n == 1 else 'ies'} per request, p99 latency",
            "metric": "latency p99", "unit": "ms", "ours": ours["p99_ms"],
            "anchor": feast["p99_ms"], "anchor_name": anchor_name,
            "ratio": feast["p99_ms"] / ours["p99_ms"],
            "target": f"<= {P99_TARGET_MS:.0f} ms" if n == 1 else "-",
        })
        cases.append({
            "case": f"{n} entit{'y' if n == 1 else 'ies'} per request vs the framework floor",
            "metric": "throughput", "unit": "req/s", "ours": ours["rps"], "anchor": floor["rps"],
            "anchor_name": "bare FastAPI + one redis-py pipelined read (bench/floor_app.py)",
            "ratio": ours["rps"] / floor["rps"], "target": f">= {FLOOR_TARGET}x",
        })
    write_results(args.output, "serving", cases)
    table = Table("case", "ours", "anchor", "ratio", "target")
    for c in cases:
        table.add_row(c["case"], f"{c['ours']:,.1f} {c['unit']}", f"{c['anchor']:,.1f}",
                      f"{c['ratio']:.2f}x", c["target"])
    console.print(table)
    console.print(f"written {args.output} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
