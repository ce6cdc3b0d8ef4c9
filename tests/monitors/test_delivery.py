"""Delivery against real misbehaving HTTP receivers (hanging, dripping, redirecting, closing,
429) and a real SQL database: bounded requests, lanes per notifier, rate limits, leases, and
the monitor worker's checks never waiting for a notifier."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from featurestore.db import engine as sql_engine
from monitors.config import MonitorsConfigSource, SlackNotifier
from monitors.notifiers import DeliveryError, build_request
from monitors.outbox import DeliveryCounts, Outbox
from monitors.store import ALERTS, OUTBOX
from monitors.worker import MonitorWorker
from tests.monitors.receiver import Receiver, Reply
from tests.monitors.test_notifiers import HMAC_KEY, Sender, notification
from tests.monitors.test_outbox import (  # noqa: F401 (postgres_url: a fixture)
    KEY_A,
    KEY_B,
    T0,
    add_alert,
    hook,
    postgres_url,
    queue,
    rows,
    sent,
)
from tests.servers import wait_for

DRIP = Reply(200, "ok", drip_seconds=2.0)  # a header byte every 2 s: never a read timeout
HANG = Reply(200, "ok", delay=3600)


@contextlib.contextmanager
def serving(outbox: Outbox) -> Iterator[None]:
    """`outbox` delivering on a thread of its own (as the worker's), until the block ends."""
    done = threading.Event()
    thread = threading.Thread(target=outbox.serve, args=(done, 0.1))
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.fixture
def engine(configure) -> sa.Engine:
    return sql_engine(configure())


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_KEY", HMAC_KEY)


def test_a_dripping_receiver_is_cut_at_the_deadline() -> None:
    with Receiver(default=DRIP) as dripping:
        request = build_request("hook", hook(dripping), notification())
        began = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            Sender(1.5).send(request)
    # Its whole answer would take a minute; httpx's per-read timeout never fires.
    assert time.monotonic() - began < 10
    assert caught.value.retryable
    assert caught.value.message == "notifier hook: no complete answer within 1.5 s"


def test_same_origin_307_and_308_are_followed_with_the_body(
    engine: sa.Engine
) -> None:
    with Receiver() as receiver:
        receiver.reply(Reply(307, "", {"Location": "/moved"}),
                       Reply(308, "", {"Location": receiver.url + "/final"}))
        queue(engine, {"hook": hook(receiver)}, add_alert(engine))
        assert Outbox(engine, {"hook": hook(receiver)}).deliver_due(T0) == DeliveryCounts(1, 0, 0)
        assert [r.path for r in receiver.received] == ["/hook", "/moved", "/final"]
        assert len({r.body for r in receiver.received}) == 1  # the same POST each time


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(302, "", {"Location": "/moved"}), "HTTP 302 redirect not followed"),
    (Reply(303, "", {"Location": "/moved"}), "HTTP 303 redirect not followed"),
    (Reply(307, "", {"Location": "http://127.0.0.2:9/x"}), "redirect to another origin"),
    (Reply(308, "", {"Location": "/hook"}), "more than 5 redirects"),
    (Reply(301, "moved"), "HTTP 301: moved"),
])
def test_redirects_not_followed_are_retried_never_dropped(
    engine: sa.Engine, reply: Reply, reason: str
) -> None:
    with Receiver(default=reply) as receiver:
        queue(engine, {"hook": hook(receiver)}, add_alert(engine))
        outbox = Outbox(engine, {"hook": hook(receiver)}, give_up_after=timedelta(hours=1))
        assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 0)
        (row,) = rows(engine)
        assert row["status"] == "pending" and reason in row["last_error"]
        # Until give_up_after, after which it fails loudly (an ERROR naming it).
        assert outbox.deliver_due(T0 + timedelta(hours=1)) == DeliveryCounts(0, 0, 1)


def test_a_receiver_that_closes_is_retried(engine: sa.Engine) -> None:
    with Receiver(default=Reply(close=True)) as closing:
        queue(engine, {"hook": hook(closing)}, add_alert(engine))
        assert Outbox(engine, {"hook": hook(closing)}).deliver_due(T0) == DeliveryCounts(0, 1, 0)
        assert "cannot reach it" in rows(engine)[0]["last_error"]


def test_a_429_holds_back_the_rest_of_that_notifier_only(engine: sa.Engine) -> None:
    with Receiver() as limited, Receiver() as other:
        notifiers = {"hook": hook(limited, concurrency=1), "other": hook(other)}
        for key in (KEY_A, KEY_B):
            queue(engine, notifiers, add_alert(engine, key), key=key)
        limited.reply(Reply(429, "slow down", {"Retry-After": "60"}))
        assert Outbox(engine, notifiers).deliver_due(T0) == DeliveryCounts(2, 1, 0)
        assert sent(limited) == [("trigger", KEY_A)]  # KEY_B waits with it
        assert sorted(sent(other)) == [("trigger", KEY_A), ("trigger", KEY_B)]


