"""The alert lifecycle (stored through `monitors.sql.alerts`): trigger -> acknowledge -> resolve,
dedup, silences, pages.

One alert per dedup key (`monitor/rule/target`) is open at a time. After each window
(`apply_window`, inside the transaction that stores the run):
- a condition that fires with no open alert of its key opens one; the alerts one window opens
  go out together, as one page (one notification per notifier, the features listed inside,
  page key `monitor/page/<first alert id>`) unless a silence covers them; firing again keeps the
  same alert (no new page; Alertmanager, which forgets alerts not re-sent, gets a `refire`);
- an open alert moves on by the window's verdict (`monitors.rules.damp`: flap damping) and
  resolves itself after enough clean windows; a page is resolved once its last alert is;
- an alert opened under a silence pages when it fires after the silence ended, unless someone
  acknowledged it meanwhile.
People acknowledge (the whole page: every open alert in it) and resolve (one alert) through the
API. A monitor that cannot run raises a `monitor_health` alert (`raise_health`, `clear_health`).
Notifications go to the outbox in the same transaction as the state change, so a crash loses
neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from featurestore.errors import FeatureStoreError
from monitors.config import MonitorConfig, MonitorsFile
from monitors.outbox import enqueue
from monitors.rules import (
    FIRED,
    SEVERITY_RANK,
    UNJUDGED,
    Evaluation,
    Firing,
    OpenAlert,
    damp,
)
from monitors.sql import alerts as sql
from monitors.sql.alerts import RESOLVED
from monitors.store import ALERTS, max_chars

TRIGGERED, ACKNOWLEDGED = "triggered", "acknowledged"  # and RESOLVED


class AlertError(FeatureStoreError):
    """An alert or silence request that cannot be honoured."""


class UnknownAlertError(AlertError):
    """No alert with that id."""


class UnknownSilenceError(AlertError):
    """No silence with that id."""


class AlertStateError(AlertError):
    """The alert is not in a state that allows the request (resolving a resolved alert)."""


HEALTH, HEALTH_TARGET = "monitor_health", "monitor"
_TARGETS_CHARS = 200  # the targets named in a grouped page's `target`


def _notification(alert: dict, event: str, at: datetime, public_url: str) -> dict:
    run_id = alert["last_run_id"]
    base = public_url.rstrip("/")
    return {
        "event": event,
        "alert_id": alert["alert_id"],
        "dedup_key": alert["dedup_key"],
        "monitor": alert["monitor"],
        "rule": alert["rule"],
        "target": alert["target"],
        "severity": alert["severity"],
        "status": alert["status"],
        "summary": alert["summary"],
        "details": alert["details"],
        "triggered_at": alert["triggered_at"],
        "at": at.isoformat(),
        "run_id": run_id,
        "report_url": f"{base}/v1/drift-runs/{run_id}/report" if run_id is not None else None,
        "alert_url": f"{base}/v1/alerts/{alert['alert_id']}",
        "source": f"featurestore monitor {alert['monitor']}",
    }


def page_notification(alerts: list[dict], page_key: str, event: str, at: datetime,
                      public_url: str) -> dict:
    """One notification for the alerts of a page (the first one leads: its id, links and run);
    `alerts` lists each of them, and several make one summary naming every target."""
    note = _notification(alerts[0], event, at, public_url)
    note["dedup_key"] = page_key
    note["alerts"] = [
        {name: alert[name] for name in ("alert_id", "dedup_key", "rule", "target", "severity",
                                         "status", "summary", "details", "triggered_at")}
        for alert in alerts
    ]
    if len(alerts) == 1:
        return note
    rules = sorted({alert["rule"] for alert in alerts})
    targets = ", ".join(alert["target"] for alert in alerts)
    prefix = f"[{alerts[0]['monitor']}] "
    note.update(
        rule=rules[0] if len(rules) == 1 else "grouped",
        target=targets if len(targets) <= _TARGETS_CHARS
        else targets[: _TARGETS_CHARS - 1] + "\u2026",
        severity=min((alert["severity"] for alert in alerts), key=SEVERITY_RANK.__getitem__),
        summary=prefix + f"{len(alerts)} alerts: " + "; ".join(
            alert["summary"].removeprefix(prefix) for alert in alerts
        ),
        details={
            "drifted_features": sorted(
                alert["target"] for alert in alerts if alert["rule"] == "feature_drift"
            ),
            "alerts": [{name: alert[name] for name in ("rule", "target", "severity", "summary")}
                       for alert in alerts],
        },
    )
    return note


def _notify(conn: Connection, config: MonitorsFile, alerts: list[dict], page_key: str,
            event: str, at: datetime, public_url: str) -> None:
    monitor = config.monitors.get(alerts[0]["monitor"])
    names = monitor.notify if monitor is not None else []
    enqueue(
        conn,
        alert_id=alerts[0]["alert_id"],
        dedup_key=page_key,
        notifiers={name: config.notifiers[name] for name in names},
        notification=page_notification(alerts, page_key, event, at, public_url),
        now=at,
    )


def _open(conn: Connection, *, key: str, monitor: str, rule: str, target: str, silenced: bool,
          run_id: int | None, now: datetime, **fields) -> dict:
    return sql.insert_alert(
        conn, dedup_key=key, monitor=monitor, rule=rule, target=target, status=TRIGGERED,
        first_run_id=run_id, last_run_id=run_id, silenced=silenced, triggered_at=now,
        last_fired_at=now, clean_windows=0, open_windows=1, flaps=0, **fields,
    )


def _page_out(conn: Connection, config: MonitorsFile, alerts: list[dict], now: datetime,
              public_url: str) -> list[dict]:
    """Page `alerts` together (a new page); returns them with their page key."""
    page_key = f"{alerts[0]['monitor']}/page/{alerts[0]['alert_id']}"
    paged = [sql.update_alert(conn, alert["alert_id"], page_key=page_key) for alert in alerts]
    _notify(conn, config, paged, page_key, "trigger", now, public_url)
    return paged


def _page_key(alert: dict) -> str:
    # An alert paged before pages existed went out alone, under its own key.
    return alert["page_key"] or alert["dedup_key"]


def _members(conn: Connection, alert: dict) -> list[dict]:
    """The alerts that went out in `alert`'s page (itself alone when paged before pages)."""
    return sql.page_members(conn, alert["page_key"]) if alert["page_key"] is not None else [alert]


