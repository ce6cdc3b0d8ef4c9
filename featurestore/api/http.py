"""HTTP plumbing shared by the routes: JSON responses, error bodies, bearer-key scopes, metrics.

Every error is `{"error": {"code", "message"}}` with a status that says whose fault it is: 4xx
naming the bad input, 503 + Retry-After when a dependency is down (never a hang: each wait is
bounded), 500 only for our own bugs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match

from featurestore.apikeys import ApiKey, KeyStoreUnavailable
from featurestore.errors import (
    EntityKeyError,
    FeatureStoreError,
    InputDataError,
    TooManyEntitiesError,
    TooManyFeaturesError,
    UnknownNameError,
)
from featurestore.online.redis_pool import RedisUnavailable

log = logging.getLogger("featurestore.api")

REQUESTS = Counter(
    "featurestore_api_requests", "API requests by route and status code", ["route", "code"]
)
LATENCY = Histogram(
    "featurestore_api_request_seconds",
    "API request latency by route",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
)
ERRORS = Counter("featurestore_api_errors", "API error responses by code", ["route", "code"])
STALE_KEYS = Counter(
    "featurestore_api_stale_key_checks",
    "Requests admitted by the last good read of the API key table while it cannot be read",
)


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(error: ApiError) -> Response:
    return json_response(
        {"error": {"code": error.code, "message": error.message}}, error.status, error.headers
    )


_INPUT_ERRORS: tuple[tuple[type[FeatureStoreError], int, str], ...] = (
    (UnknownNameError, 404, "unknown_name"),
    (TooManyEntitiesError, 413, "too_many_entities"),
    (TooManyFeaturesError, 413, "too_many_features"),
    (EntityKeyError, 400, "bad_entities"),
    (InputDataError, 400, "bad_input"),
    (FeatureStoreError, 400, "bad_request"),
)


def error_responders(retry_after_seconds: int) -> dict[type[Exception], Callable[[Any], Response]]:
    """The answer to each kind of error a route raises (bar routing's, and our own bugs'): the
    app's exception handlers, and the raw lookup route, which leaves FastAPI's, answer with these."""

    def input_error(exc: FeatureStoreError) -> Response:
        status, code = next((s, c) for kind, s, c in _INPUT_ERRORS if isinstance(exc, kind))
        return error_response(ApiError(status, code, str(exc)))

    def redis_down(exc: RedisUnavailable) -> Response:
        log.warning("online store unavailable: %s", exc)
        return error_response(ApiError(
            503, "online_store_unavailable", f"the online store is unavailable: {exc.reason}",
            {"Retry-After": str(retry_after_seconds)},
        ))

    def database_down(exc: Exception) -> Response:
        # The driver's message names the database's host, port and name: logged, not sent. (Only
        # the driver's: SQLAlchemy's own adds the statement's parameters.)
        log.warning("SQL database unavailable: %s", getattr(exc, "orig", None) or type(exc).__name__)
        return error_response(ApiError(
            503, "database_unavailable",
            f"the SQL database is unavailable ({type(exc).__name__}); retry later",
            {"Retry-After": str(retry_after_seconds)},
        ))

    def malformed(exc: RequestValidationError) -> Response:
        return json_response(malformed_body(exc.errors()), 422)

    return {
        ApiError: error_response,
        FeatureStoreError: input_error,
        RedisUnavailable: redis_down,
        OperationalError: database_down,
        InterfaceError: database_down,
        PoolTimeout: database_down,
        RequestValidationError: malformed,
    }


def responder_for(
    responders: Mapping[type[Exception], Callable[[Any], Response]], exc: Exception
) -> Callable[[Any], Response] | None:
    """The responder of the nearest class of `exc` that has one, as Starlette picks a handler."""
    for kind in type(exc).__mro__:
        if kind in responders:
            return responders[kind]
    return None


def _handler(respond: Callable[[Any], Response]):
    async def handle(request: Request, exc: Exception) -> Response:
        return respond(exc)

    return handle


def install_error_handlers(app, retry_after_seconds: int) -> None:
    for kind, respond in error_responders(retry_after_seconds).items():
        app.add_exception_handler(kind, _handler(respond))

    @app.exception_handler(HTTPException)
    async def _framework(request: Request, exc: HTTPException) -> Response:
        # Routing (unknown path, a method the path lacks) and FastAPI's body parsing (not UTF-8,
        # nested too deeply) raise these: the same error shape as ours.
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request.app, request.scope))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            return error_response(ApiError(
                405, "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}; allowed: {allow}",
                {"Allow": allow},
            ))
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        else:
            message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return error_response(ApiError(exc.status_code, code, message, exc.headers))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        # Our own bug (the traceback is logged by the server): still the documented shape.
        return error_response(ApiError(
            500, "internal_error", "internal server error (the server log has the details)"
        ))


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(app, scope) -> list[str]:
    """Every method some route serves on the path of `scope`, and OPTIONS, which we answer.
    (Starlette's own 405 names only the methods of the first route on the path.)"""
    served = [
        method for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL
               for route in app.router.routes)
    ]
    return sorted([*served, "OPTIONS"])


