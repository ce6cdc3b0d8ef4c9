"""The durable outbox against a real local HTTP receiver: retries, backoff, order per key,
failures, restarts (PostgreSQL), and no secret stored or logged. Time moves by `now=`."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from monitors.config import (
    AlertmanagerNotifier,
    PagerDutyNotifier,
    SlackNotifier,
    WebhookNotifier,
)
from monitors.outbox import DeliveryCounts, Outbox, enqueue
from monitors.store import ALERTS, OUTBOX
from tests.conftest import POSTGRES_URL
from tests.monitors.receiver import Receiver, Reply
from tests.monitors.test_notifiers import HMAC_KEY, ROUTING_KEY, SLACK_TOKEN_PATH, notification

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
KEY_A = "fraud/feature_drift/card_transaction_features:amount_mean_1h"
KEY_B = "fraud/null_rate/card_transaction_features:merchant_category"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(default=Reply(202, '{"status":"success"}')) as running:
        yield running


@pytest.fixture
def engine(configure) -> sa.Engine:
    """SQLite in the test's own data dir."""
    from featurestore.db import engine as sql_engine

    return sql_engine(configure())


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("PD_KEY", ROUTING_KEY)
    monkeypatch.setenv("SLACK_URL", receiver.url + SLACK_TOKEN_PATH)
    monkeypatch.setenv("HOOK_KEY", HMAC_KEY)


def hook(receiver: Receiver, **options) -> WebhookNotifier:
    return WebhookNotifier(type="webhook", url=receiver.url + "/hook", secret_env="HOOK_KEY",
                           **options)


def pagerduty(receiver: Receiver) -> PagerDutyNotifier:
    return PagerDutyNotifier(type="pagerduty", routing_key_env="PD_KEY",
                             url=receiver.url + "/v2/enqueue")


def add_alert(engine: sa.Engine, key: str = KEY_A) -> int:
    """An ALERTS row for the outbox rows to point at."""
    with engine.begin() as conn:
        return conn.execute(sa.insert(ALERTS).values(
            dedup_key=key, monitor="fraud", rule=key.split("/")[1], target=key.split("/")[2],
            severity="warning", status="triggered", summary="drifted", details={},
            clean_windows=0, silenced=False, triggered_at=T0, last_fired_at=T0,
        )).inserted_primary_key[0]


def queue(
    engine: sa.Engine, notifiers: dict, alert_id: int, event: str = "trigger",
    key: str = KEY_A, now: datetime = T0,
) -> int:
    with engine.begin() as conn:
        return enqueue(
            conn, alert_id=alert_id, dedup_key=key, notifiers=notifiers,
            notification=notification(event, alert_id=alert_id, dedup_key=key, at=now.isoformat()),
            now=now,
        )


def rows(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(OUTBOX).order_by(OUTBOX.c.message_id))
        return [dict(row._mapping) for row in found]


def utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def sent(receiver: Receiver) -> list[tuple[str, str]]:
    """(event, dedup_key) of each request the receiver got, in order (webhook bodies)."""
    return [(r.json()["event"], r.json()["dedup_key"]) for r in receiver.received]


def test_enqueue_writes_a_row_per_notifier_that_takes_the_event(
    engine: sa.Engine, receiver: Receiver
) -> None:
    notifiers = {
        "pd": pagerduty(receiver),
        "am": AlertmanagerNotifier(type="alertmanager", url=receiver.url),
        "chat": SlackNotifier(type="slack", webhook_url_env="SLACK_URL"),
        "hook": hook(receiver),
    }
    alert_id = add_alert(engine)
    counts = [queue(engine, notifiers, alert_id, event) for event in
              ("trigger", "refire", "acknowledge", "resolve")]
    assert counts == [4, 1, 3, 4]
    found = rows(engine)
    assert [(r["event"], r["notifier"]) for r in found] == [
        ("trigger", "pd"), ("trigger", "am"), ("trigger", "chat"), ("trigger", "hook"),
        ("refire", "am"),
        ("acknowledge", "pd"), ("acknowledge", "chat"), ("acknowledge", "hook"),
        ("resolve", "pd"), ("resolve", "am"), ("resolve", "chat"), ("resolve", "hook"),
    ]
    first = found[0]
    assert first["alert"] == notification(alert_id=alert_id, dedup_key=KEY_A, at=T0.isoformat())
    assert (first["alert_id"], first["dedup_key"], first["status"], first["attempts"]) == (
        alert_id, KEY_A, "pending", 0
    )
    assert utc(first["next_attempt_at"]) == T0 and utc(first["created_at"]) == T0
    assert first["last_error"] is None and first["delivered_at"] is None