def _resolve_pages(conn: Connection, config: MonitorsFile, resolved: list[dict], now: datetime,
                   public_url: str) -> None:
    """Send `resolve` for each page of the `resolved` alerts whose alerts are all resolved."""
    pages = {_page_key(alert): alert for alert in resolved if not alert["silenced"]}
    for page_key, alert in sorted(pages.items()):
        members = _members(conn, alert)
        if all(member["status"] == RESOLVED for member in members):
            _notify(conn, config, members, page_key, "resolve", now, public_url)


def _damping(alert: dict) -> OpenAlert:
    return OpenAlert(alert["clean_windows"], alert["open_windows"], alert["flaps"])


@dataclass
class _Changes:
    """What one window does to a monitor's alerts, sent out once it has judged them all."""

    changed: dict[int, dict[str, Any]] = field(default_factory=dict)  # by alert id
    to_page: list[dict[str, Any]] = field(default_factory=list)  # one new page
    refired: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by page key
    resolved: list[dict[str, Any]] = field(default_factory=list)

    def add(self, alert: dict[str, Any]) -> dict[str, Any]:
        self.changed[alert["alert_id"]] = alert
        return alert


def _fire(conn: Connection, monitor: MonitorConfig, name: str, run_id: int, fired: Firing,
          current: dict[str, Any] | None, now: datetime, changes: _Changes) -> None:
    """Condition `fired` holds in run `run_id`: open its alert, or keep `current` open."""
    silenced = sql.silenced(conn, name, fired.target, now)
    fields: dict[str, Any] = {"severity": fired.severity, "summary": fired.summary,
                              "details": fired.details}
    if current is None:
        alert = changes.add(_open(conn, key=fired.dedup_key(name), monitor=name, rule=fired.rule,
                                  target=fired.target, silenced=silenced, run_id=run_id, now=now,
                                  **fields))
        if not silenced:
            changes.to_page.append(alert)
        return
    state, _ = damp(_damping(current), FIRED, auto_resolve_after=monitor.auto_resolve_after,
                    min_open_windows=monitor.min_open_windows)
    fields.update(last_run_id=run_id, last_fired_at=now, clean_windows=state.clean_windows,
                  open_windows=state.open_windows, flaps=state.flaps)
    if current["silenced"] and not silenced and current["status"] == TRIGGERED:
        # Opened under a silence that has ended while the condition still holds: page
        # now. Acknowledged meanwhile, someone is on it: nobody is paged (it stays
        # `silenced`, which says just that).
        changes.to_page.append(changes.add(
            sql.update_alert(conn, current["alert_id"], silenced=False, **fields)
        ))
        return
    alert = changes.add(sql.update_alert(conn, current["alert_id"], **fields))
    if not alert["silenced"]:
        changes.refired.setdefault(_page_key(alert), []).append(alert)


