"""Open-loop HTTP load: requests sent on a fixed schedule, latency measured from the scheduled time.

wrk is closed-loop: a slow answer delays the next request, so a stall hides itself (coordinated
omission). Here request i is due at start + i / rate whatever came back; its latency runs from
that due time to the last byte of its answer, so waiting for a free connection counts too.
Keep-alive HTTP/1.1 over raw asyncio sockets (uvloop), one request per connection at a time;
times from perf_counter (uvloop's loop clock counts whole milliseconds).

Run as its own process (bench/serving.py does), so the generator's interpreter is not the
server's. Its own ceiling shows in `send_lag_ms`: how late the generator itself woke for a due
request (waiting for a busy connection is not in it, but is in the latency); when its p99 grows
past a millisecond, the figures measure the generator. (Against a trivial server on the loaded
2-core VM: 1,000 req/s with lateness p99 3.0 ms, 6,000 req/s achieved 5,760; docs/benchmarks.md.)

    python bench/openloop.py URL BODIES.jsonl --rate 1000 --seconds 30 -H 'Authorization: Bearer x'

prints one JSON object: sent, ok, errors, p50/p99/p99.9 latency and send lag in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import uvloop


def request_bytes(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def answer_status(reader: asyncio.StreamReader) -> int:
    """Reads one whole answer (Content-Length framed, as uvicorn sends) and gives its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def run(url: str, bodies: list[bytes], headers: dict[str, str], rate: float,
              seconds: float, connections: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [request_bytes(parts.netloc, parts.path or "/", headers, b) for b in bodies]
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    total = int(rate * seconds)
    latencies = np.full(total, np.nan)
    lags = np.zeros(total)
    statuses: list[int] = []

    async def send(i: int, due: float, connection) -> None:
        reader, writer = connection
        writer.write(requests[i % len(requests)])
        try:
            statuses.append(await answer_status(reader))
            latencies[i] = time.perf_counter() - due
            idle.put_nowait(connection)
        except (OSError, asyncio.IncompleteReadError):
            statuses.append(0)  # the connection is replaced: the server closed it
            idle.put_nowait(await asyncio.open_connection(host, port))

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags[i] = time.perf_counter() - due  # the generator's own lateness (a busy connection is not)
        tasks.append(asyncio.create_task(send(i, due, await idle.get())))
    await asyncio.gather(*tasks)
    done = latencies[~np.isnan(latencies)] * 1000
    ok = sum(200 <= s < 300 for s in statuses)
    by_status = {str(s): statuses.count(s) for s in sorted(set(statuses))}  # 0: connection lost

    def quantiles(values: np.ndarray) -> dict[str, float]:
        return {f"p{q:g}": float(np.percentile(values, q)) for q in (50, 99, 99.9)}

    return {"rate": rate, "seconds": seconds, "sent": total, "ok": ok, "errors": total - ok,
            "statuses": by_status,
            "achieved_rps": total / (time.perf_counter() - start),
            "latency_ms": quantiles(done), "send_lag_ms": quantiles(lags * 1000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path, help="one JSON request body per line, sent in turn")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
    result = uvloop.run(run(args.url, bodies, headers, args.rate, args.seconds,
                            args.connections))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
