"""What each notifier is sent, and how its answer is read.

`build_request` turns one notification (the outbox's JSON, no secrets) into the HTTP request a
notifier expects; the secrets (PagerDuty routing key, Slack webhook URL, webhook signing key) are
read from the environment here and only here, and travel in the returned `HttpRequest` only,
whose repr hides them. `send` posts it within a wall-clock deadline and raises `DeliveryError`
saying whether a retry can help.

Which events each kind takes (`accepts`): PagerDuty, Slack and the generic webhook get one
`trigger` per alert, then `acknowledge` and `resolve`; Alertmanager has no acknowledgement but
forgets an alert that is not re-sent before its `endsAt`, so it gets every `refire` instead.

Verifying the generic webhook (receivers): each request carries
`X-Featurestore-Timestamp: <unix seconds>` and
`X-Featurestore-Signature: sha256=<hex HMAC-SHA256 of b"<timestamp>." + raw body>`, keyed with
the secret in the notifier's `secret_env` variable. Check it before parsing the body::

    from monitors.notifiers import verify_signature

    ok = verify_signature(secret, headers["X-Featurestore-Timestamp"], raw_body,
                          headers["X-Featurestore-Signature"])

A timestamp more than five minutes away from the receiver's clock is refused (replays).
`Idempotency-Key` (and `Webhook-Id`, its Standard Webhooks name) is the same for every retry of
one event of one page: a receiver that has seen it may answer 2xx and do nothing.

A notification is a page: the alerts one window opened together (`alerts` lists them; the first
leads with its id, links and run). `send` follows 307/308 redirects on the same origin and bounds
each request's whole time; other redirects are retryable errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from featurestore.errors import FeatureStoreError
from featurestore.timestamps import assume_utc
from monitors.config import (
    AlertmanagerNotifier,
    PagerDutyNotifier,
    SlackNotifier,
    WebhookNotifier,
)

NotifierConfig = PagerDutyNotifier | AlertmanagerNotifier | SlackNotifier | WebhookNotifier

_ONE_PER_ALERT = frozenset({"trigger", "acknowledge", "resolve"})
# Alertmanager drops an alert not re-sent before endsAt; a refire comes each firing window, so
# a day leaves room for long windows and a worker restart without the alert flapping.
ALERTMANAGER_HOLD = timedelta(hours=24)
PAGERDUTY_SUMMARY_CHARS = 1024  # PagerDuty truncates longer summaries itself, we do it visibly
PAGERDUTY_DEDUP_CHARS = 255  # PagerDuty's limit; our keys (monitor/rule/target) can be longer
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_REDIRECTS = 5
_ERROR_BODY_CHARS = 300


class DeliveryError(FeatureStoreError):
    """A notifier did not take a notification. `retryable`: sending it again later may work;
    `retry_after`: the notifier asked to wait that many seconds. The message never holds a
    secret."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.retryable, self.retry_after = message, retryable, retry_after


@dataclass(frozen=True)
class HttpRequest:
    """One POST to a notifier. URL and body may hold secrets, so the repr shows neither."""

    url: str = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    notifier: str
    expect_body: str | None = None  # the answer that confirms delivery (Slack's `ok`)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # scrubbed from error messages


def accepts(config: NotifierConfig, event: str) -> bool:
    """Whether a notifier of this kind is sent this event (pure: no secrets needed)."""
    return event in NOTIFIER_TYPES[config.type].events


def build_request(
    name: str, config: NotifierConfig, notification: dict, *, sent_at: float | None = None
) -> HttpRequest | None:
    """The request telling notifier `name` about `notification`; None when it does not take the
    event. `sent_at` (unix seconds, default now) stamps the webhook signature. Raises
    `DeliveryError` (retryable) when the environment lacks the notifier's secret."""
    if not accepts(config, notification["event"]):
        return None
    build = NOTIFIER_TYPES[config.type].build
    return build(name, config, notification, time.time() if sent_at is None else sent_at)