def _judge(conn: Connection, monitor: MonitorConfig, alert: dict[str, Any], verdict: str,
           now: datetime, changes: _Changes) -> None:
    """Open `alert`'s condition did not fire: move it on by the window's `verdict`."""
    state, resolves = damp(_damping(alert), verdict,
                           auto_resolve_after=monitor.auto_resolve_after,
                           min_open_windows=monitor.min_open_windows)
    values: dict[str, Any] = {"clean_windows": state.clean_windows,
                              "open_windows": state.open_windows, "flaps": state.flaps}
    if resolves:
        values.update(status=RESOLVED, resolved_at=now, resolved_by="auto")
    changed = changes.add(sql.update_alert(conn, alert["alert_id"], **values))
    if resolves:
        changes.resolved.append(changed)


def apply_window(
    conn: Connection,
    config: MonitorsFile,
    name: str,
    run_id: int,
    evaluation: Evaluation,
    *,
    now: datetime,
    public_url: str,
) -> list[dict]:
    """Move the monitor's alerts on after run `run_id`; returns the alerts it opened or changed."""
    monitor: MonitorConfig = config.monitors[name]
    open_alerts = sql.open_alerts(conn, name)
    changes = _Changes()
    for fired in evaluation.firing:
        current = open_alerts.pop(fired.dedup_key(name), None)
        _fire(conn, monitor, name, run_id, fired, current, now, changes)
    for alert in open_alerts.values():
        verdict = evaluation.verdict(alert["rule"], alert["target"])
        if verdict != UNJUDGED:
            _judge(conn, monitor, alert, verdict, now, changes)
    if changes.to_page:
        for alert in _page_out(conn, config, changes.to_page, now, public_url):
            changes.add(alert)
    for page_key, alerts in changes.refired.items():
        _notify(conn, config, alerts, page_key, "refire", now, public_url)
    _resolve_pages(conn, config, changes.resolved, now, public_url)
    return list(changes.changed.values())


def raise_health(engine: Engine, config: MonitorsFile, name: str, error: str, failures: int, *,
                 now: datetime, public_url: str) -> dict | None:
    """The monitor `name` failed `failures` passes in a row with `error`: once that reaches its
    monitor_health rule's `after_failures`, its health alert is open (and paged once)."""
    rule = config.monitors[name].health
    if rule is None or failures < rule.after_failures:
        return None
    key = f"{name}/{HEALTH}/{HEALTH_TARGET}"
    fields = {
        "severity": rule.severity,
        "summary": (f"[{name}] the monitor cannot run: {failures} passes in a row failed; "
                    f"last error: {error}")[: max_chars(ALERTS.c.summary)],
        "details": {"failures": failures, "error": error},
    }
    with engine.begin() as conn:
        current = sql.open_alerts(conn, name).get(key)
        if current is not None:
            return sql.update_alert(conn, current["alert_id"], last_fired_at=now, **fields)
        silenced = sql.silenced(conn, name, HEALTH_TARGET, now)
        alert = _open(conn, key=key, monitor=name, rule=HEALTH, target=HEALTH_TARGET,
                      silenced=silenced, run_id=None, now=now, **fields)
        if not silenced:
            (alert,) = _page_out(conn, config, [alert], now, public_url)
        return alert