# A 422 lists this many problems, then counts the rest; each location part (a key of the body
# is one) is cut this short: it names what is wrong without echoing the input back.
_LISTED_PROBLEMS = 20
_LOCATION_CHARS = 80


def _printable(part: object, limit: int | None = None) -> str | int:
    """A location part or message as JSON can carry it: lone surrogates escaped, cut to
    `limit` characters."""
    if isinstance(part, int):
        return part
    return str(part)[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def malformed_body(errors: Sequence[Mapping[str, Any]]) -> dict:
    """The 422 body: each problem's location, type and message, never the input that caused it
    (it may be huge, or hold what JSON cannot encode: ints over 64 bits, lone surrogates)."""
    details = [
        {"type": e["type"], "loc": [_printable(p, _LOCATION_CHARS) for p in e["loc"]],
         "msg": _printable(e["msg"])}
        for e in errors[:_LISTED_PROBLEMS]
    ]
    problems = "; ".join(
        f"{'.'.join(str(p) for p in d['loc']) or 'body'}: {d['msg']}" for d in details
    )
    if len(errors) > _LISTED_PROBLEMS:
        problems += f"; and {len(errors) - _LISTED_PROBLEMS} more"
    return {"error": {"code": "malformed_request", "message": problems, "details": details}}


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_KEY = "featurestore.api_key"  # where RequestGuard leaves the caller's key in the ASGI scope


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(serving, authorization: str | None) -> ApiKey:
    """The live key of an `Authorization` header (api_auth: keys), else a 401, or a 503 while
    the key table cannot be read and its last good copy cannot decide."""
    token = _bearer(authorization)
    if token is None:
        raise ApiError(401, "unauthenticated",
                       "missing API key: send 'Authorization: Bearer <key>'", _CHALLENGE)
    try:
        key, stale = await serving.verifier.verify(token)
    except KeyStoreUnavailable as exc:
        raise ApiError(
            503, "key_store_unavailable", f"API keys cannot be checked now: {exc}",
            {"Retry-After": str(serving.settings.serve_retry_after_seconds)},
        ) from None
    if key is None:
        raise ApiError(401, "unauthenticated", "invalid or revoked API key", _CHALLENGE)
    if stale:
        STALE_KEYS.inc()
    return key


async def allowed_key(serving, scope: MutableMapping[str, Any], required: str) -> ApiKey | None:
    """The caller's key if it holds the scope `required` (or `admin`), else a 401/403/503 error;
    None with api_auth: off. `scope` is the request's ASGI scope."""
    if serving.verifier is None:  # api_auth: off
        return None
    key = scope.get(_KEY)
    if key is None:  # an app without RequestGuard
        key = await authenticate(serving, Headers(scope=scope).get("authorization"))
    if not key.allows(required):
        raise ApiError(403, "forbidden",
                       f"API key {key.key_id!r} lacks the scope {required!r} "
                       f"(it has {sorted(key.scopes)})")
    return key


def scope_checker(scope: str) -> Callable[[Request], Awaitable[ApiKey | None]]:
    """A dependency that admits requests whose bearer key holds `scope` (or `admin`)."""

    async def check(request: Request) -> ApiKey | None:
        return await allowed_key(request.app.state.serving, request.scope, scope)

    return check


class RequestGuard:
    """What every request passes before the app parses anything: its API key is checked (but
    on `open_paths`), then its body is read, at most `max_body_bytes` of it (413 beyond, told by
    Content-Length first, else by counting what arrives). So a caller without a key costs no
    body read, and no body is held or parsed past the limit. (Pure ASGI: microseconds.)"""

    def __init__(self, app, *, open_paths: frozenset[str], max_body_bytes: int) -> None:
        self.app = app
        self.open_paths = open_paths
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            serving = scope["app"].state.serving
            if serving.verifier is not None and scope["path"] not in self.open_paths:
                scope[_KEY] = await authenticate(serving, headers.get("authorization"))
            body = await self._body(headers, receive)
        except ApiError as error:
            if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
                # The unread rest of the body is not worth receiving: close after the answer.
                error.headers = {**(error.headers or {}), "Connection": "close"}
            await error_response(error)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, headers: Headers, receive) -> bytes | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(413, "body_too_large",
                        f"the request body is over {self.max_body_bytes:,} bytes "
                        "(serve_max_body_bytes)")


def _replay(body: bytes, receive):
    """`receive` for the app: the body already read, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed


class MetricsMiddleware:
    """Latency, requests and errors per route template (pure ASGI: adds microseconds)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            name = route.path if route is not None else "unmatched"
            code = str(status[0])
            LATENCY.labels(name).observe(time.perf_counter() - started)
            REQUESTS.labels(name, code).inc()
            if status[0] >= 400:
                ERRORS.labels(name, code).inc()