def test_enqueue_belongs_to_the_callers_transaction(engine: sa.Engine, receiver: Receiver) -> None:
    alert_id = add_alert(engine)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        enqueue(conn, alert_id=alert_id, dedup_key=KEY_A, notifiers={"hook": hook(receiver)},
                notification=notification(alert_id=alert_id), now=T0)
        raise RuntimeError("the alert change failed")
    assert rows(engine) == []


def test_due_rows_are_delivered_once_in_order(engine: sa.Engine, receiver: Receiver) -> None:
    notifiers = {"hook": hook(receiver)}
    first, second = add_alert(engine, KEY_A), add_alert(engine, KEY_B)
    queue(engine, notifiers, first, key=KEY_A)
    queue(engine, notifiers, second, key=KEY_B)
    queue(engine, notifiers, first, "resolve", KEY_A, now=T0 + timedelta(minutes=5))
    outbox = Outbox(engine, notifiers)
    assert outbox.deliver_due(T0 - timedelta(seconds=1)) == DeliveryCounts(0, 0, 0)
    assert outbox.deliver_due(T0) == DeliveryCounts(2, 0, 0)
    assert outbox.deliver_due(T0 + timedelta(minutes=5)) == DeliveryCounts(1, 0, 0)
    assert outbox.deliver_due(T0 + timedelta(hours=1)) == DeliveryCounts(0, 0, 0)
    # Two keys go concurrently (in either order); one key's rows in order.
    assert sorted(sent(receiver)[:2]) == [("trigger", KEY_A), ("trigger", KEY_B)]
    assert sent(receiver)[2] == ("resolve", KEY_A)
    found = rows(engine)
    assert [(r["status"], r["attempts"], r["last_error"]) for r in found] == [
        ("delivered", 1, None)
    ] * 3
    assert [utc(r["delivered_at"]) for r in found] == [T0, T0, T0 + timedelta(minutes=5)]


def test_a_receiver_that_is_down_gets_it_after_backoff(
    engine: sa.Engine, receiver: Receiver
) -> None:
    notifiers = {"hook": hook(receiver)}
    queue(engine, notifiers, add_alert(engine))
    outbox = Outbox(engine, notifiers, backoff_base_seconds=2, backoff_max_seconds=20)
    receiver.stop()
    now = T0
    for failures, nominal in enumerate([2, 4, 8, 16, 20, 20]):
        assert outbox.deliver_due(now) == DeliveryCounts(0, 1, 0)
        [row] = rows(engine)
        wait = (utc(row["next_attempt_at"]) - now).total_seconds()
        assert nominal / 2 <= wait <= nominal, (failures, wait)
        assert row["attempts"] == failures + 1 and row["status"] == "pending"
        assert row["last_error"].startswith("notifier hook: cannot reach it (ConnectError")
        now = utc(row["next_attempt_at"])
        # Not before its time, even with the receiver back.
        assert outbox.deliver_due(now - timedelta(milliseconds=1)) == DeliveryCounts(0, 0, 0)
    receiver.start()
    assert outbox.deliver_due(now) == DeliveryCounts(1, 0, 0)
    [row] = rows(engine)
    assert (row["status"], row["attempts"], utc(row["delivered_at"])) == ("delivered", 7, now)
    assert sent(receiver) == [("trigger", KEY_A)]