def clear_health(engine: Engine, config: MonitorsFile, name: str, *, now: datetime,
                 public_url: str) -> dict | None:
    """The monitor ran again: its open health alert (if any) resolves itself."""
    with engine.begin() as conn:
        current = sql.open_alerts(conn, name).get(f"{name}/{HEALTH}/{HEALTH_TARGET}")
        if current is None:
            return None
        alert = sql.update_alert(conn, current["alert_id"], status=RESOLVED, resolved_at=now,
                        resolved_by="auto")
        _resolve_pages(conn, config, [alert], now, public_url)
        return alert


def _get(conn: Connection, alert_id: int) -> dict:
    alert = sql.alert_for_update(conn, alert_id)
    if alert is None:
        raise UnknownAlertError(f"no alert with id {alert_id}")
    return alert


def acknowledge(
    engine: Engine, config: MonitorsFile, alert_id: int, by: str, *, public_url: str,
    now: datetime | None = None,
) -> dict:
    """Someone is on it: the page stops escalating. Acknowledging an alert acknowledges the
    open alerts of its page with it (one page, one acknowledgement); twice changes nothing."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        alert = _get(conn, alert_id)
        if alert["status"] == RESOLVED:
            raise AlertStateError(f"alert {alert_id} is already resolved")
        if alert["status"] == ACKNOWLEDGED:
            return alert
        together = [alert] if alert["silenced"] else _members(conn, alert)
        acknowledged = [
            sql.update_alert(conn, a["alert_id"], status=ACKNOWLEDGED, acknowledged_at=now,
                    acknowledged_by=by)
            for a in together if a["status"] == TRIGGERED
        ]
        if not alert["silenced"]:
            _notify(conn, config, acknowledged, _page_key(alert), "acknowledge", now, public_url)
        return next(a for a in acknowledged if a["alert_id"] == alert_id)


def resolve(
    engine: Engine, config: MonitorsFile, alert_id: int, by: str, *, public_url: str,
    now: datetime | None = None,
) -> dict:
    """Closed by a person. If the condition still holds, the next window opens a new alert. The
    page is resolved with its last alert."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        alert = _get(conn, alert_id)
        if alert["status"] == RESOLVED:
            raise AlertStateError(
                f"alert {alert_id} was already resolved by {alert['resolved_by']} at "
                f"{alert['resolved_at']}"
            )
        alert = sql.update_alert(conn, alert_id, status=RESOLVED, resolved_at=now, resolved_by=by)
        _resolve_pages(conn, config, [alert], now, public_url)
        return alert


def add_silence(
    engine: Engine, *, monitor: str, target: str | None, starts_at: datetime, ends_at: datetime,
    created_by: str, comment: str,
) -> dict:
    """No page for the monitor's alerts on `target` (every target when None) in the interval."""
    if ends_at <= starts_at:
        raise AlertError(f"a silence must end after it starts ({starts_at} .. {ends_at})")
    return sql.insert_silence(
        engine, monitor=monitor, target=target, starts_at=starts_at, ends_at=ends_at,
        created_by=created_by, comment=comment, created_at=datetime.now(UTC),
    )


def end_silence(engine: Engine, silence_id: int, *, now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    silence = sql.end_silence(engine, silence_id, now)
    if silence is None:
        raise UnknownSilenceError(f"no silence with id {silence_id}")
    return silence


def list_silences(engine: Engine, *, active_at: datetime | None = None) -> list[dict]:
    return sql.silences(engine, active_at)
