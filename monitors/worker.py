"""`featurestore monitors run`: the scheduler loop of the monitors.

Every `interval_seconds` each monitor reads the capture log from where its last stored run left
off, checks each window that closed (`monitors.runs.check_window`) and moves its alerts on; every
second the outbox delivers what is due. A monitor that fails (no baseline yet, a broken report)
is logged and retried at the next interval; the others go on. All state is in SQL, so a restarted
worker continues where the last one stopped: windows are re-read from the stored position and
undelivered notifications are still in the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from kafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from featurestore.db import engine as sql_engine
from featurestore.errors import FeatureStoreError
from featurestore.settings import Settings
from monitors.baseline import get_baseline
from monitors.capture import CaptureReader
from monitors.config import MonitorsFile, check_secrets
from monitors.outbox import Outbox
from monitors.runs import RunSummary, check_window, resume_point

log = logging.getLogger("monitors.worker")
DELIVERY_SECONDS = 1.0  # how often the outbox is tried between monitor intervals
MAX_WINDOWS_PER_PASS = 50  # then the outbox gets its turn; the rest comes next pass


@dataclass
class WorkerReport:
    """What one pass (or a whole `run`) did."""

    runs: list[RunSummary] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # monitor -> last error
    delivered: int = 0
    retried: int = 0
    failed: int = 0


class MonitorWorker:
    def __init__(self, settings: Settings, config: MonitorsFile) -> None:
        check_secrets(config, str(settings.monitors_config))
        self.settings = settings
        self.config = config
        self.engine = sql_engine(settings)
        self.outbox = Outbox(self.engine, config.notifiers)
        self.readers: dict[str, CaptureReader] = {}

    def _reader(self, name: str) -> CaptureReader:
        if name not in self.readers:
            monitor = self.config.monitors[name]
            cursor, window_end = resume_point(self.engine, name)
            self.readers[name] = CaptureReader(
                self.settings, monitor.subject, monitor.window, cursor,
                resume_at=window_end if monitor.window.minutes is not None else None,
            )
        return self.readers[name]

    def check_monitor(self, name: str, poll_seconds: float, report: WorkerReport) -> int:
        """Check every window of `name` that closed; returns how many."""
        monitor = self.config.monitors[name]
        try:
            # Resolved per pass: a new baseline version is picked up without a restart.
            baseline = get_baseline(self.settings, monitor.subject, monitor.baseline)
            windows = self._reader(name).poll(poll_seconds)
            # A poll stops at the first batch that closes a window: a backlog may hold more.
            while windows and len(windows) < MAX_WINDOWS_PER_PASS:
                more = self._reader(name).poll(0)
                if not more:
                    break
                windows += more
            for window in windows:
                summary = check_window(
                    self.engine, self.config, name, baseline, window,
                    reports_dir=self.settings.reports_dir, public_url=self.settings.public_url,
                )
                report.runs.append(summary)
                log.info(
                    "%s: run %d, %d rows, %s, drifted %s, alerts changed %d", name,
                    summary.run_id, summary.current_rows, summary.status,
                    summary.drifted or "none", len(summary.alerts),
                )
            report.failures.pop(name, None)
            return len(windows)
        except (FeatureStoreError, OSError, ValueError, SQLAlchemyError, KafkaError) as exc:
            # The reader may hold half a window: drop it, so the next pass re-reads from the
            # position stored with the last run.
            reader = self.readers.pop(name, None)
            if reader is not None:
                reader.close()
            report.failures[name] = f"{type(exc).__name__}: {exc}"
            log.error("monitor %s failed, retrying next interval: %s", name, report.failures[name])
            return 0

    def deliver(self, report: WorkerReport) -> None:
        try:
            counts = self.outbox.deliver_due()
        except SQLAlchemyError as exc:
            # The database is away: the messages wait in it; try again next second.
            log.warning("cannot read the outbox: %s", exc)
            return
        report.delivered += counts.delivered
        report.retried += counts.retried
        report.failed += counts.failed

    def run(self, stop: threading.Event, *, until_idle: bool = False) -> WorkerReport:
        """Loop until `stop` is set; with `until_idle`, return once no monitor has a closed
        window left and nothing in the outbox is due (for `--once`, the demo and tests)."""
        report = WorkerReport()
        try:
            next_check = time.monotonic()
            while not stop.is_set():
                checked = 0
                if time.monotonic() >= next_check:
                    for name in self.config.monitors:
                        checked += self.check_monitor(name, 1.0, report)
                    if not until_idle:
                        next_check = time.monotonic() + self.config.interval_seconds
                self.deliver(report)
                if until_idle and not checked:
                    return report
                stop.wait(0 if until_idle else DELIVERY_SECONDS)
            return report
        finally:
            self.close()

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()
