"""The Python client of the featurestore API: what serving and training code imports.

    from featurestore.client import FeatureClient

    with FeatureClient("http://features:8000", api_key=...) as client:   # or FEATURESTORE_API_KEY
        rows = client.online_features({"card_id": [1, 2]}, feature_service="fraud_detection_v1")
        rows.to_df()

`AsyncFeatureClient` has the same methods as coroutines. Both keep a pool of HTTP connections,
and retry a 503 (online store down; the server's Retry-After is honoured, capped) and failed
connections with exponential backoff; any other error raises `ApiError` with the server's code
and message at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Self, TypeVar

import httpx
import pandas as pd

API_KEY_ENV = "FEATURESTORE_API_KEY"
_RETRIABLE = (httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError)


class ApiError(Exception):
    """An error answer of the API (or no answer after every retry)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class OnlineFeatures:
    """A lookup's answer: per feature (join keys first) values, statuses and event times."""

    feature_names: list[str]
    columns: list[dict]

    @classmethod
    def from_response(cls, body: dict) -> OnlineFeatures:
        return cls(body["metadata"]["feature_names"], body["results"])

    def to_dict(self) -> dict[str, list]:
        return {n: c["values"] for n, c in zip(self.feature_names, self.columns)}

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_dict())

    def statuses(self) -> dict[str, list[str]]:
        return {n: c["statuses"] for n, c in zip(self.feature_names, self.columns)}

    def event_timestamps(self) -> dict[str, list[str | None]]:
        return {n: c["event_timestamps"] for n, c in zip(self.feature_names, self.columns)}


def _lookup_body(
    entities: dict[str, list],
    feature_service: str | None,
    features: list[str] | None,
    full_feature_names: bool,
) -> dict:
    body: dict = {"entities": entities, "full_feature_names": full_feature_names}
    if feature_service is not None:
        body["feature_service"] = feature_service
    if features is not None:
        body["features"] = features
    return body


def _error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:500])


class _Retry:
    """Exponential backoff with jitter; a server's Retry-After counts, capped by max_wait."""

    def __init__(self, retries: int, backoff: float, max_wait: float) -> None:
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait

    def after_error(self, attempt: int, error: Exception, url: str) -> float:
        """How long to wait before the next attempt after a failed connection; raises ApiError
        when no attempt is left."""
        if attempt == self.retries:
            raise ApiError(0, "unreachable", f"{url}: {error}") from error
        return self._delay(attempt, None)

    def after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """None when `response` is the answer; else how long to wait before the next attempt.
        Raises ApiError for an error answer, or a 503 when no attempt is left."""
        if response.status_code == 503 and attempt < self.retries:
            return self._delay(attempt, response)
        if response.status_code >= 400:
            raise _error(response)
        return None

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        wait = self.backoff * 2**attempt * (0.5 + random.random())
        if response is not None:
            try:
                wait = max(wait, float(response.headers.get("retry-after", 0)))
            except ValueError:
                pass
        return min(wait, self.max_wait)


_Http = TypeVar("_Http", httpx.Client, httpx.AsyncClient)


class _Base(Generic[_Http]):
    """What both clients share: the URL, the retry policy and one pooled HTTP client, blocking
    (`httpx.Client`) or asyncio (`httpx.AsyncClient`) as the subclass names."""

    _http_type: type[_Http]
    _http: _Http

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff_seconds: float = 0.05,
        max_wait_seconds: float = 2.0,
        max_connections: int = 32,
    ) -> None:
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._retry = _Retry(retries, backoff_seconds, max_wait_seconds)
        self._http = self._http_type(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
        )

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.url!r})"


class FeatureClient(_Base[httpx.Client]):
    """Blocking client, safe to share between threads."""

    _http_type = httpx.Client

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self._retry.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except _RETRIABLE as exc:
                wait = self._retry.after_error(attempt, exc, self.url)
            else:
                retry_wait = self._retry.after_response(attempt, response)
                if retry_wait is None:
                    return response
                wait = retry_wait
            time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def online_features(
        self,
        entities: dict[str, list],
        *,
        feature_service: str | None = None,
        features: list[str] | None = None,
        full_feature_names: bool = False,
    ) -> OnlineFeatures:
        body = _lookup_body(entities, feature_service, features, full_feature_names)
        return OnlineFeatures.from_response(
            self._call("POST", "/v1/online-features", json=body).json()
        )

    def score(self, entities: dict[str, list]) -> list[float]:
        return self._call("POST", "/v1/score", json={"entities": entities}).json()["scores"]

    def ready(self) -> bool:
        """Whether the server answers and its Redis and registry do (`/readyz`); never raises."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def create_dataset(
        self,
        entities: dict[str, list],
        *,
        feature_service: str | None = None,
        features: list[str] | None = None,
    ) -> dict:
        body = {"entities": entities, "feature_service": feature_service, "features": features}
        return self._call("POST", "/v1/datasets", json=body).json()

    def dataset(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/datasets/{job_id}").json()

    def download_dataset(self, job_id: str, path: str | Path, *, timeout: float = 600) -> Path:
        """Waits for the job to finish, then writes its Parquet file to `path`."""
        deadline = time.monotonic() + timeout
        while (job := self.dataset(job_id))["status"] == "running":
            if time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"dataset job {job_id} still running")
            time.sleep(0.2)
        if job["status"] == "failed":
            raise ApiError(0, "dataset_failed", job["error"])
        Path(path).write_bytes(self._call("GET", job["download"]).content)
        return Path(path)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeatureClient(_Base[httpx.AsyncClient]):
    """asyncio client for async serving code (one per event loop)."""

    _http_type = httpx.AsyncClient

    async def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self._retry.retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except _RETRIABLE as exc:
                wait = self._retry.after_error(attempt, exc, self.url)
            else:
                retry_wait = self._retry.after_response(attempt, response)
                if retry_wait is None:
                    return response
                wait = retry_wait
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def online_features(
        self,
        entities: dict[str, list],
        *,
        feature_service: str | None = None,
        features: list[str] | None = None,
        full_feature_names: bool = False,
    ) -> OnlineFeatures:
        body = _lookup_body(entities, feature_service, features, full_feature_names)
        response = await self._call("POST", "/v1/online-features", json=body)
        return OnlineFeatures.from_response(response.json())

    async def score(self, entities: dict[str, list]) -> list[float]:
        response = await self._call("POST", "/v1/score", json={"entities": entities})
        return response.json()["scores"]

    async def ready(self) -> bool:
        """Whether the server answers and its Redis and registry do (`/readyz`); never raises."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
