"""Benchmark: online serving, ours vs `feast serve`, with a bare FastAPI endpoint as the floor.

One repo, one Redis (db 11), one data set: generated transactions, Spark backfill, materialized
(`fraud_detection_v1`: 2 stream feature views, card_profile, the on-demand ratio). Each server
runs alone on the machine with the same number of worker processes, under the same load
generator (wrk, 1 thread, 8 connections, a cycle of 1,000 request bodies with random entities),
for each batch size (1, 10 and 100 entities per request):

  ours   `featurestore serve` (API keys on: every request carries a bearer key), Feast's answer
         shape, and at 10 and 100 entities also the compact one (`?format=compact`)
  anchor `feast serve` (gunicorn + uvicorn workers, no access log, no worker recycling)
  floor  bench/floor_app.py: FastAPI + one redis-py pipelined HMGET read, nothing else

Then ours and Feast, 1 entity per request, at a fixed rate (open loop, bench/openloop.py in its
own process: latency from each request's scheduled send, so a stall is never hidden).

With `--cluster`, the data is also materialized into a 3-master Redis Cluster the run starts
(tests/servers.py's starter) and ours serves from it under the same load, after ours from one
Redis: the cluster's answer to a 100-entity request must equal the single Redis's.

Before the load, ours (both shapes) and Feast answer the same 100-entity request; the run fails
unless every value agrees.

    make bench-serving                                       # full run, ~10 min
    .venv/bin/python bench/serving.py --seconds 5 --open-seconds 5 --cards 2000 \
        --redis redis://127.0.0.1:6393/11                    # quick trial
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import redis
from common import redis_cluster, write_results
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BIN = Path(sys.executable).parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "serving.json"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
START = date(2026, 1, 1)
DAYS = 2
SERVICE = "fraud_detection_v1"
SIZES = (1, 10, 100)
TARGETS = {1: ">= 6x", 100: ">= 15x"}
FLOOR_TARGETS = {1: ">= 1.2x"}
P99_OPEN_TARGET_MS = 5.0
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


def configure(root: Path, redis_url: str) -> None:
    """This run's settings, and a copy of feature_repo/ of its own: `apply` renders the
    feature_store.yaml that `feast serve` reads into it, so no other run or test in this
    worktree (each renders its own) can point Feast at another registry or Redis."""
    shutil.copytree(ROOT / "feature_repo", root / "feature_repo",
                    ignore=shutil.ignore_patterns("__pycache__", "feature_store.yaml"))
    os.environ.update({
        "FEATURESTORE_FEATURE_REPO": str(root / "feature_repo"),
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
        "FEATURESTORE_PROFILE": "services",
        "FEATURESTORE_PROJECT": "benchserving",
        "FEATURESTORE_REDIS_URL": redis_url,
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


def materialize_into_cluster(cluster_url: str) -> None:
    """The prepared data materialized again, into the cluster."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize
    from featurestore.settings import get_settings

    settings = get_settings().model_copy(
        update={"redis_url": cluster_url, "redis_type": "redis_cluster"}
    )
    store = feature_store(settings)
    start = datetime.combine(START, datetime.min.time(), UTC)
    end = start + timedelta(days=DAYS)
    materialize(settings, store, [(v, start, end) for v in select_views(store, None)])