def _secret(name: str, variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        # Retryable: the message waits in the outbox until an operator sets the variable and
        # restarts the worker, instead of the page being dropped.
        raise DeliveryError(
            f"notifier {name}: the environment variable {variable} is not set; set it and "
            "restart the monitor worker",
            retryable=True,
        )
    return value


def _json(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


_JSON_HEADERS = {"Content-Type": "application/json"}


def pagerduty_dedup_key(key: str) -> str:
    """`key` within PagerDuty's limit: long keys keep a readable head and a hash of the whole,
    so two long keys with the same head stay two incidents."""
    if len(key) <= PAGERDUTY_DEDUP_CHARS:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: PAGERDUTY_DEDUP_CHARS - len(digest) - 1]}~{digest}"


def _pagerduty(name: str, config: PagerDutyNotifier, note: dict) -> HttpRequest:
    routing_key = _secret(name, config.routing_key_env)
    event = {
        "routing_key": routing_key,
        "event_action": note["event"],
        "dedup_key": pagerduty_dedup_key(note["dedup_key"]),
    }
    if note["event"] == "trigger":  # PagerDuty reads payload, links and client on triggers only
        links = [{"href": note["report_url"], "text": "Drift report"}] if note["report_url"] else []
        links.append({"href": note["alert_url"], "text": f"Alert {note['alert_id']} in featurestore"})
        event.update({
            "payload": {
                "summary": note["summary"][:PAGERDUTY_SUMMARY_CHARS],
                "source": note["source"],
                "severity": note["severity"],
                "timestamp": note["at"],
                # PagerDuty's "component of the source responsible": the drifted feature or view.
                "component": note["target"],
                "group": note["monitor"],
                "class": note["rule"],
                "custom_details": {
                    **note["details"],
                    "target": note["target"],
                    "run_id": note["run_id"],
                    "alert_id": note["alert_id"],
                },
            },
            "links": links,
            "client": "featurestore",
            "client_url": note["alert_url"],
        })
    return HttpRequest(
        config.url, dict(_JSON_HEADERS), _json(event), name, secrets=(routing_key,)
    )


def alertmanager_alertname(rule: str) -> str:
    """`feature_drift` -> `FeaturestoreFeatureDrift`: one alert name per rule kind."""
    return "Featurestore" + "".join(part.capitalize() for part in rule.split("_"))


def _alertmanager(name: str, config: AlertmanagerNotifier, note: dict) -> HttpRequest:
    # Alertmanager groups alerts itself: a page goes as its alerts, each under its own labels.
    at = datetime.fromisoformat(note["at"])
    ends = at if note["event"] == "resolve" else at + ALERTMANAGER_HOLD
    alerts = []
    for alert in note.get("alerts", [note]):  # a row queued before pages is its one alert
        annotations = {
            "summary": alert["summary"],
            "description": (
                f"{alert['status']} alert {alert['alert_id']} of monitor {note['monitor']} "
                f"(rule {alert['rule']}, target {alert['target']}); details: "
                f"{_json(alert['details']).decode()}"
            ),
            "alert_url": note["alert_url"].rsplit("/", 1)[0] + f"/{alert['alert_id']}",
        }
        if note["report_url"]:
            annotations["report_url"] = note["report_url"]
        alerts.append({
            # Labels identify the alert in Alertmanager, so they hold nothing that changes while
            # it is open (the summary, with its statistics, is an annotation).
            "labels": {
                "alertname": alertmanager_alertname(alert["rule"]),
                "monitor": note["monitor"],
                "rule": alert["rule"],
                "target": alert["target"],
                "severity": alert["severity"],
                "dedup_key": alert["dedup_key"],
            },
            "annotations": annotations,
            "startsAt": alert["triggered_at"],
            "endsAt": ends.isoformat(),
            "generatorURL": annotations["alert_url"],
        })
    url = config.url.rstrip("/") + "/api/v2/alerts"
    return HttpRequest(url, dict(_JSON_HEADERS), _json(alerts), name)


