"""The monitors file (`monitors.yaml`, next to `feature_repo/`): what is watched, how, and who is told.

Monitors reference features by their definition names (`view:feature`) and a feature service or
feature view of the registry; `load_monitors` checks the file's shape, then every name against
the registry, and raises `MonitorConfigError` naming the field (`monitors.fraud.window.rows`).
Secrets (PagerDuty routing keys, Slack webhook URLs, webhook signing keys) are never written in
the file: it names the environment variables that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from featurestore.errors import FeatureStoreError
from monitors.stattests import METHODS

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


Rule = Annotated[
    FeatureDriftRule | DriftShareRule | MultivariateRule | FreshnessRule | NullRateRule,
    Field(discriminator="kind"),
]


class PagerDutyNotifier(_Strict):
    type: Literal["pagerduty"]
    routing_key_env: str  # the environment variable holding the integration's routing key
    url: str = "https://events.pagerduty.com/v2/enqueue"


class AlertmanagerNotifier(_Strict):
    type: Literal["alertmanager"]
    url: str  # Alertmanager's base URL; alerts go to `{url}/api/v2/alerts`


class SlackNotifier(_Strict):
    type: Literal["slack"]
    webhook_url_env: str  # the environment variable holding the incoming-webhook URL


class WebhookNotifier(_Strict):
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
    notify: list[str] = Field(default_factory=list)  # notifier names
    report: bool = True  # write Evidently's report (HTML + JSON) for each window
    # Rows of each side Evidently's report is drawn on (its own check takes ~75 µs per row and
    # feature on 2 cores: the verdicts come from every row, the report is their picture).
    report_max_rows: int = Field(10_000, ge=100)

    @model_validator(mode="after")
    def _one_subject(self) -> MonitorConfig:
        if (self.feature_service is None) == (self.feature_view is None):
            raise ValueError("set exactly one of feature_service or feature_view")
        if self.score and self.feature_service is None:
            raise ValueError("score: only a feature_service monitor sees the model's scores")
        if any(r.kind == "multivariate" for r in self.rules) and self.drift.multivariate is None:
            raise ValueError("rules: a multivariate rule needs drift.multivariate")
        return self

    @property
    def subject(self) -> str:
        """The capture stream and baseline family this monitor reads: `service:NAME` or `view:NAME`."""
        if self.feature_service is not None:
            return f"service:{self.feature_service}"
        return f"view:{self.feature_view}"


class MonitorsFile(_Strict):
    interval_seconds: float = Field(30.0, gt=0)  # how often `monitors run` reads the capture log
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
    "feature_drift", "drift_share", "multivariate", "freshness", "null_rate",
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


def load_monitors(path: Path, store=None) -> MonitorsFile:
    """Read and check the monitors file; with `store`, its names against the registry too."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise MonitorConfigError(
            f"no monitors file at {path}; write one (see README, Drift monitoring) or set "
            "FEATURESTORE_MONITORS_CONFIG"
        ) from None
    config = parse_monitors(text, str(path))
    if store is not None:
        check_names(config, store, str(path))
    return config