def start_server(command: list[str], url: str, cwd: Path | None = None,
                 timeout: float = 300.0, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` in a process group of its own and wait up to `timeout` s until `url`
    answers; on any failure to start (it exited, it never answered, an interrupt) the whole
    group is stopped first: a server left behind would load the machine under every later case."""
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server {command[:3]} exited with {server.returncode}")
            try:
                httpx.get(url, timeout=1)
                return server
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"server {command[:3]} did not answer {url} within {timeout:.0f} s "
                        "(--start-timeout)"
                    ) from None
                time.sleep(0.5)
    except BaseException:
        stop(server, grace=5)
        raise


def ours_command(port: int, workers: int) -> list[str]:
    return [str(BIN / "featurestore"), "serve", "--port", str(port), "--workers", str(workers)]


def stop(server: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the whole group is gone already
            pass
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


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


def compact_as_feast(compact: dict) -> dict:
    """The Feast-shaped answer a compact one stands for."""
    codes = compact["status_codes"]
    return {"metadata": {"feature_names": compact["feature_names"]}, "results": [
        {"values": v, "statuses": [codes[str(c)] for c in s], "event_timestamps": t}
        for v, s, t in zip(compact["values"], compact["statuses"], compact["event_timestamps"])
    ]}


def compare(ours_url: str, feast_url: str, body_file: Path, token: str) -> None:
    body = json.loads(body_file.read_text().splitlines()[0])
    headers = {"Authorization": f"Bearer {token}"}
    ours = httpx.post(ours_url, json=body, headers=headers).json()
    compact = httpx.post(f"{ours_url}?format=compact", json=body, headers=headers).json()
    if compact_as_feast(compact) != ours:
        raise SystemExit("our compact answer differs from our Feast-shaped one")
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
    console.print(f"ours (both shapes) and feast agree on a 100-entity request ({present} cards "
                  "with rows)")


def open_loop(url: str, body_file: Path, headers: dict[str, str], rate: float,
              seconds: int) -> dict:
    """bench/openloop.py in its own process: a fixed rate, latency from each scheduled send."""
    command = [sys.executable, str(BENCH_DIR / "openloop.py"), url, str(body_file),
               "--rate", str(rate), "--seconds", str(seconds)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return json.loads(subprocess.run(command, capture_output=True, text=True,
                                     check=True).stdout)


def entities_case(n: int) -> str:
    return f"{n} entit{'y' if n == 1 else 'ies'} per request"


def closed_loop_cases(results: dict, anchor_name: str) -> list[dict]:
    cases = []
    for n in SIZES:
        ours, feast, floor = results[("ours", n)], results[("feast", n)], results[("floor", n)]
        cases.append({
            "case": f"{entities_case(n)}, {SERVICE}, 8 connections",
            "metric": "throughput", "unit": "req/s", "ours": ours["rps"], "anchor": feast["rps"],
            "anchor_name": anchor_name, "ratio": ours["rps"] / feast["rps"],
            "target": TARGETS.get(n, "-"),
        })
        if ("compact", n) in results:
            compact = results[("compact", n)]
            cases.append({
                "case": f"{entities_case(n)}, compact answer (?format=compact), 8 connections",
                "metric": "throughput", "unit": "req/s", "ours": compact["rps"],
                "anchor": feast["rps"], "anchor_name": anchor_name,
                "ratio": compact["rps"] / feast["rps"], "target": TARGETS.get(n, "-"),
            })
        cases.append({
            "case": f"{entities_case(n)}, p99 latency (closed loop, 8 connections)",
            "metric": "latency p99", "unit": "ms", "ours": ours["p99_ms"],
            "anchor": feast["p99_ms"], "anchor_name": anchor_name,
            "ratio": feast["p99_ms"] / ours["p99_ms"], "target": "-",
        })
        cases.append({
            "case": f"{entities_case(n)} vs the framework floor",
            "metric": "throughput", "unit": "req/s", "ours": ours["rps"], "anchor": floor["rps"],
            "anchor_name": "bare FastAPI + one redis-py pipelined read (bench/floor_app.py)",
            "ratio": ours["rps"] / floor["rps"], "target": FLOOR_TARGETS.get(n, "-"),
        })
    return cases


def cluster_cases(results: dict) -> list[dict]:
    return [{
        "case": f"{entities_case(n)}, {SERVICE}, from a 3-master Redis Cluster, 8 connections",
        "metric": "throughput", "unit": "req/s", "ours": results[("cluster", n)]["rps"],
        "anchor": results[("ours", n)]["rps"], "anchor_name": "ours from one Redis",
        "ratio": results[("cluster", n)]["rps"] / results[("ours", n)]["rps"], "target": "-",
    } for n in SIZES if ("cluster", n) in results]


def open_loop_cases(results: dict, anchor_name: str, rate: float, seconds: int) -> list[dict]:
    ours, feast = results["ours"], results["feast"]
    cases = []
    for quantile in ("p50", "p99", "p99.9"):
        mine, theirs = ours["latency_ms"][quantile], feast["latency_ms"][quantile]
        cases.append({
            "case": f"1 entity per request, open loop at {rate:,.0f} req/s for {seconds} s, "
                    f"latency {quantile} from the scheduled send",
            "metric": f"latency {quantile}", "unit": "ms", "ours": mine, "anchor": theirs,
            "anchor_name": anchor_name, "ratio": theirs / mine,
            "target": f"<= {P99_OPEN_TARGET_MS:.0f} ms" if quantile == "p99" else "-",
        })
    cases.append({
        "case": f"1 entity per request, open loop at {rate:,.0f} req/s: answers not 2xx "
                "(503: a Redis read timed out in the queue; 0: connection lost)",
        "metric": "errors", "unit": "requests", "ours": ours["errors"],
        "anchor": feast["errors"], "anchor_name": anchor_name, "ratio": None, "target": "0",
    })
    cases.append({
        "case": "open-loop generator's own lateness p99 (its ceiling: figures are the "
                "generator's beyond ~1 ms)",
        "metric": "send lag p99", "unit": "ms", "ours": ours["send_lag_ms"]["p99"],
        "anchor": feast["send_lag_ms"]["p99"], "anchor_name": f"the same, against {anchor_name}",
        "ratio": None, "target": "-",
    })
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--open-rate", type=float, default=1000.0,
                        help="the open-loop case's fixed request rate")
    parser.add_argument("--open-seconds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--redis", default=DEFAULT_REDIS_URL,
                        help="Redis URL with its db, flushed before and after the run")
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="seconds each server may take to answer (a loaded machine needs "
                             "minutes for feast serve's workers)")
    parser.add_argument("--cluster", action="store_true",
                        help="also serve from a 3-master Redis Cluster the run starts")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian/Ubuntu: apt-get install wrk)")

    redis.Redis.from_url(args.redis).flushdb()
    results: dict[tuple[str, int], dict] = {}
    open_results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, ExitStack() as stack:
            root = Path(tmp)
            configure(root, args.redis)
            console.print(f"preparing {args.cards:,} cards: generate, Spark backfill, materialize")
            prepare(args.cards, args.merchants)
            cluster = None
            if args.cluster:
                cluster = stack.enter_context(redis_cluster(root / "cluster"))
                materialize_into_cluster(cluster.url)
            from featurestore.apikeys import create_key
            from featurestore.db import engine
            from featurestore.settings import get_settings

            token, _ = create_key(engine(get_settings()), "bench", ["features:read"])
            feast_repo = root / "feature_repo"
            script = root / "bodies.lua"
            script.write_text(WRK_SCRIPT)
            body_files = {}
            for n in SIZES:
                body_files[n] = root / f"bodies-{n}.jsonl"
                bodies(body_files[n], n, args.cards, args.merchants, seed=n)
            port = 18_000 + os.getpid() % 1000
            base = f"http://127.0.0.1:{port}"
            ours_headers = {"Authorization": f"Bearer {token}"}
            servers = {
                "ours": (ours_command(port, args.workers), "/v1/online-features",
                         ours_headers, None),
                "floor": ([str(BIN / "uvicorn"), "floor_app:create_app", "--factory",
                           "--port", str(port), "--workers", str(args.workers),
                           "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                           "--log-level", "warning"], "/lookup", {}, BENCH_DIR),
                "feast": ([str(BIN / "feast"), "-c", str(feast_repo), "serve",
                           "-p", str(port), "-w", str(args.workers), "--no-access-log",
                           "--max-requests", "0"], "/get-online-features",
                          {}, None),
            }
            env: dict[str, dict[str, str]] = {}
            if cluster is not None:
                servers["cluster"] = servers["ours"]
                env["cluster"] = {"FEATURESTORE_REDIS_URL": cluster.url,
                                  "FEATURESTORE_REDIS_TYPE": "redis_cluster"}
            answers: dict[str, dict] = {}
            for name, (command, path, headers, cwd) in servers.items():
                server = start_server(command, f"{base}/docs", cwd, args.start_timeout,
                                      env.get(name))
                try:
                    if name in ("ours", "cluster"):
                        body = json.loads(body_files[100].read_text().splitlines()[0])
                        answers[name] = httpx.post(f"{base}{path}", json=body,
                                                   headers=ours_headers).json()
                        if name == "cluster" and answers["cluster"] != answers["ours"]:
                            raise SystemExit("ours from the cluster answers a 100-entity "
                                             "request unlike ours from one Redis")
                    if name == "feast":
                        ours = start_server(ours_command(port + 1, 1),
                                            f"http://127.0.0.1:{port + 1}/docs",
                                            timeout=args.start_timeout)
                        try:
                            compare(f"http://127.0.0.1:{port + 1}/v1/online-features",
                                    f"{base}{path}", body_files[100], token)
                        finally:
                            stop(ours)
                    shapes = [(name, path)]
                    if name == "ours":
                        shapes.append(("compact", f"{path}?format=compact"))
                    for n in SIZES:
                        for shape, shape_path in shapes:
                            if shape == "compact" and n == 1:
                                continue  # one entity: the two shapes are the same size
                            all_headers = {"Content-Type": "application/json", **headers}
                            url = f"{base}{shape_path}"
                            wrk(url, body_files[n], script, 3, all_headers)  # warm-up
                            result = wrk(url, body_files[n], script, args.seconds, all_headers)
                            results[(shape, n)] = result
                            console.print(
                                f"{shape:7} {n:3} entities: {result['rps']:8,.0f} req/s, "
                                f"p99 {result['p99_ms']:8.2f} ms, non-2xx "
                                f"{result['non_2xx']}, socket errors {result['socket_errors']}"
                            )
                    if name in ("ours", "feast"):
                        result = open_loop(f"{base}{path}", body_files[1], headers,
                                           args.open_rate, args.open_seconds)
                        open_results[name] = result
                        console.print(f"{name:7} open loop: {result}")
                finally:
                    stop(server)
    finally:
        redis.Redis.from_url(args.redis).flushdb()

    bad = {k: v for k, v in results.items() if v["non_2xx"]}
    if bad:
        raise SystemExit(f"error responses under load: {bad}")
    anchor_name = f"feast serve ({args.workers} workers)"
    cases = closed_loop_cases(results, anchor_name) + cluster_cases(results)
    cases += open_loop_cases(open_results, anchor_name, args.open_rate, args.open_seconds)
    write_results(args.output, "serving", cases)
    table = Table("case", "ours", "anchor", "ratio", "target")
    for c in cases:
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        table.add_row(c["case"], f"{c['ours']:,.2f} {c['unit']}", f"{c['anchor']:,.2f}",
                      ratio, c["target"])
    console.print(table)
    console.print(f"written {args.output} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