_SLACK_VERBS = {"trigger": "Triggered", "acknowledge": "Acknowledged", "resolve": "Resolved"}
_SLACK_SECTION_CHARS = 3000  # Slack's limit for a section's text
_SLACK_HEADER_CHARS = 150  # and for a header's


class _HideSecretUrls(logging.Filter):
    """httpx logs every request's URL at INFO, and a Slack webhook's URL is its credential."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.urls and isinstance(record.args, tuple):
            record.args = tuple(
                "<secret URL>" if str(arg) in self.urls else arg for arg in record.args
            )
        return True


_SECRET_URLS = _HideSecretUrls()
logging.getLogger("httpx").addFilter(_SECRET_URLS)


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters; a feature name must not turn into a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack(name: str, config: SlackNotifier, note: dict) -> HttpRequest:
    url = _secret(name, config.webhook_url_env)
    try:
        _SECRET_URLS.urls.add(str(httpx.URL(url)))
    except httpx.InvalidURL:
        raise DeliveryError(
            f"notifier {name}: the environment variable {config.webhook_url_env} does not hold "
            "a URL; fix it and restart the monitor worker",
            retryable=True,
        ) from None
    verb = _SLACK_VERBS[note["event"]]
    links = [f"<{note['report_url']}|Drift report>"] if note["report_url"] else []
    links.append(f"<{note['alert_url']}|Alert {note['alert_id']}>")
    fields = {"Severity": note["severity"], "Status": note["status"], "Monitor": note["monitor"],
              "Target": note["target"]}
    message = {
        # The fallback: notifications and clients that show no blocks.
        "text": _slack_escape(
            f"{verb} [{note['severity']}] {note['monitor']} / {note['target']}: {note['summary']}"
        ),
        "blocks": [
            {"type": "header", "text": {
                "type": "plain_text",
                "text": f"{verb}: {note['monitor']} / {note['target']}"[:_SLACK_HEADER_CHARS],
            }},
            {"type": "section", "text": {
                "type": "mrkdwn",
                "text": _slack_escape(note["summary"])[:_SLACK_SECTION_CHARS],
            }},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{label}*\n{_slack_escape(value)}"}
                for label, value in fields.items()
            ]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " | ".join(links)}]},
        ],
    }
    # The URL is the credential: scrub it, and its path (the token part) on its own too.
    path = urlsplit(url).path
    secrets = (url, path) if len(path) > 1 else (url,)
    return HttpRequest(
        url, dict(_JSON_HEADERS), _json(message), name, expect_body="ok", secrets=secrets
    )


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, b"<timestamp>." + body)."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_seconds: float = SIGNATURE_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> bool:
    """Whether a webhook request is ours and recent: the signature matches the timestamp and the
    raw body, and the timestamp lies within `tolerance_seconds` of `now` (default: the clock)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def _webhook_id(note: dict) -> str:
    return f"featurestore-alert-{note['alert_id']}-{note['event']}"


def _webhook(name: str, config: WebhookNotifier, note: dict, sent_at: float) -> HttpRequest:
    secret = _secret(name, config.secret_env)
    body = _json(note)
    timestamp = str(int(sent_at))
    headers = {
        **_JSON_HEADERS,
        "X-Featurestore-Event": note["event"],
        "X-Featurestore-Timestamp": timestamp,
        "X-Featurestore-Signature": sign(secret, timestamp, body),
        # One per page and event, stable across retries: a re-triggered key is a new page and
        # must not be dropped as a duplicate, which dedup_key + event would do. Webhook-Id is
        # the same under the Standard Webhooks name.
        "Idempotency-Key": _webhook_id(note),
        "Webhook-Id": _webhook_id(note),
    }
    return HttpRequest(config.url, headers, body, name, secrets=(secret,))


# The request for notifier `name` (its config) about a notification, sent at unix seconds.
Build = Callable[[str, Any, dict, float], HttpRequest]


