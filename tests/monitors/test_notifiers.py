"""Notifier payloads, checked field by field by a real local HTTP receiver, and how answers are read."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from monitors.config import (
    AlertmanagerNotifier,
    PagerDutyNotifier,
    SlackNotifier,
    WebhookNotifier,
)
from monitors.notifiers import (
    DeliveryError,
    accepts,
    build_request,
    pagerduty_dedup_key,
    retry_after_seconds,
    send,
    verify_signature,
)
from tests.monitors.receiver import Receiver, Reply

ROUTING_KEY = "pd-routing-key-0123456789abcdef0123"
SLACK_TOKEN_PATH = "/services/T0001/B0002/slack-token-abcdef"
HMAC_KEY = "webhook-signing-key-5f2c"
EVENTS = ("trigger", "refire", "acknowledge", "resolve")
STATUS = {"trigger": "triggered", "refire": "triggered", "acknowledge": "acknowledged",
          "resolve": "resolved"}


def notification(event: str = "trigger", **changes: object) -> dict:
    """A notification as monitors/alerts.py queues it."""
    value = {
        "event": event,
        "alert_id": 42,
        "dedup_key": "fraud/feature_drift/card_transaction_features:amount_mean_1h",
        "monitor": "fraud",
        "rule": "feature_drift",
        "target": "card_transaction_features:amount_mean_1h",
        "severity": "warning",
        "status": STATUS[event],
        "summary": "card_transaction_features:amount_mean_1h drifted in 2 windows (psi 0.31)",
        "details": {"method": "psi", "statistic": 0.31, "threshold": 0.1, "windows": 2},
        "triggered_at": "2025-03-01T11:30:00+00:00",
        "at": "2025-03-01T12:00:00+00:00",
        "run_id": 7,
        "report_url": "http://fs.example:8000/v1/drift-runs/7/report",
        "alert_url": "http://fs.example:8000/v1/alerts/42",
        "source": "featurestore monitor fraud",
    }
    value.update(changes)
    value.setdefault("alerts", [{
        name: value[name] for name in ("alert_id", "rule", "target", "severity", "status",
                                       "summary", "details", "triggered_at")
    } | {"dedup_key": "fraud/feature_drift/card_transaction_features:amount_mean_1h"}])
    return value


class Sender:
    """`send` on an event loop of its own, within `deadline` seconds, as the outbox sends."""

    def __init__(self, deadline: float = 2.0) -> None:
        self.deadline = deadline

    def send(self, request) -> None:
        async def once() -> None:
            async with httpx.AsyncClient(timeout=self.deadline) as client:
                await send(client, request, self.deadline)

        asyncio.run(once())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def client() -> Sender:
    return Sender()


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("PD_KEY", ROUTING_KEY)
    monkeypatch.setenv("SLACK_URL", receiver.url + SLACK_TOKEN_PATH)
    monkeypatch.setenv("HOOK_KEY", HMAC_KEY)


def configs(url: str) -> dict[str, object]:
    return {
        "pagerduty": PagerDutyNotifier(type="pagerduty", routing_key_env="PD_KEY",
                                       url=url + "/v2/enqueue"),
        "alertmanager": AlertmanagerNotifier(type="alertmanager", url=url + "/"),
        "slack": SlackNotifier(type="slack", webhook_url_env="SLACK_URL"),
        "webhook": WebhookNotifier(type="webhook", url=url + "/hooks/fs", secret_env="HOOK_KEY"),
    }


def deliver(client: Sender, receiver: Receiver, kind: str, note: dict, **kw) -> dict:
    """Send `note` through notifier `kind` and return what the receiver got."""
    request = build_request(kind, configs(receiver.url)[kind], note, **kw)
    client.send(request)
    return receiver.received[-1]


# Which events each kind takes, as the contract lists them.
TAKES = {
    "pagerduty": {"trigger", "acknowledge", "resolve"},
    "slack": {"trigger", "acknowledge", "resolve"},
    "webhook": {"trigger", "acknowledge", "resolve"},
    "alertmanager": {"trigger", "refire", "resolve"},
}


@pytest.mark.usefixtures("secrets")
def test_each_kind_takes_the_events_of_the_contract(receiver: Receiver) -> None:
    for kind, config in configs(receiver.url).items():
        for event in EVENTS:
            taken = event in TAKES[kind]
            assert accepts(config, event) is taken, (kind, event)
            request = build_request(kind, config, notification(event))
            assert (request is not None) is taken, (kind, event)


@pytest.mark.usefixtures("secrets")
def test_pagerduty_trigger_field_by_field(client: Sender, receiver: Receiver) -> None:
    receiver.reply(Reply(202, '{"status":"success","dedup_key":"x"}'))
    note = notification()
    got = deliver(client, receiver, "pagerduty", note)
    assert (got.method, got.path) == ("POST", "/v2/enqueue")
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": note["dedup_key"],
        "payload": {
            "summary": note["summary"],
            "source": "featurestore monitor fraud",
            "severity": "warning",
            "timestamp": "2025-03-01T12:00:00+00:00",
            "component": "card_transaction_features:amount_mean_1h",
            "group": "fraud",
            "class": "feature_drift",
            "custom_details": {
                "method": "psi", "statistic": 0.31, "threshold": 0.1, "windows": 2,
                "target": "card_transaction_features:amount_mean_1h", "run_id": 7, "alert_id": 42,
            },
        },
        "links": [
            {"href": "http://fs.example:8000/v1/drift-runs/7/report", "text": "Drift report"},
            {"href": "http://fs.example:8000/v1/alerts/42", "text": "Alert 42 in featurestore"},
        ],
        "client": "featurestore",
        "client_url": "http://fs.example:8000/v1/alerts/42",
    }


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize("event", ["acknowledge", "resolve"])
def test_pagerduty_acknowledge_and_resolve_name_the_alert_only(
    client: Sender, receiver: Receiver, event: str
) -> None:
    receiver.reply(202)
    got = deliver(client, receiver, "pagerduty", notification(event))
    assert got.json() == {
        "routing_key": ROUTING_KEY,
        "event_action": event,
        "dedup_key": "fraud/feature_drift/card_transaction_features:amount_mean_1h",
    }


@pytest.mark.usefixtures("secrets")
def test_pagerduty_limits(client: Sender, receiver: Receiver) -> None:
    long_key = "fraud/null_rate/" + "v" * 300 + ":f"
    receiver.reply(202)
    got = deliver(client, receiver, "pagerduty", notification(
        summary="s" * 2000, dedup_key=long_key, report_url=None,
    ))
    body = got.json()
    assert body["payload"]["summary"] == "s" * 1024
    assert body["dedup_key"] == pagerduty_dedup_key(long_key)
    assert [link["text"] for link in body["links"]] == ["Alert 42 in featurestore"]
    # Within PagerDuty's 255 characters, stable, and distinct for keys with the same head.
    assert len(pagerduty_dedup_key(long_key)) == 255
    assert pagerduty_dedup_key(long_key).startswith(long_key[:200])
    assert pagerduty_dedup_key(long_key + "x") != pagerduty_dedup_key(long_key)
    assert pagerduty_dedup_key("a/b/c") == "a/b/c"


@pytest.mark.parametrize(
    ("event", "ends"),
    [
        ("trigger", datetime(2025, 3, 2, 12, tzinfo=UTC)),
        ("refire", datetime(2025, 3, 2, 12, tzinfo=UTC)),
        ("resolve", datetime(2025, 3, 1, 12, tzinfo=UTC)),
    ],
)
def test_alertmanager_alert_field_by_field(
    client: Sender, receiver: Receiver, event: str, ends: datetime
) -> None:
    note = notification(event)
    got = deliver(client, receiver, "alertmanager", note)
    assert (got.method, got.path) == ("POST", "/api/v2/alerts")
    assert got.headers["content-type"] == "application/json"
    [alert] = got.json()
    assert alert["labels"] == {
        "alertname": "FeaturestoreFeatureDrift",
        "monitor": "fraud",
        "rule": "feature_drift",
        "target": "card_transaction_features:amount_mean_1h",
        "severity": "warning",
        "dedup_key": note["dedup_key"],
    }
    assert alert["annotations"]["summary"] == note["summary"]
    assert alert["annotations"]["report_url"] == note["report_url"]
    assert alert["annotations"]["alert_url"] == note["alert_url"]
    description = alert["annotations"]["description"]
    assert "alert 42 of monitor fraud" in description and '"statistic":0.31' in description
    assert set(alert) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert datetime.fromisoformat(alert["startsAt"]) == datetime(2025, 3, 1, 11, 30, tzinfo=UTC)
    assert datetime.fromisoformat(alert["endsAt"]) == ends
    assert alert["generatorURL"] == note["alert_url"]


def test_alertmanager_names_and_optional_report(client: Sender, receiver: Receiver) -> None:
    got = deliver(client, receiver, "alertmanager",
                  notification(rule="drift_share", target="dataset", report_url=None))
    [alert] = got.json()
    assert alert["labels"]["alertname"] == "FeaturestoreDriftShare"
    assert "report_url" not in alert["annotations"]  # annotation values must be strings


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize(("event", "verb"), [("trigger", "Triggered"),
                                             ("acknowledge", "Acknowledged"),
                                             ("resolve", "Resolved")])
def test_slack_message_field_by_field(
    client: Sender, receiver: Receiver, event: str, verb: str
) -> None:
    note = notification(event, target="view:<b>&co", summary="x < y & z > w")
    got = deliver(client, receiver, "slack", note)
    assert (got.method, got.path) == ("POST", SLACK_TOKEN_PATH)
    assert got.headers["content-type"] == "application/json"
    body = got.json()
    assert body["text"] == f"{verb} [warning] fraud / view:&lt;b&gt;&amp;co: x &lt; y &amp; z &gt; w"
    header, summary, fields, context = body["blocks"]
    assert header == {"type": "header",
                      "text": {"type": "plain_text", "text": f"{verb}: fraud / view:<b>&co"}}
    assert summary == {"type": "section",
                       "text": {"type": "mrkdwn", "text": "x &lt; y &amp; z &gt; w"}}
    assert fields["type"] == "section"
    assert [f["text"] for f in fields["fields"]] == [
        "*Severity*\nwarning", f"*Status*\n{STATUS[event]}", "*Monitor*\nfraud",
        "*Target*\nview:&lt;b&gt;&amp;co",
    ]
    assert all(f["type"] == "mrkdwn" for f in fields["fields"])
    assert context == {"type": "context", "elements": [{"type": "mrkdwn", "text": (
        "<http://fs.example:8000/v1/drift-runs/7/report|Drift report> | "
        "<http://fs.example:8000/v1/alerts/42|Alert 42>"
    )}]}


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize("event", ["trigger", "acknowledge", "resolve"])
def test_webhook_signed_field_by_field(
    client: Sender, receiver: Receiver, event: str
) -> None:
    note = notification(event)
    sent_at = 1_740_830_400
    got = deliver(client, receiver, "webhook", note, sent_at=sent_at)
    assert (got.method, got.path) == ("POST", "/hooks/fs")
    assert got.json() == note
    headers = got.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-featurestore-event"] == event
    assert headers["x-featurestore-timestamp"] == str(sent_at)
    assert headers["idempotency-key"] == f"featurestore-alert-42-{event}"
    expected = hmac.new(HMAC_KEY.encode(), f"{sent_at}.".encode() + got.body, hashlib.sha256)
    assert headers["x-featurestore-signature"] == "sha256=" + expected.hexdigest()
    assert verify_signature(HMAC_KEY, headers["x-featurestore-timestamp"], got.body,
                            headers["x-featurestore-signature"], now=sent_at + 10)
    assert HMAC_KEY not in got.body.decode()


def test_verify_signature_refuses_what_it_must() -> None:
    body = b'{"event":"trigger"}'
    stamp = "1700000000"
    good = "sha256=" + hmac.new(b"k", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    now = 1_700_000_000
    assert verify_signature("k", stamp, body, good, now=now + 299)
    assert verify_signature(b"k", stamp, body, good, now=now - 299)
    assert not verify_signature("other", stamp, body, good, now=now)
    assert not verify_signature("k", stamp, body + b" ", good, now=now)
    assert not verify_signature("k", "1700000001", body, good, now=now)
    assert not verify_signature("k", stamp, body, good, now=now + 301)
    assert not verify_signature("k", stamp, body, good, 60, now=now + 61)
    assert not verify_signature("k", "soon", body, good, now=now)
    assert not verify_signature("k", stamp, body, good.replace("sha256=", "sha1="), now=now)
    assert not verify_signature("k", stamp, body, "sha256=ü", now=now)


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after"),
    [
        (Reply(500, "boom"), True, None),
        (Reply(503, "later", {"Retry-After": "7"}), True, 7.0),
        (Reply(429, "slow down", {"Retry-After": "2.5"}), True, 2.5),
        (Reply(408, ""), True, None),
        (Reply(400, "bad event"), False, None),
        (Reply(404, "no such integration"), False, None),
        (Reply(301, "moved"), True, None),  # no Location: its owner has to fix it
        (Reply(204, ""), None, None),  # any 2xx: PagerDuty took it
    ],
)
def test_answers_are_classified(
    client: Sender, receiver: Receiver, reply: Reply, retryable: bool | None,
    retry_after: float | None,
) -> None:
    receiver.reply(reply)
    request = build_request("pd", configs(receiver.url)["pagerduty"], notification())
    if retryable is None:
        client.send(request)
        return
    with pytest.raises(DeliveryError) as caught:
        client.send(request)
    assert caught.value.retryable is retryable
    assert caught.value.retry_after == retry_after
    assert caught.value.message == f"notifier pd: HTTP {reply.status}: {reply.body}"


@pytest.mark.usefixtures("secrets")
def test_a_client_error_quotes_300_characters_of_the_answer(
    client: Sender, receiver: Receiver
) -> None:
    receiver.reply(Reply(400, "e" * 300 + "TAIL"))
    with pytest.raises(DeliveryError) as caught:
        client.send(build_request("pd", configs(receiver.url)["pagerduty"], notification()))
    assert caught.value.message == "notifier pd: HTTP 400: " + "e" * 300


@pytest.mark.usefixtures("secrets")
def test_slack_must_answer_ok(client: Sender, receiver: Receiver) -> None:
    receiver.reply(Reply(200, "ok"), Reply(200, "invalid_token"))
    request = build_request("chat", configs(receiver.url)["slack"], notification())
    client.send(request)
    with pytest.raises(DeliveryError) as caught:
        client.send(request)
    assert not caught.value.retryable
    assert "invalid_token" in caught.value.message


@pytest.mark.usefixtures("secrets")
def test_unreachable_and_slow_notifiers_are_retryable(receiver: Receiver) -> None:
    config = configs(receiver.url)["webhook"]
    receiver.reply(Reply(200, "late", delay=1.0))
    with pytest.raises(DeliveryError) as slow:
        Sender(0.2).send(build_request("hook", config, notification()))
    assert slow.value.retryable
    assert slow.value.message == "notifier hook: no complete answer within 0.2 s"
    receiver.stop()
    with pytest.raises(DeliveryError) as down:
        Sender().send(build_request("hook", config, notification()))
    assert down.value.retryable
    assert down.value.message.startswith("notifier hook: cannot reach it (ConnectError")


@pytest.mark.parametrize(("kind", "variable"), [("pagerduty", "PD_KEY"),
                                                ("slack", "SLACK_URL"),
                                                ("webhook", "HOOK_KEY")])
def test_a_missing_secret_waits_and_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, kind: str, variable: str
) -> None:
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(DeliveryError) as caught:
        build_request(kind, configs("http://127.0.0.1:9")[kind], notification())
    assert caught.value.retryable
    assert caught.value.message == (
        f"notifier {kind}: the environment variable {variable} is not set; set it and restart "
        "the monitor worker"
    )


@pytest.mark.usefixtures("secrets")
def test_secrets_stay_out_of_errors_and_reprs(client: Sender, receiver: Receiver) -> None:
    # Notifiers that echo what they got (the body, the URL) in their error answers.
    slack_url = receiver.url + SLACK_TOKEN_PATH
    receiver.reply(Reply(400, f"bad routing_key {ROUTING_KEY}"),
                   Reply(404, f"no hook at {slack_url} ({SLACK_TOKEN_PATH})"),
                   Reply(500, f"key {HMAC_KEY} rejected"))
    messages = []
    for kind in ("pagerduty", "slack", "webhook"):
        request = build_request(kind, configs(receiver.url)[kind], notification())
        for secret in (ROUTING_KEY, slack_url, SLACK_TOKEN_PATH, HMAC_KEY):
            assert secret not in repr(request)
        with pytest.raises(DeliveryError) as caught:
            client.send(request)
        messages.append(caught.value.message)
        assert str(caught.value) == caught.value.message
    assert messages == [
        "notifier pagerduty: HTTP 400: bad routing_key <secret>",
        "notifier slack: HTTP 404: no hook at <secret> (<secret>)",
        "notifier webhook: HTTP 500: key <secret> rejected",
    ]


def test_retry_after_header_forms() -> None:
    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True),
                               now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True),
                               now) == 0.0
    assert retry_after_seconds("-3") == 0.0
    for useless in (None, "", "soon", "inf", "nan"):
        assert retry_after_seconds(useless, now) is None



def test_a_slack_variable_without_a_url_waits_and_stays_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_URL", "http://hooks:token-123/")
    with pytest.raises(DeliveryError) as caught:
        build_request("chat", configs("http://127.0.0.1:9")["slack"], notification())
    assert caught.value.retryable
    assert caught.value.message == (
        "notifier chat: the environment variable SLACK_URL does not hold a URL; fix it and "
        "restart the monitor worker"
    )


@pytest.mark.usefixtures("secrets")
def test_webhook_signatures_carry_the_clock_by_default(
    client: Sender, receiver: Receiver
) -> None:
    got = deliver(client, receiver, "webhook", notification())
    assert verify_signature(HMAC_KEY, got.headers["x-featurestore-timestamp"], got.body,
                            got.headers["x-featurestore-signature"])


def _storm(alerts: int) -> dict:
    """The page of one window that opened `alerts` feature-drift alerts."""
    from monitors.alerts import page_notification

    opened = [{
        "alert_id": 100 + i, "dedup_key": f"fraud/feature_drift/v:feature_{i:02d}",
        "monitor": "fraud", "rule": "feature_drift", "target": f"v:feature_{i:02d}",
        "severity": "critical" if i == 7 else "warning", "status": "triggered",
        "summary": f"[fraud] v:feature_{i:02d} drifted in window (psi 0.4, threshold 0.1)",
        "details": {"statistic": 0.4}, "triggered_at": "2025-03-01T11:30:00+00:00",
        "last_run_id": 7,
    } for i in range(alerts)]
    return page_notification(opened, "fraud/page/100", "trigger",
                             datetime(2025, 3, 1, 12, tzinfo=UTC), "http://fs.example:8000")


@pytest.mark.usefixtures("secrets")
def test_a_grouped_page_within_each_receivers_limits(client: Sender, receiver: Receiver) -> None:
    note = _storm(60)
    pd = deliver(client, receiver, "pagerduty", note).json()
    assert pd["dedup_key"] == "fraud/page/100" and pd["payload"]["severity"] == "critical"
    assert len(pd["payload"]["summary"]) == 1024 and pd["payload"]["class"] == "feature_drift"
    assert pd["payload"]["custom_details"]["drifted_features"] == [
        f"v:feature_{i:02d}" for i in range(60)]
    slack = deliver(client, receiver, "slack", note).json()
    header, section = slack["blocks"][0]["text"]["text"], slack["blocks"][1]["text"]["text"]
    assert len(header) <= 150 and len(section) <= 3000
    assert section.startswith("[fraud] 60 alerts: v:feature_00 drifted")
    am = deliver(client, receiver, "alertmanager", note).json()
    assert [a["labels"]["target"] for a in am] == [f"v:feature_{i:02d}" for i in range(60)]
    assert am[7]["labels"]["severity"] == "critical"
    assert am[7]["annotations"]["alert_url"] == "http://fs.example:8000/v1/alerts/107"


@pytest.mark.usefixtures("secrets")
def test_a_row_queued_before_pages_goes_to_alertmanager_as_its_alert(
    client: Sender, receiver: Receiver
) -> None:
    note = notification()
    del note["alerts"]
    (alert,) = deliver(client, receiver, "alertmanager", note).json()
    assert alert["labels"]["dedup_key"] == note["dedup_key"]