def test_a_server_error_is_retried_with_the_same_request(
    engine: sa.Engine, receiver: Receiver
) -> None:
    notifiers = {"pd": pagerduty(receiver)}
    queue(engine, notifiers, add_alert(engine))
    receiver.reply(Reply(500, "internal error"), Reply(202, '{"status":"success"}'))
    outbox = Outbox(engine, notifiers)
    assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 0)
    [row] = rows(engine)
    assert row["last_error"] == "notifier pd: HTTP 500: internal error"
    assert outbox.deliver_due(utc(row["next_attempt_at"])) == DeliveryCounts(1, 0, 0)
    first, second = receiver.received
    assert first.body == second.body and first.path == second.path == "/v2/enqueue"
    assert first.json()["event_action"] == "trigger"
    assert rows(engine)[0]["status"] == "delivered"


def test_retry_after_is_honoured(engine: sa.Engine, receiver: Receiver) -> None:
    notifiers = {"pd": pagerduty(receiver)}
    queue(engine, notifiers, add_alert(engine))
    receiver.reply(Reply(429, "", {"Retry-After": "120"}))
    outbox = Outbox(engine, notifiers, backoff_max_seconds=5)
    assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 0)
    assert utc(rows(engine)[0]["next_attempt_at"]) == T0 + timedelta(seconds=120)
    assert outbox.deliver_due(T0 + timedelta(seconds=119)) == DeliveryCounts(0, 0, 0)
    assert outbox.deliver_due(T0 + timedelta(seconds=120)) == DeliveryCounts(1, 0, 0)
    assert len(receiver.received) == 2


def test_a_rejected_message_fails_at_once_and_frees_its_key(
    engine: sa.Engine, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    notifiers = {"hook": hook(receiver)}
    alert_id = add_alert(engine)
    queue(engine, notifiers, alert_id)
    queue(engine, notifiers, alert_id, "resolve")
    receiver.reply(Reply(400, "unknown field"))
    outbox = Outbox(engine, notifiers)
    with caplog.at_level(logging.ERROR, logger="monitors.outbox"):
        assert outbox.deliver_due(T0) == DeliveryCounts(1, 0, 1)
    trigger, resolve = rows(engine)
    assert (trigger["status"], trigger["attempts"]) == ("failed", 1)
    assert trigger["last_error"] == "notifier hook: HTTP 400: unknown field"
    assert resolve["status"] == "delivered"
    assert sent(receiver) == [("trigger", KEY_A), ("resolve", KEY_A)]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert f"of alert {alert_id} ({KEY_A}) to notifier hook failed" in record.getMessage()
    assert record.getMessage().endswith("HTTP 400: unknown field")
    # Never tried again.
    assert outbox.deliver_due(T0 + timedelta(days=1)) == DeliveryCounts(0, 0, 0)


def test_a_resolve_never_overtakes_its_trigger(engine: sa.Engine, receiver: Receiver) -> None:
    notifiers = {"hook": hook(receiver, concurrency=1)}  # one at a time: replies in order
    first, second = add_alert(engine, KEY_A), add_alert(engine, KEY_B)
    queue(engine, notifiers, first, key=KEY_A)
    queue(engine, notifiers, second, key=KEY_B)
    queue(engine, notifiers, first, "resolve", KEY_A)
    receiver.reply(503)  # the first trigger of KEY_A
    outbox = Outbox(engine, notifiers, backoff_base_seconds=60)
    # KEY_B is not held up by KEY_A; KEY_A's resolve, due too, waits for its trigger.
    assert outbox.deliver_due(T0) == DeliveryCounts(1, 1, 0)
    assert sent(receiver) == [("trigger", KEY_A), ("trigger", KEY_B)]
    assert outbox.deliver_due(T0 + timedelta(seconds=29)) == DeliveryCounts(0, 0, 0)
    retry_at = utc(rows(engine)[0]["next_attempt_at"])
    # Once the trigger goes, its resolve follows in the same pass.
    assert outbox.deliver_due(retry_at) == DeliveryCounts(2, 0, 0)
    assert sent(receiver)[2:] == [("trigger", KEY_A), ("resolve", KEY_A)]


def test_notifiers_gone_from_the_config_wait_and_changed_kinds_fail_clearly(
    engine: sa.Engine, receiver: Receiver
) -> None:
    alert_id = add_alert(engine)
    queue(engine, {"old": hook(receiver)}, alert_id)
    queue(engine, {"am": AlertmanagerNotifier(type="alertmanager", url=receiver.url)},
          alert_id, "refire")
    # "am" is a webhook now, which takes no refire; "old" is not in the file in use, which may
    # be older than the edit that queued it: it waits for the file.
    in_use = {"am": hook(receiver)}
    outbox = Outbox(engine, lambda: in_use)  # the file in use, read at each pass
    assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 1)
    assert [(r["status"], r["last_error"]) for r in rows(engine)] == [
        ("pending", "notifier old is not in the monitors file in use"),
        ("failed", (
            "notifier am (type webhook) does not take refire events; the monitors file "
            "changed since it was queued"
        )),
    ]
    assert receiver.received == []
    in_use["old"] = hook(receiver)  # the edit that declares it is loaded
    assert outbox.deliver_due(T0 + timedelta(minutes=1)) == DeliveryCounts(1, 0, 0)