def _unsigned(build: Callable[[str, Any, dict], HttpRequest]) -> Build:
    """A request builder that puts no send time in the request."""
    return lambda name, config, note, _sent_at: build(name, config, note)


@dataclass(frozen=True)
class NotifierType:
    events: frozenset[str]  # the events it is sent
    build: Build


# The notifier types by `type` (each one a model of `monitors.config.Notifier`).
NOTIFIER_TYPES: dict[str, NotifierType] = {
    "pagerduty": NotifierType(_ONE_PER_ALERT, _unsigned(_pagerduty)),
    "alertmanager": NotifierType(frozenset({"trigger", "refire", "resolve"}),
                                 _unsigned(_alertmanager)),
    "slack": NotifierType(_ONE_PER_ALERT, _unsigned(_slack)),
    "webhook": NotifierType(_ONE_PER_ALERT, _webhook),
}


def _scrub(text: str, request: HttpRequest) -> str:
    for secret in request.secrets:
        text = text.replace(secret, "<secret>")
    return text


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """An HTTP Retry-After header (seconds or an HTTP date) as seconds from `now`."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        when = assume_utc(when)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retryable_status(status: int) -> bool:
    # Rate limited, timed out at the server, the server's own fault, or a redirect we do not
    # follow (fixed by its owner, not by us): the same request may pass later. Any other 4xx
    # says the request itself is wrong.
    return status in (408, 429) or status >= 500 or 300 <= status < 400


async def _post(client: httpx.AsyncClient, request: HttpRequest) -> httpx.Response:
    """POST `request`, following 307/308 redirects on the same origin (they keep the method and
    the body; another origin must not see a body that may hold the notifier's key)."""
    who = f"notifier {request.notifier}"
    url = httpx.URL(request.url)
    for _ in range(MAX_REDIRECTS + 1):
        response = await client.post(url, content=request.body, headers=request.headers)
        location = response.headers.get("Location")
        if not response.is_redirect or location is None:
            return response  # classified by the caller
        target = url.join(location)
        if response.status_code not in (307, 308):
            raise DeliveryError(
                f"{who}: HTTP {response.status_code} redirect not followed (only 307 and 308 "
                "keep a POST's body); fix its URL: retrying until then", retryable=True,
            )
        if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
            raise DeliveryError(
                f"{who}: HTTP {response.status_code} redirect to another origin not followed "
                "(the body may hold its key); fix its URL: retrying until then", retryable=True,
            )
        url = target
    raise DeliveryError(f"{who}: more than {MAX_REDIRECTS} redirects", retryable=True)


async def send(client: httpx.AsyncClient, request: HttpRequest, deadline_seconds: float) -> None:
    """POST `request` and read the whole answer within `deadline_seconds` of wall-clock time
    (httpx's timeouts bound each read, so a receiver dripping a byte at a time would hold a
    request for ever); returns when the notifier took it, else raises `DeliveryError`."""
    who = f"notifier {request.notifier}"
    try:
        async with asyncio.timeout(deadline_seconds):
            response = await _post(client, request)
    except (TimeoutError, httpx.TimeoutException):
        raise DeliveryError(
            f"{who}: no complete answer within {deadline_seconds:g} s", retryable=True
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = _scrub(f"{type(exc).__name__}: {exc}", request)
        raise DeliveryError(f"{who}: cannot reach it ({reason})", retryable=True) from None
    text = response.text[:_ERROR_BODY_CHARS]
    if response.is_success:
        if request.expect_body is None or response.text.strip() == request.expect_body:
            return
        raise DeliveryError(
            _scrub(f"{who}: HTTP {response.status_code} without {request.expect_body!r}: {text}",
                   request),
            retryable=False,
        )
    if _retryable_status(response.status_code):
        raise DeliveryError(
            _scrub(f"{who}: HTTP {response.status_code}: {text}", request),
            retryable=True,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    raise DeliveryError(
        _scrub(f"{who}: HTTP {response.status_code}: {text}", request), retryable=False
    )