def test_slack_gets_at_most_one_message_a_second(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver() as chat:
        monkeypatch.setenv("SLACK_URL", chat.url + "/services/T/B/x")
        notifiers = {"chat": SlackNotifier(type="slack", webhook_url_env="SLACK_URL")}
        for key in (KEY_A, KEY_B, KEY_A + "2"):
            queue(engine, notifiers, add_alert(engine, key), key=key)
        assert Outbox(engine, notifiers).deliver_due(T0) == DeliveryCounts(3, 0, 0)
        arrivals = [r.at for r in chat.received]
    # Started 1 s apart; what the network adds or takes away stays far below half of that.
    assert all(later - earlier >= 0.5 for earlier, later in itertools.pairwise(arrivals))


def test_a_2xx_after_the_deadline_is_sent_again_under_the_same_keys(engine: sa.Engine) -> None:
    with Receiver() as receiver:
        receiver.reply(Reply(200, "late", delay=2.0))
        notifiers = {"hook": hook(receiver)}
        queue(engine, notifiers, add_alert(engine))
        outbox = Outbox(engine, notifiers, deadline_seconds=0.5)
        assert outbox.deliver_due(T0) == DeliveryCounts(0, 1, 0)
        assert outbox.deliver_due(T0 + timedelta(minutes=1)) == DeliveryCounts(1, 0, 0)
        first, second = receiver.received
    # The receiver saw it twice (at least once): the keys let it drop the second.
    for header in ("idempotency-key", "webhook-id"):
        assert first.headers[header] == second.headers[header]
    assert first.headers["webhook-id"].startswith("featurestore-alert-")


def test_a_lease_is_renewed_while_its_row_waits_for_the_rate_limit(engine: sa.Engine) -> None:
    # Two rows, one lane of 0.2 requests a second: the second waits 5 s for its turn, past
    # the 3 s lease it was claimed with (renewed each second). A second deliverer polling all
    # along must not take it from the first.
    with Receiver() as receiver:
        notifiers = {"hook": hook(receiver, max_per_second=0.2)}
        for key in (KEY_A, KEY_B):
            queue(engine, notifiers, add_alert(engine, key), key=key)
        first = Outbox(engine, notifiers, deadline_seconds=1.0, lease_margin_seconds=2.0)
        with serving(first):
            # The first has claimed both rows once it sent one (its lane takes two at a time).
            wait_for(lambda: receiver.received, 15, "the first deliverer's first send")
            second = Outbox(engine, notifiers, deadline_seconds=1.0)
            deadline = time.monotonic() + 30
            while len(receiver.received) < 2 and time.monotonic() < deadline:
                second.deliver_due()
                time.sleep(0.1)
        assert sorted(sent(receiver)) == [("trigger", KEY_A), ("trigger", KEY_B)]
        assert first.counts().delivered == 2 and second.counts().delivered == 0


MONITORS = """
interval_seconds: 0.5
delivery_deadline_seconds: 2
notifiers:
  hanging: {{type: webhook, url: "{hanging}/hook", secret_env: HOOK_KEY}}
  dripping: {{type: webhook, url: "{dripping}/hook", secret_env: HOOK_KEY}}
  good: {{type: webhook, url: "{good}/hook", secret_env: HOOK_KEY}}
monitors:
  first:
    feature_view: txn
    baseline: 7
    window: {{rows: 100}}
    rules: [{{kind: feature_drift}}, {{kind: monitor_health, after_failures: 1}}]
    notify: [hanging, dripping, good]
  second:
    feature_view: other
    window: {{rows: 100}}
    rules: [{{kind: feature_drift}}, {{kind: monitor_health, after_failures: 1}}]
    notify: [hanging, dripping, good]
"""


def _health(engine: sa.Engine) -> dict[str, int]:
    """Failed passes in a row per monitor, as its open monitor_health alert counts them."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(ALERTS.c.monitor, ALERTS.c.details).where(
            ALERTS.c.rule == "monitor_health", ALERTS.c.status != "resolved"))
        return {monitor: details["failures"] for monitor, details in found}


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql",
                                                             marks=pytest.mark.postgres)])
def test_a_hanging_and_a_dripping_receiver_hold_up_neither_checks_nor_other_receivers(
    configure, tmp_path, request, database: str
) -> None:
    # Neither monitor can run (no baseline): each pass raises or updates its monitor_health
    # alert, so the alerts count the passes, and each alert is a page for all three receivers.
    with Receiver(default=HANG) as hanging, Receiver(default=DRIP) as dripping, \
            Receiver() as good:
        path = tmp_path / "monitors.yaml"
        path.write_text(MONITORS.format(hanging=hanging.url, dripping=dripping.url,
                                        good=good.url))
        database_url = (request.getfixturevalue("postgres_url") if database == "postgresql"
                        else f"sqlite:///{tmp_path / 'monitors.db'}")
        settings = configure(monitors_config=str(path), database_url=database_url)
        worker = MonitorWorker(settings, MonitorsConfigSource(path).current)
        stop = threading.Event()
        running = threading.Thread(target=worker.run, args=(stop,))
        running.start()
        try:
            # The good receiver hears both pages within seconds, while the hanging one holds
            # its requests open.
            wait_for(lambda: len(good.received) == 2, 15, "both pages at the good receiver")
            assert {r.json()["monitor"] for r in good.received} == {"first", "second"}
            wait_for(lambda: hanging.received and dripping.received, 15,
                     "the hanging and the dripping receiver reached")
            # Every monitor is still checked each interval while they hang and drip.
            passes = _health(worker.engine)
            wait_for(lambda: all(n >= passes[m] + 4 for m, n in _health(worker.engine).items()),
                     15, "four more passes of each monitor")
            # The dripping request was cut at its 2 s deadline, and waits for its retry.
            def dripping_errors() -> set[str]:
                with worker.engine.connect() as conn:
                    return set(conn.execute(sa.select(OUTBOX.c.last_error).where(
                        OUTBOX.c.notifier == "dripping")).scalars())

            wait_for(lambda: "notifier dripping: no complete answer within 2 s"
                     in dripping_errors(), 15, "the dripping request cut at its deadline")
        finally:
            stop.set()
            running.join(30)
        assert not running.is_alive()


RELOADED = """
notifiers:
  first: {{type: webhook, url: "{first}/hook", secret_env: HOOK_KEY}}
{extra}
monitors:
  m:
    feature_view: txn
    window: {{rows: 100}}
    rules: [{{kind: feature_drift}}]
    notify: [{notify}]
"""


def test_the_worker_delivers_for_a_notifier_added_to_the_file_after_it_started(
    configure, tmp_path
) -> None:
    from monitors.alerts import acknowledge
    from monitors.config import config_source

    with Receiver() as first, Receiver() as added:
        path = tmp_path / "monitors.yaml"
        path.write_text(RELOADED.format(first=first.url, extra="", notify="first"))
        settings = configure(monitors_config=str(path))
        worker = MonitorWorker(settings, MonitorsConfigSource(path).current)
        alert_id = add_alert(worker.engine)
        with worker.engine.begin() as conn:
            conn.execute(sa.update(ALERTS).values(monitor="m"))
        # The file gains a notifier; the API (its own reading of the file) acknowledges.
        path.write_text(RELOADED.format(
            first=first.url, notify="first, added",
            extra=f'  added: {{type: webhook, url: "{added.url}/hook", secret_env: HOOK_KEY}}'))
        acknowledge(worker.engine, config_source(path).current(), alert_id, "alice",
                    public_url="http://fs")
        assert worker.outbox.deliver_due() == DeliveryCounts(2, 0, 0)
        assert [r.json()["event"] for r in added.received] == ["acknowledge"]
        # An invalid edit: the worker goes on with the last valid version.
        path.write_text("monitors: {m: {window: {rows: 0}}}\n")
        assert set(worker.config.notifiers) == {"first", "added"}
        worker.close()


def test_a_hanging_notifiers_backlog_does_not_crowd_out_the_others(engine: sa.Engine) -> None:
    # More rows of the hanging notifier than a query's batch, older than the good one's.
    hanging, good = Receiver(default=HANG).start(), Receiver().start()
    notifiers = {"hanging": hook(hanging), "good": hook(good)}
    for number in range(5):
        key = f"{KEY_A}/{number}"
        queue(engine, {"hanging": notifiers["hanging"]}, add_alert(engine, key), key=key)
    queue(engine, {"good": notifiers["good"]}, add_alert(engine, KEY_B), key=KEY_B)
    outbox = Outbox(engine, notifiers, deadline_seconds=60, batch=3)
    try:
        with serving(outbox):
            try:
                # Well before the hanging requests' deadline ends them.
                wait_for(lambda: good.received, 30, "the good notifier's row sent")
                wait_for(lambda: len(hanging.received) >= 2, 30, "the hanging lane full")
                assert len(hanging.received) == 2  # its concurrency: no third while two hang
            finally:
                hanging.stop()  # releases the hanging answers: their requests end at once
    finally:
        good.stop()
