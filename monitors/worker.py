"""`featurestore monitors run`: the scheduler loop of the monitors, and its delivery thread.

Every `interval_seconds` each monitor reads the capture log from where its last stored run left
off, checks each window that closed (`monitors.runs.check_window`) and moves its alerts on. The
outbox is delivered by a thread of its own (`Outbox.serve`), so a notifier that hangs never
delays a check. Each pass takes the monitors file in use (`config`: reloaded when it changed,
the last valid version kept while an edit is invalid). A monitor that fails (no baseline, a
deleted sample file, a broken report) is logged and retried at the next interval, the others go
on; after its `monitor_health` rule's `after_failures` passes in a row it raises a
`monitor_health` alert, resolved by its next good pass. The database being away is not the
monitor's fault: it is retried without counting. All state is in SQL, so a restarted worker
continues where the last one stopped: windows are re-read from the stored position and
undelivered notifications are still in the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka.errors import KafkaError
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from featurestore.db import engine as sql_engine
from featurestore.errors import FeatureStoreError
from featurestore.settings import Settings
from monitors.alerts import clear_health, raise_health
from monitors.baseline import get_baseline
from monitors.capture import CaptureReader
from monitors.config import MonitorConfig, MonitorsFile, check_secrets
from monitors.outbox import Outbox
from monitors.runs import RunSummary, check_window, resume_point

log = logging.getLogger("monitors.worker")
MAX_WINDOWS_PER_PASS = 50  # then the next monitor gets its turn; the rest comes next pass


@dataclass
class WorkerReport:
    """What one pass (or a whole `run`) did."""

    runs: list[RunSummary] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # monitor -> last error
    delivered: int = 0
    retried: int = 0
    failed: int = 0


class MonitorWorker:
    """`config`: the monitors file, or a function returning the version in use
    (`MonitorsConfigSource.current`), read at each pass and by the delivery thread."""

    def __init__(
        self, settings: Settings, config: MonitorsFile | Callable[[], MonitorsFile]
    ) -> None:
        self._config = config if callable(config) else lambda: config
        check_secrets(self._config(), str(settings.monitors_config))
        self.settings = settings
        self.engine = sql_engine(settings)
        self.outbox = Outbox(self.engine, lambda: self._config().notifiers,
                             deadline_seconds=self._config().delivery_deadline_seconds)
        self.readers: dict[str, tuple[MonitorConfig, CaptureReader]] = {}
        self.failing: dict[str, int] = {}  # monitor -> passes failed in a row
        self._healthy: set[str] = set()  # monitors known to have no open health alert

    @property
    def config(self) -> MonitorsFile:
        return self._config()

    def _reader(self, name: str, monitor: MonitorConfig) -> CaptureReader:
        known = self.readers.get(name)
        if known is not None and known[0] == monitor:
            return known[1]
        self._drop_reader(name)  # new, or its configuration changed on reload
        cursor, window_end = resume_point(self.engine, name)
        reader = CaptureReader(
            self.settings, monitor.subject, monitor.window, cursor,
            resume_at=window_end if monitor.window.minutes is not None else None,
        )
        self.readers[name] = (monitor, reader)
        return reader

    def _drop_reader(self, name: str) -> None:
        known = self.readers.pop(name, None)
        if known is not None:
            known[1].close()

    def check_monitor(self, config: MonitorsFile, name: str, poll_seconds: float,
                      report: WorkerReport) -> int:
        """Check every window of `name` that closed; returns how many."""
        monitor = config.monitors[name]
        try:
            # Resolved per pass: a new baseline version is picked up without a restart.
            baseline = get_baseline(self.settings, monitor.subject, monitor.baseline)
            baseline.require_sample()
            reader = self._reader(name, monitor)
            windows = reader.poll(poll_seconds)
            # A poll stops at the first batch that closes a window: a backlog may hold more.
            while windows and len(windows) < MAX_WINDOWS_PER_PASS:
                more = reader.poll(0)
                if not more:
                    break
                windows += more
            for window in windows:
                summary = check_window(
                    self.engine, config, name, baseline, window,
                    reports_dir=self.settings.reports_dir, public_url=self.settings.public_url,
                )
                report.runs.append(summary)
                log.info(
                    "%s: run %d, %d rows, %s, drifted %s, alerts changed %d", name,
                    summary.run_id, summary.current_rows, summary.status,
                    summary.drifted or "none", len(summary.alerts),
                )
            if name not in self._healthy:
                clear_health(self.engine, config, name, now=datetime.now(UTC),
                             public_url=self.settings.public_url)
                self._healthy.add(name)
            report.failures.pop(name, None)
            self.failing.pop(name, None)
            return len(windows)
        except (FeatureStoreError, OSError, ValueError, SQLAlchemyError, KafkaError) as exc:
            # The reader may hold half a window: drop it, so the next pass re-reads from the
            # position stored with the last run.
            self._drop_reader(name)
            report.failures[name] = f"{type(exc).__name__}: {exc}"
            log.error("monitor %s failed, retrying next interval: %s", name, report.failures[name])
            if not isinstance(exc, OperationalError):  # the database away: not the monitor
                self._count_failure(config, name, report.failures[name])
            return 0

    def _count_failure(self, config: MonitorsFile, name: str, error: str) -> None:
        self.failing[name] = self.failing.get(name, 0) + 1
        self._healthy.discard(name)
        try:
            raise_health(self.engine, config, name, error, self.failing[name],
                         now=datetime.now(UTC), public_url=self.settings.public_url)
        except SQLAlchemyError as exc:
            log.warning("monitor %s: cannot record its health alert: %s", name, exc)

    def check_all(self, report: WorkerReport, poll_seconds: float = 1.0) -> int:
        """One pass over the monitors of the file in use; returns the windows checked."""
        config = self.config
        for name in [n for n in self.readers if n not in config.monitors]:
            self._drop_reader(name)  # removed from the file
        return sum(self.check_monitor(config, name, poll_seconds, report)
                   for name in config.monitors)

    def run(self, stop: threading.Event, *, until_idle: bool = False) -> WorkerReport:
        """Loop until `stop` is set; with `until_idle`, return once no monitor has a closed
        window left and nothing in the outbox is due (for `--once`, the demo and tests)."""
        report = WorkerReport()
        before = self.outbox.counts()
        try:
            if until_idle:
                while True:
                    checked = self.check_all(report)
                    self._deliver_due()
                    if not checked:
                        return report
            self._run(stop, report)
            return report
        finally:
            after = self.outbox.counts()
            report.delivered = after.delivered - before.delivered
            report.retried = after.retried - before.retried
            report.failed = after.failed - before.failed
            self.close()

    def _deliver_due(self) -> None:
        try:
            self.outbox.deliver_due()
        except SQLAlchemyError as exc:
            # The database is away: the messages wait in it.
            log.warning("cannot read the outbox: %s", exc)

    def _run(self, stop: threading.Event, report: WorkerReport) -> None:
        delivering = threading.Event()
        delivery = threading.Thread(
            target=self.outbox.serve, args=(delivering,), name="monitor-delivery", daemon=True
        )
        delivery.start()
        try:
            while not stop.is_set():
                began = time.monotonic()
                self.check_all(report)
                stop.wait(max(0.0, self.config.interval_seconds - (time.monotonic() - began)))
        finally:
            delivering.set()
            delivery.join()

    def close(self) -> None:
        for name in list(self.readers):
            self._drop_reader(name)