def test_retries_end_after_give_up_after(
    engine: sa.Engine, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    notifiers = {"hook": hook(receiver)}
    queue(engine, notifiers, add_alert(engine))
    receiver.stop()
    outbox = Outbox(engine, notifiers, give_up_after=timedelta(hours=1))
    assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 0)
    assert outbox.deliver_due(T0 + timedelta(minutes=59)) == DeliveryCounts(0, 1, 0)
    with caplog.at_level(logging.ERROR, logger="monitors.outbox"):
        assert outbox.deliver_due(T0 + timedelta(hours=1)) == DeliveryCounts(0, 0, 1)
    [row] = rows(engine)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["last_error"].startswith(
        "gave up after 3 attempts over 1:00:00: notifier hook: cannot reach it"
    )
    assert "gave up after 3 attempts" in caplog.records[-1].getMessage()


def test_a_missing_secret_holds_the_message_until_it_is_set(
    engine: sa.Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifiers = {"hook": hook(receiver)}
    queue(engine, notifiers, add_alert(engine))
    monkeypatch.delenv("HOOK_KEY")
    outbox = Outbox(engine, notifiers)
    assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 0)
    [row] = rows(engine)
    assert "HOOK_KEY is not set" in row["last_error"] and row["status"] == "pending"
    monkeypatch.setenv("HOOK_KEY", HMAC_KEY)
    assert outbox.deliver_due(utc(row["next_attempt_at"])) == DeliveryCounts(1, 0, 0)
    assert receiver.received[0].headers["x-featurestore-signature"].startswith("sha256=")


