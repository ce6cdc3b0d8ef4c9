"""The demo's last step: live traffic scored through the API is captured and checked for drift;
an injected shift from the generator raises an alert that a local receiver gets, signed.

The API (started by `featurestore.demo` with every row captured) scores a normal day of
transactions, then a day whose amounts the generator multiplies by AMOUNT_SHIFT. The monitor
worker checks each window of WINDOW_ROWS captured rows against the baseline of the model's
training export and sends the alert to a webhook receiver on 127.0.0.1 that verifies the HMAC.

The demo scores past days against the online state at the end of the streamed day, not against
the state at each transaction's time as live serving would; the windowed counts and sums of the
card and merchant views then differ from the point-in-time training rows whatever the traffic.
So the demo's monitor watches what that lag cannot move: the request-driven amount ratio, the
card profile (a daily snapshot) and the model's score. (`monitors.yaml` watches every feature.)
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from featurestore.client import FeatureClient
from featurestore.db import engine as sql_engine
from featurestore.generator import GeneratorConfig, transactions
from featurestore.settings import Settings
from monitors.baseline import baseline_for_model
from monitors.config import parse_monitors
from monitors.notifiers import verify_signature
from monitors.store import ALERTS, OUTBOX, RUN_FEATURES, RUNS
from monitors.worker import MonitorWorker

MONITOR = "demo_fraud_scoring"
WINDOW_ROWS = 2_000
AMOUNT_SHIFT = 3.0
BATCH = 100  # transactions per score request
SECRET_ENV = "FEATURESTORE_DEMO_WEBHOOK_SECRET"
FEATURES = (
    "transaction_amount_ratio:amount_to_card_mean_24h",
    "card_profile:credit_limit",
    "card_profile:card_age_days",
    "card_profile:home_country",
    "card_profile:card_tier",
)


class _Receiver(BaseHTTPRequestHandler):
    """Keeps each alert whose signature checks out (the server holds the list and secret)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        valid = verify_signature(
            self.server.secret, self.headers.get("X-Featurestore-Timestamp", ""), body,
            self.headers.get("X-Featurestore-Signature", ""),
        )
        if valid:
            self.server.received.append(json.loads(body))
        self.send_response(200 if valid else 401)
        self.end_headers()

    def log_message(self, *args) -> None:  # the demo prints its own table
        pass


def _config(receiver_url: str):
    return parse_monitors(f"""
interval_seconds: 1
notifiers:
  demo-receiver: {{type: webhook, url: "{receiver_url}", secret_env: {SECRET_ENV}}}
monitors:
  {MONITOR}:
    feature_service: fraud_detection_v1
    features: [{", ".join(FEATURES)}]
    score: true
    window: {{rows: {WINDOW_ROWS}}}
    drift: {{multivariate: {{permutations: 100}}}}
    rules:
      - {{kind: feature_drift, consecutive: 2, severity: warning}}
      - {{kind: drift_share, at_least: 0.3, severity: critical}}
      - {{kind: multivariate, severity: warning}}
    notify: [demo-receiver]
""", "demo monitors")


def _forget(settings: Settings) -> None:
    """A fresh run: the previous demo's windows point into a capture log that is gone."""
    with sql_engine(settings).begin() as conn:
        alerts = sa.select(ALERTS.c.alert_id).where(ALERTS.c.monitor == MONITOR)
        runs = sa.select(RUNS.c.run_id).where(RUNS.c.monitor == MONITOR)
        conn.execute(sa.delete(OUTBOX).where(OUTBOX.c.alert_id.in_(alerts)))
        conn.execute(sa.delete(ALERTS).where(ALERTS.c.monitor == MONITOR))
        conn.execute(sa.delete(RUN_FEATURES).where(RUN_FEATURES.c.run_id.in_(runs)))
        conn.execute(sa.delete(RUNS).where(RUNS.c.monitor == MONITOR))


