"""The monitors file (`monitors.yaml`, next to `feature_repo/`): what is watched, how, and who is told.

Monitors reference features by their definition names (`view:feature`) and a feature service or
feature view of the registry; `load_monitors` checks the file's shape, then every name against
the registry, and raises `MonitorConfigError` naming the field (`monitors.fraud.window.rows`).
Secrets (PagerDuty routing keys, Slack webhook URLs, webhook signing keys) are never written in
the file: it names the environment variables that hold them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from featurestore.errors import FeatureStoreError
from monitors.stattests import METHODS
from monitors.store import ALERTS, OUTBOX, RUN_FEATURES, RUNS, unfit

log = logging.getLogger("monitors.config")

Severity = Literal["critical", "error", "warning", "info"]  # PagerDuty's severities
SCORE_COLUMN = "score"  # the model's fraud score, captured by `POST /v1/score`


class MonitorConfigError(FeatureStoreError):
    """The monitors file cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowConfig(_Strict):
    """A window closes after `rows` captured rows, or at each `minutes` boundary of capture time.
    A time window with fewer than `min_rows` rows is recorded but not tested."""

    rows: int | None = Field(None, gt=0)
    minutes: float | None = Field(None, gt=0)
    min_rows: int = Field(100, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> WindowConfig:
        if (self.rows is None) == (self.minutes is None):
            raise ValueError("set exactly one of rows (count windows) or minutes (time windows)")
        return self


class MultivariateConfig(_Strict):
    """MMD permutation test on the joint, standardized feature vector (torch)."""

    permutations: int = Field(200, ge=20)
    max_rows: int = Field(2_000, ge=100)  # rows drawn from each side
    p_value: float = Field(0.01, gt=0, lt=1)  # drifted below this


class DriftConfig(_Strict):
    # Per feature (definition name, or `score`): a `monitors.stattests.METHODS` name and/or a
    # threshold; the rest take Evidently's defaults by type and size.
    methods: dict[str, str] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    drift_share: float = Field(0.5, gt=0, le=1)
    multivariate: MultivariateConfig | None = None

    @model_validator(mode="after")
    def _known_methods(self) -> DriftConfig:
        for feature, method in self.methods.items():
            if method not in METHODS:
                raise ValueError(
                    f"methods.{feature}: unknown method {method!r}; one of {sorted(METHODS)}"
                )
        return self


class FeatureDriftRule(_Strict):
    """A feature (or the score) drifted in `consecutive` windows in a row."""

    kind: Literal["feature_drift"]
    consecutive: int = Field(1, ge=1)
    severity: Severity = "warning"


class DriftShareRule(_Strict):
    """The share of drifted features reached `at_least`."""

    kind: Literal["drift_share"]
    at_least: float = Field(gt=0, le=1)
    severity: Severity = "critical"


class MultivariateRule(_Strict):
    """The joint feature vector drifted (needs `drift.multivariate`)."""

    kind: Literal["multivariate"]
    severity: Severity = "warning"


class FreshnessRule(_Strict):
    """The newest event of `feature_view` seen in a window is older than `max_age_minutes` when
    the window closes (or the window has no row of the view at all)."""

    kind: Literal["freshness"]
    feature_view: str
    max_age_minutes: float = Field(gt=0)
    severity: Severity = "critical"


class NullRateRule(_Strict):
    """A feature's null rate rose by at least `jump` (absolute, 0..1) over its baseline's."""

    kind: Literal["null_rate"]
    jump: float = Field(gt=0, le=1)
    severity: Severity = "warning"


class MonitorHealthRule(_Strict):
    """The monitor itself cannot run (its baseline version is gone, its sample file deleted, a
    check fails) `after_failures` passes in a row. On for every monitor unless a rule of this
    kind says `enabled: false`; the alert resolves at the first pass that works again."""

    kind: Literal["monitor_health"]
    after_failures: int = Field(3, ge=1)
    severity: Severity = "error"
    enabled: bool = True


Rule = Annotated[
    FeatureDriftRule | DriftShareRule | MultivariateRule | FreshnessRule | NullRateRule
    | MonitorHealthRule,
    Field(discriminator="kind"),
]


class _Delivery(_Strict):
    # Per notifier: requests started per second at most (the receiver's rate limit), and how
    # many may be in flight at once.
    max_per_second: float = Field(10.0, gt=0)
    concurrency: int = Field(2, ge=1, le=32)


class PagerDutyNotifier(_Delivery):
    type: Literal["pagerduty"]
    routing_key_env: str  # the environment variable holding the integration's routing key
    url: str = "https://events.pagerduty.com/v2/enqueue"
    max_per_second: float = Field(2.0, gt=0)  # Events API v2: 120 events a minute per key


class AlertmanagerNotifier(_Delivery):
    type: Literal["alertmanager"]
    url: str  # Alertmanager's base URL; alerts go to `{url}/api/v2/alerts`


class SlackNotifier(_Delivery):
    type: Literal["slack"]
    webhook_url_env: str  # the environment variable holding the incoming-webhook URL
    max_per_second: float = Field(1.0, gt=0)  # Slack: about one message a second per webhook
    concurrency: int = Field(1, ge=1, le=32)  # and in order


class WebhookNotifier(_Delivery):
    type: Literal["webhook"]
    url: str
    secret_env: str  # the environment variable holding the HMAC-SHA256 signing key


Notifier = Annotated[
    PagerDutyNotifier | AlertmanagerNotifier | SlackNotifier | WebhookNotifier,
    Field(discriminator="type"),
]


class MonitorConfig(_Strict):
    """One monitor: the rows served for `feature_service` (captured by the API) or written for
    `feature_view` (captured by the stream worker), window by window, against a baseline."""

    feature_service: str | None = None
    feature_view: str | None = None
    # Definition names (`view:feature`); empty = every feature of the service or view.
    features: list[str] = Field(default_factory=list)
    score: bool = False  # also check the model's score (feature-service monitors only)
    baseline: int | Literal["latest"] = "latest"  # a baseline version of the service or view
    window: WindowConfig
    drift: DriftConfig = DriftConfig()
    rules: list[Rule] = Field(min_length=1)
    auto_resolve_after: int = Field(3, ge=1)  # clean windows before an alert resolves itself
    # Flap damping: an alert stays open for at least this many judged windows.
    min_open_windows: int = Field(3, ge=1)
    notify: list[str] = Field(default_factory=list)  # notifier names
    report: bool = True  # write Evidently's report (HTML + JSON) for each window
    # Rows of each side Evidently's report is drawn on (its own check takes ~75 µs per row and
    # feature on 2 cores: the verdicts come from every row, the report is their picture).
    report_max_rows: int = Field(10_000, ge=100)

    @model_validator(mode="before")
    @classmethod
    def _health_rule_by_default(cls, data: object) -> object:
        rules = data.get("rules") if isinstance(data, dict) else None
        kinds = [r.get("kind") if isinstance(r, dict) else getattr(r, "kind", None)
                 for r in rules] if isinstance(rules, list) else []
        if kinds and "monitor_health" not in kinds:
            data = {**data, "rules": [*rules, {"kind": "monitor_health"}]}
        return data

    @property
    def health(self) -> MonitorHealthRule | None:
        """The monitor_health rule in force, None when it is turned off."""
        rule = next(r for r in self.rules if r.kind == "monitor_health")
        return rule if rule.enabled else None

    @model_validator(mode="after")
    def _one_subject(self) -> MonitorConfig:
        if (self.feature_service is None) == (self.feature_view is None):
            raise ValueError("set exactly one of feature_service or feature_view")
        if self.score and self.feature_service is None:
            raise ValueError("score: only a feature_service monitor sees the model's scores")
        if any(r.kind == "multivariate" for r in self.rules) and self.drift.multivariate is None:
            raise ValueError("rules: a multivariate rule needs drift.multivariate")
        if sum(r.kind == "monitor_health" for r in self.rules) > 1:
            raise ValueError("rules: at most one monitor_health rule")
        return self

    @property
    def subject(self) -> str:
        """The capture stream and baseline family this monitor reads: `service:NAME` or `view:NAME`."""
        if self.feature_service is not None:
            return f"service:{self.feature_service}"
        return f"view:{self.feature_view}"


class MonitorsFile(_Strict):
    interval_seconds: float = Field(30.0, gt=0)  # how often `monitors run` reads the capture log
    # The most one notification request may take, answer included (then it is retried).
    delivery_deadline_seconds: float = Field(10.0, gt=0, le=300)
    notifiers: dict[str, Notifier] = Field(default_factory=dict)
    monitors: dict[str, MonitorConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_notifiers(self) -> MonitorsFile:
        for name, monitor in self.monitors.items():
            for notifier in monitor.notify:
                if notifier not in self.notifiers:
                    raise ValueError(
                        f"monitors.{name}.notify: unknown notifier {notifier!r}; "
                        f"declared: {sorted(self.notifiers)}"
                    )
        return self

    @model_validator(mode="after")
    def _fits_the_tables(self) -> MonitorsFile:
        # Refused here, once, rather than by every window's insert.
        for name in self.notifiers:
            _fits(f"notifiers.{name}", name, OUTBOX.c.notifier)
        for name, monitor in self.monitors.items():
            _fits(f"monitors.{name}", name, RUNS.c.monitor)
            for feature in monitor.features:
                _fits(f"monitors.{name}.features", feature, RUN_FEATURES.c.feature)
            for option in ("methods", "thresholds"):
                for feature in getattr(monitor.drift, option):
                    _fits(f"monitors.{name}.drift.{option}", feature, RUN_FEATURES.c.feature)
            for rule in monitor.rules:
                if rule.kind == "freshness":
                    _fits(f"monitors.{name}.rules", rule.feature_view, ALERTS.c.target)
        return self


def _fits(where: str, value: str, column) -> None:
    problem = unfit(value, column)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def _field(location: tuple) -> str:
    return ".".join(str(part) for part in location if not str(part).startswith("function-"))


def parse_monitors(text: str, source: str = "monitors.yaml") -> MonitorsFile:
    """The file's shape checked (not the names against the registry)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MonitorConfigError(f"{source}: not valid YAML: {exc}") from None
    try:
        return MonitorsFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            # Discriminated unions add the chosen tag to the location; keep the user's path.
            where = _field(tuple(p for p in error["loc"] if p not in _TAGS))
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise MonitorConfigError(f"{source}: " + "; ".join(problems)) from None


_TAGS = {
    "feature_drift", "drift_share", "multivariate", "freshness", "null_rate", "monitor_health",
    "pagerduty", "alertmanager", "slack", "webhook",
}


def check_names(config: MonitorsFile, store, source: str = "monitors.yaml") -> None:
    """Every service, view and feature the file names exists in the registry (`store`: Feast's
    FeatureStore)."""
    services = {s.name: s for s in store.list_feature_services()}
    views = {v.name: v for v in store.list_feature_views()}
    views.update({v.name: v for v in store.list_stream_feature_views()})
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    for name, monitor in config.monitors.items():
        where = f"{source}: monitors.{name}"
        if monitor.feature_service is not None:
            service = services.get(monitor.feature_service)
            if service is None:
                raise MonitorConfigError(
                    f"{where}.feature_service: unknown feature service "
                    f"{monitor.feature_service!r}; known: {sorted(services)}"
                )
            known = {
                f"{p.name}:{f.name}"
                for p in service.feature_view_projections for f in p.features
            }
        else:
            view = views.get(monitor.feature_view)
            if view is None:
                raise MonitorConfigError(
                    f"{where}.feature_view: unknown feature view {monitor.feature_view!r}; "
                    f"known: {sorted(views)}"
                )
            known = {f"{view.name}:{f.name}" for f in view.features}
        for feature in monitor.features:
            if feature not in known:
                raise MonitorConfigError(
                    f"{where}.features: {feature!r} is not a feature of {monitor.subject}; "
                    f"its features: {sorted(known)}"
                )
        checked = set(monitor.features or known) | ({SCORE_COLUMN} if monitor.score else set())
        for option in ("methods", "thresholds"):
            for feature in getattr(monitor.drift, option):
                if feature not in checked:
                    raise MonitorConfigError(
                        f"{where}.drift.{option}: {feature!r} is not checked by this monitor; "
                        f"checked: {sorted(checked)}"
                    )
        for rule in monitor.rules:
            if rule.kind == "freshness" and rule.feature_view not in views | odfvs:
                raise MonitorConfigError(
                    f"{where}.rules: freshness feature_view {rule.feature_view!r} is unknown; "
                    f"known: {sorted(views)}"
                )


def check_secrets(config: MonitorsFile, source: str = "monitors.yaml") -> None:
    """Every environment variable a notifier takes its secret from is set (the monitor worker
    checks this at start; the API, which sends nothing, does not need them)."""
    for name, notifier in config.notifiers.items():
        for option in ("routing_key_env", "webhook_url_env", "secret_env"):
            variable = getattr(notifier, option, None)
            if variable is not None and not os.environ.get(variable):
                raise MonitorConfigError(
                    f"{source}: notifiers.{name}.{option}: the environment variable "
                    f"{variable} is not set"
                )


def _missing(path: Path) -> str:
    return (f"no monitors file at {path}; write one (see docs/monitoring.md) or set "
            "FEATURESTORE_MONITORS_CONFIG")


def load_monitors(path: Path, store=None) -> MonitorsFile:
    """Read and check the monitors file; with `store`, its names against the registry too."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise MonitorConfigError(_missing(path)) from None
    config = parse_monitors(text, str(path))
    if store is not None:
        check_names(config, store, str(path))
    return config


CONFIG_VALID = Gauge(
    "featurestore_monitors_config_valid",
    "1 while the monitors file on disk is the version in use; 0 while it holds an edit that "
    "does not validate (the last valid version stays in use).",
)
CONFIG_LOADS = Counter(
    "featurestore_monitors_config_loads",
    "Readings of a changed monitors file, by outcome (loaded, invalid).",
    ["outcome"],
)


class MonitorsConfigSource:
    """The one version of the monitors file in use: read again whenever its content changed,
    checked, and swapped in only when valid. An invalid edit keeps the last valid version in use,
    is logged (ERROR, once per edit), counted, shown by `featurestore_monitors_config_valid` = 0
    and held in `error` until the file is fixed. `check` adds checks (the registry's names)."""

    def __init__(self, path: Path, check: Callable[[MonitorsFile], None] | None = None) -> None:
        self.path = Path(path)
        self._check = check
        self._lock = threading.Lock()
        self._config: MonitorsFile | None = None
        self._digest: str | None = None
        self.error: str | None = None

    def current(self) -> MonitorsFile:
        """The version in use; raises `MonitorConfigError` when no valid version was ever read."""
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            content = None
        digest = hashlib.sha256(content).hexdigest() if content is not None else "missing"
        with self._lock:
            if digest != self._digest:
                self._digest = digest
                self._load(content)
            if self._config is None:
                raise MonitorConfigError(self.error)
            return self._config

    def _load(self, content: bytes | None) -> None:
        try:
            if content is None:
                raise MonitorConfigError(_missing(self.path))
            config = parse_monitors(content.decode(errors="replace"), str(self.path))
            if self._check is not None:
                self._check(config)
        except MonitorConfigError as exc:
            self.error = str(exc)
            CONFIG_LOADS.labels("invalid").inc()
            CONFIG_VALID.set(0)
            if self._config is not None:
                log.error("the monitors file changed but is not valid; the last valid version "
                          "stays in use until it is fixed: %s", exc)
            return
        if self._config is not None:
            log.info("monitors file %s reloaded: %d monitors, %d notifiers", self.path,
                     len(config.monitors), len(config.notifiers))
        self._config, self.error = config, None
        CONFIG_LOADS.labels("loaded").inc()
        CONFIG_VALID.set(1)


_SOURCES: dict[Path, MonitorsConfigSource] = {}
_SOURCES_LOCK = threading.Lock()


def config_source(path: Path) -> MonitorsConfigSource:
    """This process's source of the monitors file at `path` (shape checks only: the API's)."""
    key = Path(path).absolute()
    with _SOURCES_LOCK:
        return _SOURCES.setdefault(key, MonitorsConfigSource(key))