def test_secrets_are_neither_stored_nor_logged(
    engine: sa.Engine, receiver: Receiver, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A receiver per notifier: they are sent to concurrently.
    with Receiver() as chat, Receiver() as pd:
        slack_url = chat.url + SLACK_TOKEN_PATH
        monkeypatch.setenv("SLACK_URL", slack_url)
        notifiers = {"pd": pagerduty(pd),
                     "chat": SlackNotifier(type="slack", webhook_url_env="SLACK_URL"),
                     "hook": hook(receiver)}
        queue(engine, notifiers, add_alert(engine))
        # Each notifier first echoes what it got into an error, then takes the message.
        pd.reply(Reply(500, f"routing key {ROUTING_KEY} throttled"))
        chat.reply(Reply(503, f"webhook {slack_url} busy"))
        receiver.reply(Reply(502, f"key {HMAC_KEY}"))
        outbox = Outbox(engine, notifiers)
        with caplog.at_level(logging.DEBUG):
            assert outbox.deliver_due(T0) == DeliveryCounts(0, 3, 0)
            assert outbox.deliver_due(T0 + timedelta(minutes=10)) == DeliveryCounts(3, 0, 0)
    assert any(r.name == "httpx" for r in caplog.records)  # httpx logged each request
    stored = repr(rows(engine))
    logged = caplog.text
    for secret in (ROUTING_KEY, slack_url, SLACK_TOKEN_PATH, HMAC_KEY):
        assert secret not in stored and secret not in logged, secret
    assert "notifier chat: HTTP 503: webhook <secret> busy" in logged


def test_two_deliverers_send_each_message_once(engine: sa.Engine, receiver: Receiver) -> None:
    notifiers = {"hook": hook(receiver)}
    for key in (KEY_A, KEY_B, KEY_A + "x"):
        queue(engine, notifiers, add_alert(engine, key), key=key)
    receiver.default = Reply(200, "", delay=0.2)
    results: list[DeliveryCounts] = []
    threads = [
        threading.Thread(target=lambda: results.append(Outbox(engine, notifiers).deliver_due(T0)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent(receiver)) == sorted(("trigger", k) for k in (KEY_A, KEY_B, KEY_A + "x"))
    assert sum(r.delivered for r in results) == 3


def _counter(notifier: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "featurestore_monitor_notifications_total", {"notifier": notifier, "outcome": outcome}
    )
    return value or 0.0


def test_outcomes_are_counted_for_prometheus(engine: sa.Engine, receiver: Receiver) -> None:
    name = f"hook-{uuid.uuid4().hex[:6]}"
    notifiers = {name: hook(receiver)}
    alert_id = add_alert(engine)
    for event in ("trigger", "acknowledge", "resolve"):
        queue(engine, notifiers, alert_id, event)
    receiver.reply(500, 400)
    outbox = Outbox(engine, notifiers, backoff_base_seconds=1)
    outbox.deliver_due(T0)
    outbox.deliver_due(T0 + timedelta(minutes=1))
    assert [_counter(name, o) for o in ("delivered", "retried", "failed")] == [2.0, 1.0, 1.0]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The test PostgreSQL, in a schema of this test's own (other tests use the same database)."""
    schema = f"outbox_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.mark.postgres
def test_delivery_continues_after_a_worker_restart(
    configure, postgres_url: str, receiver: Receiver
) -> None:
    from featurestore.db import engine as sql_engine

    first_engine = sql_engine(configure(database_url=postgres_url))
    with first_engine.connect() as conn:  # the test's own schema, not the shared one
        assert conn.execute(sa.text("SELECT current_schema()")).scalar().startswith("outbox_")
    notifiers = {"hook": hook(receiver)}
    alert_id = add_alert(first_engine)
    queue(first_engine, notifiers, alert_id)
    queue(first_engine, notifiers, alert_id, "resolve")
    receiver.stop()
    assert Outbox(first_engine, notifiers).deliver_due(T0) == DeliveryCounts(0, 1, 0)
    first_engine.dispose()  # the worker is gone: nothing of it survives but the database

    receiver.start()
    second_engine = sa.create_engine(postgres_url)
    try:
        trigger, resolve = rows(second_engine)
        assert (trigger["status"], trigger["attempts"]) == ("pending", 1)
        assert (resolve["status"], resolve["attempts"]) == ("pending", 0)
        assert trigger["last_error"].startswith("notifier hook: cannot reach it")
        restarted = Outbox(second_engine, notifiers)
        # Its backoff survived too: not due before the time the first worker set.
        retry_at = trigger["next_attempt_at"]
        assert restarted.deliver_due(retry_at - timedelta(milliseconds=1)) == DeliveryCounts(
            0, 0, 0
        )
        assert restarted.deliver_due(retry_at) == DeliveryCounts(2, 0, 0)
        assert sent(receiver) == [("trigger", KEY_A), ("resolve", KEY_A)]
        assert [(r["status"], r["attempts"]) for r in rows(second_engine)] == [
            ("delivered", 2), ("delivered", 1)
        ]
    finally:
        second_engine.dispose()
