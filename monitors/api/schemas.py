"""The monitoring API's request model, parameters and documented error responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from featurestore.api.schemas import (
    ErrorBody,
    IsoDatetime,
    StoredText,
    error_responses,
    exactly_one,
)

OPEN: Final = "open"  # not resolved: triggered or acknowledged
AlertStatus = Literal["open", "triggered", "acknowledged", "resolved", "all"]
# Run, alert and silence ids are SQL INTEGER keys: a larger id names nothing, and the database
# would refuse to compare it.
ID_MAX = 2**31 - 1
RowId = Annotated[int, PathParam(ge=1, le=ID_MAX)]
Before = Annotated[int | None, Query(ge=1, le=ID_MAX, description="Ids below this one (paging)")]
MonitorName = Annotated[StoredText | None, Query(description="Only this monitor's")]
Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses`


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


def documented(*parts: Mapping[int, dict[str, Any]] | Responses) -> Responses:
    """A route's `responses`: `parts` merged in order."""
    merged: Responses = {}
    for part in parts:
        for status, response in part.items():
            merged[status] = response
    return merged


AUTH = {401: error("Missing, invalid or revoked API key."), 403: error("The key lacks the scope.")}
UNAVAILABLE = {503: error("Our SQL database is down; retry after Retry-After.")}
INVALID = error_responses(422)  # a parameter or the body does not match the schema
BAD_CONFIG = {409: error("The monitors file is missing or invalid (the message names the field).")}
NO_REPORT = {404: error("No such run, no report, or its file is gone.")}
TRANSITIONS = documented(
    AUTH, {404: error("No such alert."),
           409: error("Already resolved, or the monitors file is missing or invalid.")},
    UNAVAILABLE, INVALID,
)


class SilenceRequest(BaseModel):
    """No page for `monitor`'s alerts on `target` (every target when null) for `minutes` from
    `starts_at` (default now), or until `ends_at`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        **exactly_one(("minutes", {"type": "number"}), ("ends_at", {"type": "string"})),
        "examples": [{
            "monitor": "fraud_scoring", "target": "card_transaction_features:card_txn_count_1h",
            "minutes": 60, "comment": "backfill of the card stream until 15:00",
        }],
    })

    monitor: StoredText
    # A feature's definition name, a feature view (freshness), `score`, `dataset` (drift
    # share) or `joint` (multivariate): an alert's `target`.
    target: StoredText | None = None
    # Longer: disable the monitor.
    minutes: float | None = Field(None, gt=0, le=366 * 24 * 60, strict=True)
    starts_at: IsoDatetime | None = None
    ends_at: IsoDatetime | None = None
    comment: StoredText = Field("", max_length=1000)

    @model_validator(mode="after")
    def _one_end(self) -> SilenceRequest:
        if (self.minutes is None) == (self.ends_at is None):
            raise ValueError("set exactly one of minutes or ends_at")
        return self