def _score_day(client: FeatureClient, day: pa.Table, seed: int) -> int:
    """Score the day's transactions in a random order: each window is then a sample of the
    whole day. (Cards of each time zone pay in their own daytime, so windows of a few hours in
    event-time order differ from the baseline by the hour; see docs/monitoring.md.)"""
    day = day.take(np.random.default_rng(seed).permutation(day.num_rows))
    for start in range(0, day.num_rows, BATCH):
        part = day.slice(start, BATCH)
        client.score({name: part.column(name).to_pylist()
                      for name in ("card_id", "merchant_id", "amount")})
    return day.num_rows


def run_monitoring(
    console: Console, settings: Settings, client: FeatureClient, history: GeneratorConfig,
    live_day: date,
) -> None:
    """Score a normal and a shifted day through `client`, then check and alert."""
    _forget(settings)
    with console.status("8/8 drift baseline from the model's training export"):
        baseline = baseline_for_model(settings, settings.model_path)
    shifted_day = date.fromordinal(live_day.toordinal() + 1)
    traffic = GeneratorConfig(
        start=history.start, days=(shifted_day - history.start).days + 1, cards=history.cards,
        merchants=history.merchants, seed=history.seed, drift_start=shifted_day,
        amount_shift=AMOUNT_SHIFT,
    )
    days = transactions(traffic, live_day)
    normal, shifted = next(days), next(days)

    os.environ[SECRET_ENV] = secrets.token_hex(16)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.secret, server.received = os.environ[SECRET_ENV], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver_url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    try:
        with console.status(f"8/8 scoring {normal.num_rows:,} normal and {shifted.num_rows:,} "
                            f"shifted transactions (amounts x{AMOUNT_SHIFT:g}) through the API"):
            scored = _score_day(client, normal, 1)
            time.sleep(1.1)  # the capture log groups a second's rows: keep the days apart
            scored += _score_day(client, shifted, 2)
        worker = MonitorWorker(settings, _config(receiver_url))
        expected = scored // WINDOW_ROWS
        with console.status(f"8/8 monitor worker: checking {expected} windows of "
                            f"{WINDOW_ROWS:,} captured rows"):
            runs = _check_until(worker, expected)
    finally:
        server.shutdown()
    _show(console, baseline, runs, server.received)


def _check_until(worker: MonitorWorker, windows: int) -> list:
    """Run the worker until `windows` windows are checked (capture reaches Kafka in the API's
    background thread, so the last rows may land a moment after the last response)."""
    deadline = time.monotonic() + 180
    runs = []
    while len(runs) < windows:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the monitor checked {len(runs)} of {windows} windows within 3 "
                               "minutes: is the capture reaching Kafka?")
        report = worker.run(threading.Event(), until_idle=True)
        if report.failures:
            raise RuntimeError(f"the monitor failed: {report.failures}")
        runs += report.runs
        time.sleep(0.5)
    return runs


def _short(features: list[str]) -> str:
    names = [feature.split(":")[-1] for feature in features]
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:4])}, +{len(names) - 4}"


def _show(console: Console, baseline, runs: list, received: list[dict]) -> None:
    table = Table(title=f"Drift monitor {MONITOR}: windows of {WINDOW_ROWS:,} scored "
                        f"transactions vs baseline v{baseline.version} ({baseline.export_id})")
    for column in ("run", "traffic", "rows", "drifted features", "alerts opened"):
        table.add_column(column)
    for number, run in enumerate(runs):
        opened = [f"{a['rule']} {a['target'].split(':')[-1]} ({a['severity']})"
                  for a in run.alerts if a["first_run_id"] == run.run_id]
        traffic = "normal" if number < len(runs) // 2 else f"amounts x{AMOUNT_SHIFT:g}"
        table.add_row(str(run.run_id), traffic, f"{run.current_rows:,}",
                      _short(run.drifted) or "none", "\n".join(opened) or "-")
    console.print(table)
    if not received:
        raise RuntimeError("the injected shift raised no alert at the local receiver")
    for alert in received:
        console.print(f"[bold]received at the local webhook (signature verified):[/bold] "
                      f"{alert['event']} {alert['severity']} {alert['dedup_key']}: "
                      f"{alert['summary']}", highlight=False)
    report = next(run.report_html for run in reversed(runs) if run.report_html)
    console.print(f"Evidently report of the last window: {report}")
